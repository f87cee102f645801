"""The config of one run of the policy study: a setting with one reservoir policy (policies.smk)."""

import sys
from pathlib import Path

from datamove.config import write_config
from datamove.reservoir.study import load_setting, sub_study_config

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    cfg = sub_study_config(
        # The output is <root>/<setting>/<policy>.yaml; the run's results go to <root>/<setting>/<policy>/.
        load_setting(sm.input.setting), root=Path(sm.output.cfg).parent.parent, setting=sm.wildcards.setting,
        policy=sm.wildcards.policy, data_root=sm.params.data,
    )
    write_config(cfg, sm.output.cfg)
    print(f"{sm.output.cfg}: setting {sm.wildcards.setting}, policy {sm.wildcards.policy}", file=sys.stderr)
