"""The data-diversity study's table and figure from its finished runs (diversity.smk)."""

import sys

from datamove.evaluation.diversity import collect, markdown, plot, points

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    runs = {(model, arm, int(members), int(seed)): path for model, arm, members, seed, path in sm.params.runs}
    summary, members = collect(runs)
    summary.to_csv(sm.output.summary, index=False, float_format="%.6g")
    pts = points(members, summary, resamples=sm.params.resamples)
    text = markdown(summary, pts, resamples=sm.params.resamples)
    with open(sm.output.markdown, "w") as fh:
        fh.write(text)
    plot(pts, sm.output.figure)
    print(summary.to_string(index=False), file=sys.stderr)
    print(text, file=sys.stderr)
