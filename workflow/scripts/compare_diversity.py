"""The data-diversity study's table and figure from its finished runs (diversity.smk)."""

import sys
from pathlib import Path

from datamove.evaluation.diversity import collect, write_table

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    runs = {(model, arm, int(members), int(seed)): path for model, arm, members, seed, path in sm.params.runs}
    summary, members = collect(runs)
    text = write_table(summary, members, Path(sm.output.summary).parent, resamples=sm.params.resamples)
    print(summary.to_string(index=False), file=sys.stderr)
    print(text, file=sys.stderr)
