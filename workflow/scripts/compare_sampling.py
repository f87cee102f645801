"""The sampling study's table and figure from its finished runs (sampling.smk)."""

import sys

import pandas as pd

from datamove.evaluation.sampling import markdown, plot, summarize

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    runs = {(sampler, int(seed)): path for sampler, seed, path in sm.params.runs}
    summary = summarize(runs)
    summary.to_csv(sm.output.summary, index=False, float_format="%.6g")
    # The table from the CSV as written (6 digits), so that sampling.md is what sampling.csv gives
    # to the digit: a gain on a rounding edge (-105.05 %) could otherwise print apart.
    summary = pd.read_csv(sm.output.summary)
    reference = sm.params.runs[0][0]
    text = markdown(summary, reference)
    with open(sm.output.markdown, "w") as fh:
        fh.write(text)
    plot(runs, summary, sm.output.figure, names=sm.params.names, ranges=sm.params.ranges)
    print(summary.to_string(index=False), file=sys.stderr)
    print(text, file=sys.stderr)
