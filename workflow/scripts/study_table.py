"""A study of studies' table and figure from its finished runs (studies.smk)."""

import sys
from pathlib import Path

from datamove.studies import KINDS
from datamove.studies.tables import write_table

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    kind = KINDS[sm.params.kind]
    runs = {tuple(run[:-1]): run[-1] for run in sm.params.runs}  # (fields...) -> the run's folder
    text = write_table(kind, kind.collect(runs), Path(sm.output.summary).parent, **sm.params.options)
    print(text, file=sys.stderr)
