"""The sampling study: uniform against adaptive parameter sampling, over seeds.

A run is the study's config with ``parameters.sampler``, ``ensemble.seed`` and ``trainer.seed`` set,
trained online and evaluated on the test members (the same for every run: their sampler is the base
one and their seed is ``test.seed``). The error of a test member is its MSE (normalised) and relative
L2 pooled over its steps; a run is summed up by the mean, 99th percentile and maximum of those over
the test members, since adaptive sampling aims at the tail of the error, not only its mean.

Layout under ``<results_dir>/<study>/sampling/``: ``runs/<sampler>-seed<seed>/`` each run's study
folder, ``runs/<sampler>-seed<seed>.yaml`` its config, and ``sampling.csv`` (a row per run),
``sampling_members.csv`` (a row per run and test member: its errors and parameters),
``sampling_training.csv`` (a row per run and training member: its parameters), ``sampling.md``
(means and spreads over seeds, gains over the first sampler) and ``sampling.png``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datamove.config import StudyConfig, load_config
from datamove.evaluation.errors import pooled
from datamove.studies.sweep import StudyKind, listed, seed_axis

SECTION = "sampling_study"
#: Columns of sampling.csv, one row per (sampler, seed).
COLUMNS = (
    "sampler", "seed", "test_members",
    "mse_mean", "mse_p99", "mse_max", "rel_l2_mean", "rel_l2_p99", "rel_l2_max",
    "val_loss_final", "batches", "train_wall_s", "members_complete", "members_from_proposal",
)
#: The statistics the table compares, with how they read.
STATS = {
    "mse_mean": "test MSE, mean over test members",
    "mse_p99": "test MSE, 99th percentile",
    "mse_max": "test MSE, worst test member",
    "rel_l2_mean": "relative L2, mean",
    "rel_l2_p99": "relative L2, 99th percentile",
    "rel_l2_max": "relative L2, worst test member",
}


def check_samplers(cfg: Mapping[str, Any]) -> None:
    """Held-out and test members follow the base sampler of adaptive (and a fixed sampler is its own
    base): a study comparing adaptive with another fixed sampler than its base would test the two
    on different test members. Raises ValueError naming the keys."""
    st = cfg[SECTION]
    fixed = [s for s in st["samplers"] if s != "adaptive"]
    base = cfg["parameters"]["adaptive"]["base"]
    if "adaptive" in st["samplers"] and any(s != base for s in fixed):
        raise ValueError(
            f"key '{SECTION}.samplers': {fixed} would be tested on other test members than adaptive, whose "
            f"base sampler is {base!r} (parameters.adaptive.base): compare adaptive with {base!r}"
        )


def _settle(cfg: dict[str, Any], values: Mapping[str, Any]) -> None:
    cfg["evaluation"]["enabled"] = True
    cfg["comparison"]["enabled"] = False
    cfg["stream"]["engine"] = "SST"


def member_errors(evaluation: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Per test member: mse and rel_l2 pooled over its steps, and its parameters (``names``, the
    columns of evaluation.csv that hold them)."""
    errors = pooled(evaluation, by=["member"])[["member", "mse", "rel_l2"]]
    params = evaluation.groupby("member", sort=True)[list(names)].first().reset_index()
    return errors.merge(params, on="member")


def _param_names(folder: Path) -> list[str]:
    return list(StudyConfig.from_dict(load_config(folder / "config.yaml")).problem.param_names)


def summarize_run(folder: str | Path, per_member: pd.DataFrame, *, sampler: str, seed: int) -> dict[str, Any]:
    """One row of sampling.csv from a finished run's errors per test member (:func:`member_errors`),
    and its metrics.csv and ledger.csv."""
    folder = Path(folder)
    metrics = pd.read_csv(folder / "metrics.csv")
    ledger = pd.read_csv(folder / "ledger.csv")
    last = metrics.iloc[-1]
    row: dict[str, Any] = {"sampler": sampler, "seed": seed, "test_members": len(per_member)}
    for col in ("mse", "rel_l2"):
        values = per_member[col].to_numpy()
        row[f"{col}_mean"] = float(values.mean())
        row[f"{col}_p99"] = float(np.percentile(values, 99))
        row[f"{col}_max"] = float(values.max())
    row.update(
        val_loss_final=float(last["val_loss"]),
        batches=int(last["batch"]),
        train_wall_s=float(last["wall_s"]),
        members_complete=int((ledger["status"] == "complete").sum()),
        members_from_proposal=int((ledger.get("draw", pd.Series(dtype=str)) == "proposal").sum()),
    )
    return row


