"""The sampling study's table and figure from its finished runs (sampling.smk)."""

import sys

from datamove.evaluation.sampling import markdown, plot, summarize
from datamove.evaluation.tables import write_csv

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    runs = {(sampler, int(seed)): path for sampler, seed, path in sm.params.runs}
    summary = write_csv(summarize(runs), sm.output.summary)  # the table from the CSV as written
    reference = sm.params.runs[0][0]
    text = markdown(summary, reference)
    with open(sm.output.markdown, "w") as fh:
        fh.write(text)
    plot(runs, summary, sm.output.figure, names=sm.params.names, ranges=sm.params.ranges)
    print(summary.to_string(index=False), file=sys.stderr)
    print(text, file=sys.stderr)
