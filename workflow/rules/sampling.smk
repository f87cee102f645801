# The sampling study (docs/sampling.md): the study's config run once per (sampler, seed) of
# sampling_study, each a complete online study (trainer, gate, solvers in waves, evaluation on the
# test members) in a nested snakemake of this workflow; compared in one table and one figure. Not
# part of the default target:
#
#     snakemake --cores 2 compare_sampling --configfile config/sampling.yaml
#
# The runs go one at a time, so that they do not share the cores: each holds the resource
# study_runs (common.smk), of which there is one (--resources study_runs=N allows N at once).

# Aliased where a rule's function calls it later: the rule files share one namespace.
from datamove.evaluation.sampling import run_name, runs_of
from datamove.evaluation.sampling import run_config as sampling_run_config

# Only in the top-level workflow, not inside the arms of a comparison study.
if not config.get("arm"):

    SAMPLING_ROOT = study_path("sampling")
    SAMPLING_RUNS = runs_of(config)
    SAMPLING_RUN_DIR = f"{SAMPLING_ROOT}/runs"
    SAMPLING_DATA = str(STUDY.data_dir / STUDY.study / "sampling")
    SAMPLING_NAMES = [run_name(s, k) for s, k in SAMPLING_RUNS]
    SAMPLING_BY_NAME = {run_name(s, k): {"sampler": s, "seed": k} for s, k in SAMPLING_RUNS}


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
            # The run's own config, not the study's: a run is rerun when its config changes, not when
            # a sampler or a seed is added to the study.
            # The samplers are checked here (run_config), when the study is planned, not when the
            # workflow is parsed: its defaults are there in every workflow, and a study of another
            # kind that sets parameters.adaptive.base must not be refused for a study it never runs.
            cfg=lambda wildcards: sampling_run_config(
                config, root=SAMPLING_RUN_DIR, data_root=SAMPLING_DATA, **SAMPLING_BY_NAME[wildcards.run]
            ),
        conda:
            "../envs/datamove.yaml"
        log:
            f"{SAMPLING_ROOT}/logs/write_sampling_config/{{run}}.log",
        script:
            "../scripts/sampling_config.py"


    rule run_sampling_study:
        # A nested run (NESTED_RUN, common.smk), on the run's default targets.
        input:
            cfg=f"{SAMPLING_RUN_DIR}/{{run}}.yaml",
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
        threads: 2  # what the outer snakemake reserves; the nested one runs on run_cores (the schema)
        resources:
            study_runs=1,  # one run at a time; its only input is its config (common.smk)
        retries: 2
        params:
            folder=lambda wildcards: f"{SAMPLING_RUN_DIR}/{wildcards.run}",
            limit=config["sampling_study"]["run_limit_s"],
            cores=config["sampling_study"]["run_cores"],
            targets="",
            ledger=lambda wildcards, output: output.ledger,
        shell:
            NESTED_RUN


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