def collect(runs: Mapping[tuple[str, int], str | Path]) -> dict[str, pd.DataFrame]:
    """sampling.csv (``summary``), the errors and parameters of every run's test members
    (``members``) and the parameters of its training members (``training``): ``runs`` maps
    (sampler, seed) to the run's folder."""
    rows, members, training = [], [], []
    for (sampler, seed), folder in runs.items():
        folder = Path(folder)
        names = _param_names(folder)
        per_member = member_errors(pd.read_csv(folder / "evaluation.csv"), names)
        rows.append(summarize_run(folder, per_member, sampler=sampler, seed=seed))
        members.append(per_member.assign(sampler=sampler, seed=seed))
        training.append(training_params(folder, names).assign(sampler=sampler, seed=seed))
    first = ["sampler", "seed", "member"]
    return {"summary": pd.DataFrame(rows, columns=list(COLUMNS)),
            "members": _first(pd.concat(members, ignore_index=True), first),
            "training": _first(pd.concat(training, ignore_index=True), first)}


def _first(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame[columns + [c for c in frame.columns if c not in columns]]


def gains(summary: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per sampler other than ``reference`` and statistic: the gain 1 - stat / reference stat of the
    same seed (positive: lower error than the reference), its mean and standard deviation over
    seeds, and the number of seeds it won."""
    ref = summary[summary["sampler"] == reference].set_index("seed")
    rows = []
    for sampler in dict.fromkeys(summary["sampler"]):
        if sampler == reference:
            continue
        other = summary[summary["sampler"] == sampler].set_index("seed")
        seeds = sorted(set(ref.index) & set(other.index))
        for stat in STATS:
            g = np.array([1.0 - other.at[k, stat] / ref.at[k, stat] for k in seeds])
            rows.append({"sampler": sampler, "stat": stat, "seeds": len(seeds),
                         "gain_mean": float(g.mean()) if len(g) else float("nan"),
                         "gain_std": float(g.std(ddof=1)) if len(g) > 1 else float("nan"),
                         "wins": int((g > 0).sum())})
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame, reference: str) -> str:
    """sampling.md: each statistic's mean +- std over seeds per sampler, and the gains."""
    samplers = list(dict.fromkeys(summary["sampler"]))
    seeds = sorted(set(summary["seed"]))
    lines = [f"Test error over {int(summary['test_members'].iloc[0])} test members, {len(seeds)} seeds "
             f"({', '.join(map(str, seeds))}); mean +- standard deviation over seeds.", "",
             "| statistic | " + " | ".join(samplers) + " |", "|---|" + "---|" * len(samplers)]
    for stat, what in STATS.items():
        cells = []
        for s in samplers:
            v = summary.loc[summary["sampler"] == s, stat]
            cells.append(f"{v.mean():.3e} +- {v.std(ddof=1) if len(v) > 1 else float('nan'):.1e}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    g = gains(summary, reference)
    if len(g):
        lines += ["", f"Gain over {reference} (1 - error / {reference}'s error, same seed; positive: lower error):", "",
                  "| sampler | statistic | gain mean | gain std | seeds won |", "|---|---|---|---|---|"]
        for r in g.itertuples():
            lines.append(f"| {r.sampler} | {STATS[r.stat]} | {r.gain_mean:+.1%} | {r.gain_std:.1%} | "
                         f"{r.wins} of {r.seeds} |")
    return "\n".join(lines) + "\n"


def training_params(folder: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """The training members' parameters of a run (from their markers): member, then ``names``."""
    rows = []
    for path in sorted((Path(folder) / "members").glob("member-*.json")):
        if not path.stem.removeprefix("member-").isdigit():
            continue  # .failed, .received, .draw
        obj = json.loads(path.read_text())
        if "params" in obj:
            rows.append({"member": int(obj["member"]), **dict(zip(names, obj["params"]))})
    return pd.DataFrame(rows, columns=["member", *names])


def report(frames: Mapping[str, pd.DataFrame], paths: Mapping[str, Path], **options: Any) -> str:
    """sampling.md and sampling.png from the three CSVs; the first sampler is the reference the
    others' gains are measured against. Returns the Markdown."""
    summary = frames["summary"]
    text = markdown(summary, summary["sampler"].iloc[0])
    paths["markdown"].write_text(text)
    plot(frames["members"], frames["training"], paths["figure"])
    return text


def plot(members: pd.DataFrame, training: pd.DataFrame, path: str | Path) -> Path:
    """Left: where the training members of each sampler went in the plane of the first two varying
    parameters (every seed), over the test members coloured by the reference sampler's error (its
    first seed). Right: each sampler's test error per test member, sorted (the tail is on the
    right). ``members`` and ``training`` are the frames of :func:`collect`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from datamove.evaluation.plots import save_figure  # matplotlib only where a figure is drawn

    names = [c for c in training.columns if c not in ("sampler", "seed", "member")]
    samplers = list(dict.fromkeys(members["sampler"]))
    ref_sampler = samplers[0]
    ref = members[(members["sampler"] == ref_sampler) & (members["seed"] == members["seed"].iloc[0])]
    # The parameters the test members vary (the others have one value: a degenerate range).
    varying = [n for n in names if ref[n].nunique() > 1][:2] or names[:1]
    x, y = (varying + varying)[:2]
    fig, (ax_p, ax_e) = plt.subplots(1, 2, figsize=(12, 5))
    sc = ax_p.scatter(ref[x], ref[y], c=ref["mse"], cmap="Greys", marker="s", s=40, norm=matplotlib.colors.LogNorm(),
                      label=f"test members ({ref_sampler} error)")
    fig.colorbar(sc, ax=ax_p, label=f"test MSE, {ref_sampler}")
    markers = ["o", "x", "^", "+"]
    for k, sampler in enumerate(samplers):
        pts = training[training["sampler"] == sampler]
        if len(pts):
            ax_p.scatter(pts[x], pts[y], s=14, marker=markers[k % len(markers)], color=f"C{k}",
                         alpha=0.7, label=f"{sampler} training members")
    ax_p.set_xlabel(x)
    ax_p.set_ylabel(y)
    ax_p.set_title("where the training members went (all seeds)")
    ax_p.legend(fontsize=8, loc="best")
    for k, sampler in enumerate(samplers):
        runs = members[members["sampler"] == sampler]
        for n, (_, run) in enumerate(runs.groupby("seed", sort=False)):
            err = np.sort(run["mse"].to_numpy())
            ax_e.plot(np.arange(1, len(err) + 1), err, color=f"C{k}", alpha=0.8, label=sampler if n == 0 else None)
    ax_e.set_yscale("log")
    ax_e.set_xlabel("test members, sorted by error")
    ax_e.set_ylabel("test MSE (normalised)")
    ax_e.set_title("test error per member, each seed a line")
    ax_e.legend()
    return save_figure(fig, path)


KIND = StudyKind(
    name="sampling", section=SECTION, rule="sampling", target="compare_sampling",
    axes=(listed(SECTION, "samplers", "sampler", "parameters.sampler"), seed_axis(SECTION)),
    loop=("seeds", "samplers"), run_name="{sampler}-seed{seed}", key=("sampler", "seed"),
    # A run is one study: its own sampling_study is the default, so that its config (which decides
    # when Snakemake reruns it) does not change when a sampler or a seed is added to the study.
    resets={SECTION: {}}, settle=_settle,
    run_outputs={"evaluation": "evaluation.csv", "metrics": "metrics.csv", "ledger": "ledger.csv"},
    ledger="ledger.csv", run_figures=lambda st: True,
    # Its own message, naming parameters.adaptive.base, before the sweep's test-member check.
    check_first=check_samplers,
    tables={"summary": "sampling.csv", "members": "sampling_members.csv", "training": "sampling_training.csv",
            "markdown": "sampling.md", "figure": "sampling.png"},
    collect=collect, report=report, caption="sampling.rst",
)
