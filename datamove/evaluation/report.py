"""The study's figure data (one tidy CSV of every number a figure or the table shows) and its table.

``figure_data.csv`` has one observation per row, with the columns

    figure   which figure shows it (loss_curves, throughput, test_error, error_maps, reservoir,
             seen_histogram, parameter_space, table)
    arm      online or offline
    series   the quantity (val_loss, batches_per_s, rel_l2, truth, occupancy, ...)
    member   test member (per-member and map rows), else empty
    step     time step, 1-based (per-step and map rows), else empty
    x, y     the point's coordinates in the figure (batch, wall_s, time, grid column/row, ...)
    value    the number
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from datamove.config import StudyConfig
from datamove.evaluation.arms import arm_dirs
from datamove.evaluation.errors import has_rollout, pooled

COLUMNS = ["figure", "arm", "series", "member", "step", "x", "y", "value"]

# Rows of the results table: (series in figure_data, label, how the arms compare).
TABLE_ROWS = [
    ("members", "members trained on", None),
    ("samples", "distinct samples", None),
    ("batches", "batches trained", None),
    ("epochs", "times each sample was used (mean)", None),
    ("train_s", "training time (s)", None),
    ("batches_per_s", "batch throughput (batches/s)", "ratio"),
    ("samples_per_s", "sample throughput (samples/s)", "ratio"),
    ("test_mse", "test MSE (normalised)", "improvement"),
    ("test_rel_l2", "test relative L2 error", "improvement"),
    # Autoregressive models (trainer.sample): the errors of rollouts from each member's first steps.
    ("test_rollout_mse", "test rollout MSE (normalised)", "improvement"),
    ("test_rollout_rel_l2", "test rollout relative L2 error", "improvement"),
]


def _rows(figure: str, arm: str, series: str, x, value, *, member=None, step=None, y=None) -> pd.DataFrame:
    n = len(value)
    return pd.DataFrame({
        "figure": figure,
        "arm": arm,
        "series": series,
        "member": pd.array([member] * n if np.isscalar(member) or member is None else member, dtype="Int64"),
        "step": pd.array([step] * n if np.isscalar(step) or step is None else step, dtype="Int64"),
        "x": np.asarray(x, dtype=float) if x is not None else np.nan,
        "y": np.asarray(y, dtype=float) if y is not None else np.nan,
        "value": np.asarray(value, dtype=float),
    })


def seen_histogram(folder: Path) -> tuple[pd.DataFrame | None, str]:
    """(times_seen, samples) of an arm, and where it comes from.

    The offline trainer writes seen.csv (every sample of the dataset). For the online arm, the
    counters of the samples the reservoir holds at the end, when the checkpoint carries them.
    """
    path = folder / "seen.csv"
    if path.exists():
        return pd.read_csv(path), "every stored sample"
    model = folder / "model.pt"
    if model.exists():
        ckpt = torch.load(model, map_location="cpu", weights_only=False)
        state = ckpt.get("buffer") or ckpt.get("buffer_state")
        if isinstance(state, dict) and "seen" in state:
            counts = torch.bincount(torch.as_tensor(state["seen"], dtype=torch.int64))
            k = torch.nonzero(counts).flatten()
            return pd.DataFrame({"times_seen": k.numpy(), "samples": counts[k].numpy()}), "samples held at the end"
    return None, "not recorded"


def arm_figure_data(arm: str, folder: Path, cfg: StudyConfig) -> pd.DataFrame:
    """Every figure's rows for one arm, from its metrics.csv, ledger.csv, evaluation.csv, maps.csv."""
    metrics = pd.read_csv(folder / "metrics.csv")
    ledger = pd.read_csv(folder / "ledger.csv")
    errors = pd.read_csv(folder / "evaluation.csv")
    maps = pd.read_csv(folder / "maps.csv")
    parts = []
    for series in ("train_loss", "val_loss"):
        parts.append(_rows("loss_curves", arm, series, metrics["batch"], metrics[series]))
    for series in ("batches_per_s", "samples_per_s"):
        parts.append(_rows("throughput", arm, series, metrics["wall_s"], metrics[series]))
    per_step = pooled(errors, ["step", "time"])
    rollout = has_rollout(errors)
    for series in ("mse", "rel_l2", *(("rollout_mse", "rollout_rel_l2") if rollout else ())):
        parts.append(_rows("test_error", arm, series, per_step["time"], per_step[series], step=per_step["step"]))
    for (member, step, kind), m in maps.groupby(["member", "step", "kind"], sort=False):
        parts.append(_rows("error_maps", arm, kind, m["ix"], m["value"], member=member, step=step, y=m["iy"]))
    for series in ("occupancy", "seen_mean"):
        parts.append(_rows("reservoir", arm, series, metrics["wall_s"], metrics[series]))
    hist, _source = seen_histogram(folder)
    if hist is not None and len(hist):
        parts.append(_rows("seen_histogram", arm, "samples", hist["times_seen"], hist["samples"]))
    per_member = pooled(errors, ["member"])
    params = errors.groupby("member")[list(cfg.ensemble.names)].first()
    for series in ("mse", "rel_l2"):
        parts.append(_rows("parameter_space", arm, series, None, per_member[series], member=per_member["member"]))
    for name in cfg.ensemble.names:
        parts.append(_rows("parameter_space", arm, f"param:{name}", None, params[name].to_numpy(), member=params.index.to_numpy()))

    last = metrics.iloc[-1]
    complete = ledger[ledger["status"] == "complete"]
    # Distinct samples: every step received, but, autoregressive, a member's first steps end no pair.
    samples = float(ledger["steps_received"].sum() - ledger.get("steps_unpaired", pd.Series(dtype=float)).sum())
    batches, train_s = float(last["batch"]), float(last["wall_s"])
    overall = pooled(errors).iloc[0]
    summary = {
        "members": float(len(complete)),
        "samples": samples,
        "batches": batches,
        "epochs": batches * cfg.trainer.batch_size / max(samples, 1.0),
        "train_s": train_s,
        "batches_per_s": batches / max(train_s, 1e-9),
        "samples_per_s": batches * cfg.trainer.batch_size / max(train_s, 1e-9),
        "test_mse": float(overall["mse"]),
        "test_rel_l2": float(overall["rel_l2"]),
        **({"test_rollout_mse": float(overall["rollout_mse"]), "test_rollout_rel_l2": float(overall["rollout_rel_l2"])}
           if rollout else {}),
    }
    for series, value in summary.items():
        parts.append(_rows("table", arm, series, None, [value]))
    return pd.concat(parts, ignore_index=True)[COLUMNS]


