"""The sampling study: uniform against adaptive parameter sampling, over seeds (sampling.smk).

A run is the study's config with ``parameters.sampler``, ``ensemble.seed`` and ``trainer.seed`` set,
trained online and evaluated on the test members (the same for every run: their sampler is the base
one and their seed is ``test.seed``). The error of a test member is its MSE (normalised) and relative
L2 pooled over its steps; a run is summed up by the mean, 99th percentile and maximum of those over
the test members, since adaptive sampling aims at the tail of the error, not only its mean.

Layout under ``<results_dir>/<study>/sampling/``: ``runs/<sampler>-seed<seed>/`` each run's study
folder, ``runs/<sampler>-seed<seed>.yaml`` its config, and ``sampling.csv`` (a row per run),
``sampling.md`` (means and spreads over seeds, gains over the first sampler) and ``sampling.png``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datamove.config import validate_config
from datamove.evaluation.errors import pooled

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


def run_name(sampler: str, seed: int) -> str:
    return f"{sampler}-seed{seed}"


def runs_of(cfg: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(sampler, seed) of every run, seed by seed (the order of sampling.csv; Snakemake picks the
    order in which they run)."""
    st = cfg["sampling_study"]
    return [(sampler, int(seed)) for seed in st["seeds"] for sampler in st["samplers"]]


def run_config(base: Mapping[str, Any], *, root: str | Path, data_root: str | Path, sampler: str,
               seed: int) -> dict[str, Any]:
    """The validated config of one run: ``base`` (the study's, validated) with its sampler and seeds,
    folders under ``root``/``data_root``, evaluation on, no comparison arms.

    Every run has the same held-out and test members (their sampler is the base sampler and their
    seeds are the config's), so their errors compare; a study whose samplers would not is refused
    (:func:`check_samplers`, ValueError naming the keys).
    """
    check_samplers(base)
    cfg = copy.deepcopy(dict(base))
    name = run_name(sampler, seed)
    cfg["study"] = name
    cfg["arm"] = None
    cfg["results_dir"] = str(root)
    cfg["data_dir"] = str(data_root)
    cfg["parameters"]["sampler"] = sampler
    cfg["ensemble"]["seed"] = seed
    cfg["trainer"]["seed"] = seed
    cfg["evaluation"]["enabled"] = True
    cfg["comparison"]["enabled"] = False
    cfg["stream"]["engine"] = "SST"
    # A run is one study: its own sampling_study is the default, so that its config (which decides
    # when Snakemake reruns it) does not change when a sampler or a seed is added to the study.
    cfg["sampling_study"] = {}
    return validate_config(cfg, source=f"sampling study run {name}")


def check_samplers(cfg: Mapping[str, Any]) -> None:
    """Held-out and test members follow the base sampler of adaptive (and a fixed sampler is its own
    base): a study comparing adaptive with another fixed sampler than its base would test the two
    on different test members. Raises ValueError naming the keys."""
    st = cfg["sampling_study"]
    fixed = [s for s in st["samplers"] if s != "adaptive"]
    base = cfg["parameters"]["adaptive"]["base"]
    if "adaptive" in st["samplers"] and any(s != base for s in fixed):
        raise ValueError(
            f"key 'sampling_study.samplers': {fixed} would be tested on other test members than adaptive, whose "
            f"base sampler is {base!r} (parameters.adaptive.base): compare adaptive with {base!r}"
        )


def member_errors(evaluation: pd.DataFrame) -> pd.DataFrame:
    """Per test member: mse and rel_l2 pooled over its steps, and its parameters' first row."""
    return pooled(evaluation, by=["member"])


def summarize_run(folder: str | Path, *, sampler: str, seed: int) -> dict[str, Any]:
    """One row of sampling.csv from a finished run's evaluation.csv, metrics.csv and ledger.csv."""
    folder = Path(folder)
    per_member = member_errors(pd.read_csv(folder / "evaluation.csv"))
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


def summarize(runs: Mapping[tuple[str, int], str | Path]) -> pd.DataFrame:
    """sampling.csv: ``runs`` maps (sampler, seed) to the run's folder."""
    rows = [summarize_run(path, sampler=s, seed=k) for (s, k), path in runs.items()]
    return pd.DataFrame(rows, columns=list(COLUMNS))


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


def training_params(folder: str | Path) -> pd.DataFrame:
    """The training members' parameters of a run (from their markers): member, p0, p1, ..."""
    rows = []
    for path in sorted((Path(folder) / "members").glob("member-*.json")):
        if not path.stem.removeprefix("member-").isdigit():
            continue  # .failed, .received, .draw
        obj = json.loads(path.read_text())
        if "params" in obj:
            rows.append({"member": int(obj["member"]), **{f"p{i}": v for i, v in enumerate(obj["params"])}})
    return pd.DataFrame(rows)


def plot(runs: Mapping[tuple[str, int], str | Path], summary: pd.DataFrame, path: str | Path, *,
         names: Sequence[str], ranges: Sequence[Sequence[float]]) -> Path:
    """Left: where the training members of each sampler went in the plane of the first two varying
    parameters (every seed), over the test members coloured by the reference sampler's error.
    Right: each sampler's test error per test member, sorted (the tail is on the right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = list(dict.fromkeys(s for s, _ in runs))
    varying = [i for i, (lo, hi) in enumerate(ranges) if hi > lo][:2] or [0, 0]
    i, j = (varying + varying)[:2]
    fig, (ax_p, ax_e) = plt.subplots(1, 2, figsize=(12, 5))
    ref_sampler = samplers[0]
    ref_folder = next(p for (s, _), p in runs.items() if s == ref_sampler)
    ev = pd.read_csv(Path(ref_folder) / "evaluation.csv")
    per = ev.groupby("member").agg(x=(names[i], "first"), y=(names[j], "first"))
    per["mse"] = member_errors(ev).set_index("member")["mse"]
    sc = ax_p.scatter(per["x"], per["y"], c=per["mse"], cmap="Greys", marker="s", s=40, norm=matplotlib.colors.LogNorm(),
                      label=f"test members ({ref_sampler} error)")
    fig.colorbar(sc, ax=ax_p, label=f"test MSE, {ref_sampler}")
    markers = ["o", "x", "^", "+"]
    for k, sampler in enumerate(samplers):
        parts = [training_params(p) for (s, _), p in runs.items() if s == sampler]
        pts = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        if len(pts):
            ax_p.scatter(pts[f"p{i}"], pts[f"p{j}"], s=14, marker=markers[k % len(markers)], color=f"C{k}",
                         alpha=0.7, label=f"{sampler} training members")
    ax_p.set_xlabel(names[i])
    ax_p.set_ylabel(names[j])
    ax_p.set_title("where the training members went (all seeds)")
    ax_p.legend(fontsize=8, loc="best")
    for k, sampler in enumerate(samplers):
        for n, ((s, seed), folder) in enumerate(x for x in runs.items() if x[0][0] == sampler):
            err = np.sort(member_errors(pd.read_csv(Path(folder) / "evaluation.csv"))["mse"].to_numpy())
            ax_e.plot(np.arange(1, len(err) + 1), err, color=f"C{k}", alpha=0.8,
                      label=sampler if n == 0 else None)
    ax_e.set_yscale("log")
    ax_e.set_xlabel("test members, sorted by error")
    ax_e.set_ylabel("test MSE (normalised)")
    ax_e.set_title("test error per member, each seed a line")
    ax_e.legend()
    from datamove.evaluation.plots import save_figure

    return save_figure(fig, path)
