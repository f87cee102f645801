"""The config of one run of the models study (models.smk)."""

import sys

from datamove.config import write_config
from datamove.evaluation.models import run_config

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    problem, model, seed = sm.params.runs[sm.wildcards.run]
    cfg = run_config(sm.params.config, root=sm.params.root, data_root=sm.params.data, problem=problem,
                     model=model, seed=seed)
    write_config(cfg, sm.output.cfg)
    print(f"{sm.output.cfg}: problem {problem}, model {model}, seed {seed}", file=sys.stderr)
