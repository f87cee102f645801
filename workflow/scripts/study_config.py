"""The config of one run of a study of studies (studies.smk)."""

import sys

from datamove.config import write_config

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    cfg = sm.params.cfg  # the kind's run config, computed by the rule (its params decide when a run reruns)
    write_config(cfg, sm.output.cfg)
    print(f"{sm.output.cfg}: run {sm.wildcards.run} (study {cfg['study']}), model {cfg['trainer']['model']}, "
          f"engine {cfg['stream']['engine']}, {cfg['ensemble']['n_members']} members, seed {cfg['ensemble']['seed']}",
          file=sys.stderr)
