# The policy study (docs/reservoir.md): every reservoir policy under a fast- and a slow-producer
# setting (config/policies-<setting>.yaml), compared in one figure and one table. Not part of the
# default target:
#
#     snakemake --cores 2 compare_policies
#
# Each (setting, policy) run is a complete online study run by this same workflow in a nested
# snakemake, so it takes exactly the production path (trainer first, gate, solvers in waves,
# ledger); only reservoir.policy differs within a setting. The runs go one at a time, each holding
# the resource study_runs (common.smk), of which there is one: their throughputs are compared, so
# they must not share the cores.

from datamove.reservoir.study import policy_names

# Only in the top-level workflow, not inside the arms of a comparison study (evaluate.smk loads this
# Snakefile as a module per arm).
if not config.get("arm"):

    POLICY_ROOT = str(STUDY.results_dir / "policies")
    POLICY_DATA = str(STUDY.data_dir / "policies")
    POLICY_SETTINGS = ["fast", "slow"]
    POLICY_NAMES = policy_names()
    POLICY_RUNS = [(s, p) for s in POLICY_SETTINGS for p in POLICY_NAMES]
    POLICY_RUN_LIMIT_S = 1200  # one run takes 1-8 min on 2 busy cores

    POLICY_WILDCARDS = {"setting": "|".join(POLICY_SETTINGS), "policy": "|".join(POLICY_NAMES)}


    localrules:
        write_policy_config,
        compare_policies,


    rule write_policy_config:
        # The setting's config with reservoir.policy, study and folders set (datamove.reservoir.study).
        input:
            setting="config/policies-{setting}.yaml",
        output:
            cfg=f"{POLICY_ROOT}/{{setting}}/{{policy}}.yaml",
        wildcard_constraints:
            **POLICY_WILDCARDS,
        params:
            data=POLICY_DATA,
        conda:
            "../envs/datamove.yaml"
        log:
            f"{POLICY_ROOT}/logs/write_policy_config/{{setting}}-{{policy}}.log",
        script:
            "../scripts/policy_config.py"


    rule run_policy_study:
        # A nested run (NESTED_RUN, common.smk), on the run's default targets, stopped after
        # POLICY_RUN_LIMIT_S; an incomplete ledger here was an ingest worker killed by a crash of the
        # ADIOS2 SST reader (SIGSEGV, seen under load).
        input:
            cfg=f"{POLICY_ROOT}/{{setting}}/{{policy}}.yaml",
        output:
            metrics=f"{POLICY_ROOT}/{{setting}}/{{policy}}/metrics.csv",
            ledger=f"{POLICY_ROOT}/{{setting}}/{{policy}}/ledger.csv",
        wildcard_constraints:
            **POLICY_WILDCARDS,
        conda:
            "../envs/datamove.yaml"
        log:
            f"{POLICY_ROOT}/logs/run_policy_study/{{setting}}-{{policy}}.log",
        threads: 2
        resources:
            study_runs=1,  # one run at a time; its only input is its config (common.smk)
        retries: 2
        params:
            folder=lambda wildcards: f"{POLICY_ROOT}/{wildcards.setting}/{wildcards.policy}",
            limit=POLICY_RUN_LIMIT_S,
            cores=lambda wildcards, threads: threads,
            targets="",
            ledger=lambda wildcards, output: output.ledger,
        shell:
            NESTED_RUN


    rule compare_policies:
        input:
            metrics=[f"{POLICY_ROOT}/{s}/{p}/metrics.csv" for s, p in POLICY_RUNS],
            ledgers=[f"{POLICY_ROOT}/{s}/{p}/ledger.csv" for s, p in POLICY_RUNS],
        output:
            summary=report(f"{POLICY_ROOT}/summary.csv", caption="../report/policy_summary.rst", category="Policies"),
            figure=report(f"{POLICY_ROOT}/policies.png", caption="../report/policies.rst", category="Policies"),
        params:
            runs=[[s, p, f"{POLICY_ROOT}/{s}/{p}"] for s, p in POLICY_RUNS],
        conda:
            "../envs/datamove.yaml"
        log:
            f"{POLICY_ROOT}/logs/compare_policies/compare_policies.log",
        script:
            "../scripts/compare_policies.py"
