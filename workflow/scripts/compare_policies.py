"""The policy study's table and figure from its finished runs (policies.smk)."""

import sys

from datamove.evaluation.tables import write_csv
from datamove.reservoir.study import plot_policy_study, summarize

sm = snakemake  # noqa: F821 (injected by Snakemake)
with open(sm.log[0], "w") as sys.stderr:
    runs = {(setting, policy): path for setting, policy, path in sm.params.runs}
    summary = write_csv(summarize(runs), sm.output.summary)  # the figure from the CSV as written
    plot_policy_study(runs, summary, sm.output.figure)
    print(summary.to_string(index=False), file=sys.stderr)
