"""The config of one run of the data-diversity study (diversity.smk)."""

import sys

from datamove.config import write_config
from datamove.evaluation.diversity import run_config

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    model, arm, members, seed = sm.params.runs[sm.wildcards.run]
    cfg = run_config(sm.params.config, root=sm.params.root, data_root=sm.params.data, model=model, arm=arm,
                     members=members, seed=seed)
    write_config(cfg, sm.output.cfg)
    print(f"{sm.output.cfg}: model {model}, {arm} with {members} members, seed {seed}", file=sys.stderr)
