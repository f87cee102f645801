"""Write the study's effective configuration (read by every `datamove` command of the workflow)."""

from datamove.config import write_config

write_config(snakemake.params.config, snakemake.output.cfg)  # noqa: F821 (injected by Snakemake)