def collect_figure_data(cfg: StudyConfig) -> pd.DataFrame:
    """The tidy figure data of every arm of the study (see the module docstring)."""
    return pd.concat(
        [arm_figure_data(arm, folder, cfg) for arm, folder in arm_dirs(cfg).items()], ignore_index=True
    )


def results_table(data: pd.DataFrame) -> pd.DataFrame:
    """One row per quantity, one column per arm, and, with both arms, ``online vs offline``: the
    improvement of online over offline in % for errors, their ratio for throughputs."""
    table = data[data["figure"] == "table"].pivot_table(index="series", columns="arm", values="value", aggfunc="first")
    arms = [a for a in ("online", "offline") if a in table.columns]
    rows = [row for row in TABLE_ROWS if row[0] in table.index]  # rollouts: autoregressive models only
    out = pd.DataFrame({"quantity": [label for _, label, _ in rows]})
    for arm in arms:
        out[arm] = [table.at[s, arm] for s, _, _ in rows]
    if arms == ["online", "offline"]:
        compare = []
        for series, _, how in rows:
            on, off = table.at[series, "online"], table.at[series, "offline"]
            if how == "ratio":
                compare.append(f"x{on / off:.2f}" if off else "")
            elif how == "improvement":
                compare.append(f"{100.0 * (off - on) / off:+.1f} %" if off else "")
            else:
                compare.append("")
        out["online vs offline"] = compare
    return out


def format_table(table: pd.DataFrame) -> str:
    """A Markdown table (what the workflow prints at the end of a study)."""

    def fmt(v):
        if isinstance(v, str):
            return v
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        v = float(v)
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:,.0f}" if v == int(v) else f"{v:,.3f}"

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.columns))) + "|"
    lines = [header, rule]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(fmt(v) for v in row.tolist()) + " |")
    return "\n".join(lines)


def write_table(data: pd.DataFrame, out_csv: str | Path, out_md: str | Path | None = None) -> str:
    table = results_table(data)
    table.to_csv(out_csv, index=False, quoting=csv.QUOTE_MINIMAL)
    text = format_table(table)
    if out_md is not None:
        Path(out_md).write_text(text + "\n")
    return text
