"""The models study's table and figure from its finished runs (models.smk)."""

import sys

from datamove.evaluation.models import collect, improvements, markdown, plot
from datamove.evaluation.tables import write_csv

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    runs = {(problem, model, int(seed)): path for problem, model, seed, path in sm.params.runs}
    summary, members = collect(runs)
    summary = write_csv(summary, sm.output.summary)  # the table from the CSV as written
    gains = improvements(members, resamples=sm.params.resamples)
    text = markdown(summary, gains, resamples=sm.params.resamples)
    with open(sm.output.markdown, "w") as fh:
        fh.write(text)
    plot(gains, members, sm.output.figure)
    print(summary.to_string(index=False), file=sys.stderr)
    print(text, file=sys.stderr)
