# The models study (docs/models.md): online against offline for every (problem, model) of
# model_study and every seed, each run a complete comparison study of this config (both arms, the
# same budget, the same test members) in a nested snakemake of this workflow; compared in one table
# and one figure. Not part of the default target:
#
#     snakemake --cores 2 compare_models --configfile config/models.yaml
#
# The runs are chained one after another (seed by seed), so that they do not share the cores.

from pathlib import Path


from datamove.evaluation.models import check_models, run_name, run_targets, runs_of
from datamove.evaluation.sampling import chained_inputs

# Only in the top-level workflow, not inside the arms of a comparison study.
if not config.get("arm"):

    try:
        check_models(config)  # before any run: valid runs, the same test members for a problem's models
    except (ValueError, ConfigError) as exc:
        raise WorkflowError(str(exc)) from None
    MODELS_ROOT = study_path("models")
    MODELS_RUNS = runs_of(config)
    MODELS_RUN_DIR = f"{MODELS_ROOT}/runs"
    MODELS_DATA = str(STUDY.data_dir / STUDY.study / "models")
    MODELS_NAMES = [run_name(*run) for run in MODELS_RUNS]
    MODELS_FIGURES = config["model_study"]["run_figures"]


    # cfg: the run's config; after: the previous run's outputs (one run at a time).
    MODELS_RUN_INPUTS = chained_inputs(MODELS_RUN_DIR, MODELS_NAMES, last="offline/evaluation.csv")


    localrules:
        write_model_config,
        compare_models,


    rule write_model_config:
        # This config with the run's problem, model and seeds, both arms, and its folders
        # (datamove.evaluation.models).
        output:
            cfg=f"{MODELS_RUN_DIR}/{{run}}.yaml",
        wildcard_constraints:
            run="|".join(MODELS_NAMES),
        params:
            runs={run_name(*run): list(run) for run in MODELS_RUNS},
            root=lambda wildcards, output: str(Path(output.cfg).parent),
            data=MODELS_DATA,
            config=config,
        conda:
            "../envs/datamove.yaml"
        log:
            f"{MODELS_ROOT}/logs/write_model_config/{{run}}.log",
        script:
            "../scripts/models_config.py"


    rule run_model_study:
        # --nolock: the outer snakemake holds the lock of this working directory. Each attempt
        # starts from an empty folder; a run whose online arm lost members is not comparable, so it
        # fails and is retried.
        input:
            unpack(MODELS_RUN_INPUTS),
        output:
            online_evaluation=f"{MODELS_RUN_DIR}/{{run}}/online/evaluation.csv",
            online_metrics=f"{MODELS_RUN_DIR}/{{run}}/online/metrics.csv",
            online_ledger=f"{MODELS_RUN_DIR}/{{run}}/online/ledger.csv",
            offline_evaluation=f"{MODELS_RUN_DIR}/{{run}}/offline/evaluation.csv",
            offline_metrics=f"{MODELS_RUN_DIR}/{{run}}/offline/metrics.csv",
        wildcard_constraints:
            run="|".join(MODELS_NAMES),
        conda:
            "../envs/datamove.yaml"
        log:
            f"{MODELS_ROOT}/logs/run_model_study/{{run}}.log",
        threads: 2
        retries: 2
        params:
            snakemake=f"{shlex.quote(sys.executable)} -m snakemake",
            snakefile=workflow.main_snakefile,
            folder=f"{MODELS_RUN_DIR}/{{run}}",
            limit=config["model_study"]["run_limit_s"],
            python=shlex.quote(sys.executable),
            check="import sys; from datamove.reservoir.study import require_complete; require_complete(sys.argv[1])",
            targets=lambda wildcards, input, output: run_targets(
                input.cfg, output, output.online_ledger, figures=MODELS_FIGURES
            ),
        shell:
            # The targets after --cores: --configfile takes several values.
            "rm -rf {params.folder} && timeout --kill-after 30 {params.limit} "
            "{params.snakemake} -s {params.snakefile} --directory . --configfile {input.cfg} "
            "--cores {threads} --nolock {params.targets} > {log} 2>&1 "
            "&& {params.python} -c {params.check:q} {output.online_ledger} >> {log} 2>&1"


    rule compare_models:
        input:
            evaluation=[f"{MODELS_RUN_DIR}/{name}/{arm}/evaluation.csv" for name in MODELS_NAMES for arm in ("online", "offline")],
        output:
            summary=f"{MODELS_ROOT}/models.csv",
            markdown=f"{MODELS_ROOT}/models.md",
            figure=report(f"{MODELS_ROOT}/models.png", caption="../report/models.rst", category="Models"),
        params:
            runs=[[*run, f"{MODELS_RUN_DIR}/{run_name(*run)}"] for run in MODELS_RUNS],
            resamples=config["model_study"]["bootstrap"],
        conda:
            "../envs/datamove.yaml"
        log:
            f"{MODELS_ROOT}/logs/compare_models/compare_models.log",
        script:
            "../scripts/compare_models.py"
