# Studies of studies (datamove.studies; docs/models.md, docs/sampling.md, docs/reservoir.md,
# docs/rollouts.md): each kind a sweep of complete studies of this workflow over named axes, each
# run in a nested snakemake, compared in one table and one figure. Not part of the default target:
#
#     snakemake --cores 2 compare_models --configfile config/models.yaml      # online against offline, per model
#     snakemake --cores 2 diversity --configfile config/diversity.yaml        # error against distinct members
#     snakemake --cores 2 compare_sampling --configfile config/sampling.yaml  # halton against adaptive
#     snakemake --cores 2 compare_policies                                    # the reservoir policies
#     snakemake --cores 2 compare_rollouts --configfile config/rollouts.yaml  # one-step against rollout training
#
# The same three rules for every kind, made from its declaration (datamove.studies.KINDS):
# write_<rule>_config writes a run's config (its only input: a run added to a study, or done again,
# redoes no other), run_<rule>_study runs it (NESTED_RUN, common.smk: the run limit, a complete
# ledger, retries) holding the resource study_runs, of which there is one (runs do not share the
# cores; --resources study_runs=N allows N at once), and the kind's target makes its table from the
# runs (workflow/scripts/study_table.py). The study is checked when its table is wanted.

import re

from datamove.studies import KINDS
from datamove.studies.sweep import Plan

# Only in the top-level workflow: not inside the arms of a comparison study, and not in a kind whose
# runs' configs reset it (a run is one study; its nested workflow plans none of its kind).
STUDY_PLANS = {}
if not config.get("arm"):
    for _kind in KINDS.values():
        _plan = Plan(_kind, config, root=study_path(_kind.name),
                     data_root=str(STUDY.data_dir / STUDY.study / _kind.name))
        if _plan.runs:
            STUDY_PLANS[_kind.name] = _plan


for _name, _plan in STUDY_PLANS.items():
    _kind = _plan.kind
    _runs = "|".join(re.escape(name) for name in _plan.names())

    rule:
        name: f"write_{_kind.rule}_config"
        localrule: True
        output:
            cfg=f"{_plan.run_dir}/{{run}}.yaml",
        wildcard_constraints:
            run=_runs,
        params:
            cfg=_plan.run_config,
        conda:
            "../envs/datamove.yaml"
        log:
            f"{_plan.root}/logs/write_{_kind.rule}_config/{{run}}.log",
        script:
            "../scripts/study_config.py"

    rule:
        name: f"run_{_kind.rule}_study"
        input:
            cfg=f"{_plan.run_dir}/{{run}}.yaml",
        output:
            **{role: f"{_plan.run_dir}/{{run}}/{path}" for role, path in _kind.run_outputs.items()},
        wildcard_constraints:
            run=_runs,
        conda:
            "../envs/datamove.yaml"
        log:
            f"{_plan.root}/logs/run_{_kind.rule}_study/{{run}}.log",
        threads: 2  # what the outer snakemake reserves; the nested one runs on run_cores (the schema)
        resources:
            study_runs=1,  # one run at a time; its only input is its config (common.smk)
        retries: 2
        params:
            folder=_plan.folder,
            limit=_plan.study["run_limit_s"],
            cores=_plan.study["run_cores"],
            targets=_plan.targets,
            ledger=_plan.ledger,
        shell:
            NESTED_RUN

    rule:
        name: _kind.target
        localrule: True
        input:
            _plan.table_inputs,
        output:
            **{role: report(path, caption=f"../report/{_kind.caption}", category=_kind.name.capitalize())
               if role == "figure" else path for role, path in _plan.table_files().items()},
        params:
            kind=_kind.name,
            runs=_plan.table_runs(),
            options={"resamples": _plan.study["bootstrap"]} if "bootstrap" in _plan.study else {},
        conda:
            "../envs/datamove.yaml"
        log:
            f"{_plan.root}/logs/{_kind.target}/{_kind.target}.log",
        script:
            "../scripts/study_table.py"
