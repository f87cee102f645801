"""The config of one run of the sampling study (sampling.smk)."""

import sys

from datamove.config import write_config
from datamove.evaluation.sampling import run_config

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    sampler, seed = sm.params.runs[sm.wildcards.run]
    cfg = run_config(sm.params.config, root=sm.params.root, data_root=sm.params.data, sampler=sampler, seed=seed)
    write_config(cfg, sm.output.cfg)
    print(f"{sm.output.cfg}: sampler {sampler}, seed {seed}", file=sys.stderr)
