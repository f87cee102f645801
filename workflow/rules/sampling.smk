# The sampling study (docs/sampling.md): the study's config run once per (sampler, seed) of
# sampling_study, each a complete online study (trainer, gate, solvers in waves, evaluation on the
# test members) in a nested snakemake of this workflow; compared in one table and one figure. Not
# part of the default target:
#
#     snakemake --cores 2 compare_sampling --configfile config/sampling.yaml
#
# The runs are chained one after another (seed by seed), so that they do not share the cores.

from pathlib import Path

from datamove.evaluation.sampling import chained_inputs, check_samplers, run_name, runs_of

# Only in the top-level workflow, not inside the arms of a comparison study.
if not config.get("arm"):

    try:
        check_samplers(config)  # before any run: their test members must be the same
    except ValueError as exc:
        raise WorkflowError(str(exc)) from None
    SAMPLING_ROOT = study_path("sampling")
    SAMPLING_RUNS = runs_of(config)
    SAMPLING_RUN_DIR = f"{SAMPLING_ROOT}/runs"
    SAMPLING_DATA = str(STUDY.data_dir / STUDY.study / "sampling")
    SAMPLING_NAMES = [run_name(s, k) for s, k in SAMPLING_RUNS]


    # cfg: the run's config; after: the previous run's evaluation (one run at a time).
    SAMPLING_RUN_INPUTS = chained_inputs(SAMPLING_RUN_DIR, SAMPLING_NAMES)


    localrules:
        write_sampling_config,
        compare_sampling,


    rule write_sampling_config:
        # This config with the run's sampler and seeds, and its folders (datamove.evaluation.sampling).
        output:
            cfg=f"{SAMPLING_RUN_DIR}/{{run}}.yaml",
        wildcard_constraints:
            run="|".join(SAMPLING_NAMES),
        params:
            runs={run_name(s, k): [s, k] for s, k in SAMPLING_RUNS},
            root=lambda wildcards, output: str(Path(output.cfg).parent),
            data=SAMPLING_DATA,
            config=config,
        conda:
            "../envs/datamove.yaml"
        log:
            f"{SAMPLING_ROOT}/logs/write_sampling_config/{{run}}.log",
        script:
            "../scripts/sampling_config.py"


    rule run_sampling_study:
        # --nolock: the outer snakemake holds the lock of this working directory. Each attempt
        # starts from an empty folder; a run that lost members is not comparable, so it fails and
        # is retried.
        input:
            unpack(SAMPLING_RUN_INPUTS),
        output:
            evaluation=f"{SAMPLING_RUN_DIR}/{{run}}/evaluation.csv",
            metrics=f"{SAMPLING_RUN_DIR}/{{run}}/metrics.csv",
            ledger=f"{SAMPLING_RUN_DIR}/{{run}}/ledger.csv",
        wildcard_constraints:
            run="|".join(SAMPLING_NAMES),
        conda:
            "../envs/datamove.yaml"
        log:
            f"{SAMPLING_ROOT}/logs/run_sampling_study/{{run}}.log",
        threads: 2
        retries: 2
        params:
            snakemake=f"{shlex.quote(sys.executable)} -m snakemake",
            snakefile=workflow.main_snakefile,
            folder=f"{SAMPLING_RUN_DIR}/{{run}}",
            limit=config["sampling_study"]["run_limit_s"],
            python=shlex.quote(sys.executable),
            check="import sys; from datamove.reservoir.study import require_complete; require_complete(sys.argv[1])",
        shell:
            "rm -rf {params.folder} && timeout --kill-after 30 {params.limit} "
            "{params.snakemake} -s {params.snakefile} --directory . --configfile {input.cfg} "
            "--cores {threads} --nolock > {log} 2>&1 && {params.python} -c {params.check:q} {output.ledger} >> {log} 2>&1"


    rule compare_sampling:
        input:
            evaluation=[f"{SAMPLING_RUN_DIR}/{name}/evaluation.csv" for name in SAMPLING_NAMES],
        output:
            summary=f"{SAMPLING_ROOT}/sampling.csv",
            markdown=f"{SAMPLING_ROOT}/sampling.md",
            figure=report(f"{SAMPLING_ROOT}/sampling.png", caption="../report/sampling.rst", category="Sampling"),
        params:
            runs=[[s, k, f"{SAMPLING_RUN_DIR}/{run_name(s, k)}"] for s, k in SAMPLING_RUNS],
            names=list(STUDY.problem.param_names),
            ranges=[list(r) for r in STUDY.problem.param_ranges],
        conda:
            "../envs/datamove.yaml"
        log:
            f"{SAMPLING_ROOT}/logs/compare_sampling/compare_sampling.log",
        script:
            "../scripts/compare_sampling.py"
