# The models study (docs/models.md): online against offline for every (problem, model) of
# model_study and every seed, each run a complete comparison study of this config (both arms, the
# same budget, the same test members) in a nested snakemake of this workflow; compared in one table
# and one figure. Not part of the default target:
#
#     snakemake --cores 2 compare_models --configfile config/models.yaml
#
# The runs go one at a time, so that they do not share the cores: each holds the resource
# study_runs (common.smk), of which there is one (--resources study_runs=N allows N at once).

# Aliased where a rule's function calls it later: the rule files share one namespace.
from datamove.evaluation.models import check_models, run_name, run_targets, runs_of
from datamove.evaluation.models import run_config as model_run_config

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
    MODELS_BY_NAME = {run_name(*run): dict(zip(("problem", "model", "seed"), run)) for run in MODELS_RUNS}
    MODELS_FIGURES = config["model_study"]["run_figures"]


    localrules:
        write_model_config,
        compare_models,


    rule write_model_config:
        # This config with the run's problem, model and seeds, both arms, and its folders
        # (datamove.evaluation.models.run_config).
        output:
            cfg=f"{MODELS_RUN_DIR}/{{run}}.yaml",
        wildcard_constraints:
            run="|".join(MODELS_NAMES),
        params:
            # The run's own config, not the study's: a run is rerun when its config changes, not when
            # another run is added to the study or model_study.only selects others.
            cfg=lambda wildcards: model_run_config(
                config, root=MODELS_RUN_DIR, data_root=MODELS_DATA, **MODELS_BY_NAME[wildcards.run]
            ),
        conda:
            "../envs/datamove.yaml"
        log:
            f"{MODELS_ROOT}/logs/write_model_config/{{run}}.log",
        script:
            "../scripts/models_config.py"


    rule run_model_study:
        # A nested run (NESTED_RUN, common.smk); its online arm's ledger must be complete.
        input:
            cfg=f"{MODELS_RUN_DIR}/{{run}}.yaml",
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
        threads: 2  # what the outer snakemake reserves; the nested one runs on run_cores (the schema)
        resources:
            study_runs=1,  # one run at a time; its only input is its config (common.smk)
        retries: 2
        params:
            folder=lambda wildcards: f"{MODELS_RUN_DIR}/{wildcards.run}",
            limit=config["model_study"]["run_limit_s"],
            cores=config["model_study"]["run_cores"],
            targets=lambda wildcards, input, output: run_targets(
                input.cfg, output, output.online_ledger, figures=MODELS_FIGURES
            ),
            ledger=lambda wildcards, output: output.online_ledger,
        shell:
            NESTED_RUN


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
