# The data-diversity study (docs/models.md): test error against the number of distinct members,
# with the same batch budget, for every model of diversity_study: offline (BP5) on each count of
# stored members, online (SST) on each count of streamed members, every seed. Each run is a
# complete study of this config with one arm, in a nested snakemake of this workflow; compared in
# one table and one figure. Not part of the default target:
#
#     snakemake --cores 2 diversity --configfile config/diversity.yaml
#
# The runs go one at a time, so that they do not share the cores: each holds the resource
# study_runs (common.smk), of which there is one (--resources study_runs=N allows N at once).

# Aliased where a rule's function calls it later: the rule files share one namespace.
from datamove.evaluation.diversity import TABLE_FILES, check_diversity, run_name, runs_of
from datamove.evaluation.diversity import run_config as diversity_run_config
from datamove.evaluation.models import run_targets

# Only in the top-level workflow, not inside the arms of a comparison study; a run's own config has
# no points, so its nested workflow plans no study.
if not config.get("arm") and runs_of(config):

    try:
        check_diversity(config)  # before any run: valid runs, all tested on the same test members
    except (ValueError, ConfigError) as exc:
        raise WorkflowError(str(exc)) from None
    DIVERSITY_ROOT = study_path("diversity")
    DIVERSITY_RUNS = runs_of(config)
    DIVERSITY_RUN_DIR = f"{DIVERSITY_ROOT}/runs"
    DIVERSITY_DATA = str(STUDY.data_dir / STUDY.study / "diversity")
    DIVERSITY_NAMES = [run_name(*run) for run in DIVERSITY_RUNS]
    DIVERSITY_BY_NAME = {run_name(*run): dict(zip(("model", "arm", "members", "seed"), run)) for run in DIVERSITY_RUNS}


    localrules:
        write_diversity_config,
        diversity,


    rule write_diversity_config:
        # This config with the run's model, arm, members and seeds, and its folders
        # (datamove.evaluation.diversity).
        output:
            cfg=f"{DIVERSITY_RUN_DIR}/{{run}}.yaml",
        wildcard_constraints:
            run="|".join(DIVERSITY_NAMES),
        params:
            # The run's own config, not the study's: a run is rerun when its config changes, not when
            # a point, a model or a seed is added to the study.
            cfg=lambda wildcards: diversity_run_config(
                config, root=DIVERSITY_RUN_DIR, data_root=DIVERSITY_DATA, **DIVERSITY_BY_NAME[wildcards.run]
            ),
        conda:
            "../envs/datamove.yaml"
        log:
            f"{DIVERSITY_ROOT}/logs/write_diversity_config/{{run}}.log",
        script:
            "../scripts/diversity_config.py"


    rule run_diversity_study:
        # A nested run (NESTED_RUN, common.smk) on run_cores; an online run that lost members has
        # not seen its members. Targets: the run's outputs and member markers, no figures.
        input:
            cfg=f"{DIVERSITY_RUN_DIR}/{{run}}.yaml",
        output:
            evaluation=f"{DIVERSITY_RUN_DIR}/{{run}}/evaluation.csv",
            metrics=f"{DIVERSITY_RUN_DIR}/{{run}}/metrics.csv",
            ledger=f"{DIVERSITY_RUN_DIR}/{{run}}/ledger.csv",
        wildcard_constraints:
            run="|".join(DIVERSITY_NAMES),
        conda:
            "../envs/datamove.yaml"
        log:
            f"{DIVERSITY_ROOT}/logs/run_diversity_study/{{run}}.log",
        threads: 2  # what the outer snakemake reserves; the nested one runs on run_cores (the schema)
        resources:
            study_runs=1,  # one run at a time; its only input is its config (common.smk)
        retries: 2
        params:
            folder=lambda wildcards: f"{DIVERSITY_RUN_DIR}/{wildcards.run}",
            limit=config["diversity_study"]["run_limit_s"],
            cores=config["diversity_study"]["run_cores"],
            targets=lambda wildcards, input, output: run_targets(input.cfg, output, output.ledger, figures=False),
            ledger=lambda wildcards, output: output.ledger,
        shell:
            NESTED_RUN


    rule diversity:
        input:
            evaluation=[f"{DIVERSITY_RUN_DIR}/{name}/evaluation.csv" for name in DIVERSITY_NAMES],
        output:
            # The files write_table writes, in this one folder.
            summary=f"{DIVERSITY_ROOT}/{TABLE_FILES['summary']}",
            members=f"{DIVERSITY_ROOT}/{TABLE_FILES['members']}",
            markdown=f"{DIVERSITY_ROOT}/{TABLE_FILES['markdown']}",
            figure=report(f"{DIVERSITY_ROOT}/{TABLE_FILES['figure']}", caption="../report/diversity.rst", category="Diversity"),
        params:
            runs=[[*run, f"{DIVERSITY_RUN_DIR}/{run_name(*run)}"] for run in DIVERSITY_RUNS],
            resamples=config["diversity_study"]["bootstrap"],
        conda:
            "../envs/datamove.yaml"
        log:
            f"{DIVERSITY_ROOT}/logs/diversity/diversity.log",
        script:
            "../scripts/compare_diversity.py"
