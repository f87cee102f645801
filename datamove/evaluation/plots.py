"""The study's figures, drawn from figure_data.csv only (so every number shown is in that CSV).

``FIGURES`` maps a figure's name to the function that draws it; the workflow has one rule per name
(``plot_<name>``) and a caption per name under ``workflow/report/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ARM_STYLE = {"online": {"color": "C0", "label": "online (streamed)"}, "offline": {"color": "C1", "label": "offline (stored)"}}


def _arms(data: pd.DataFrame) -> list[str]:
    return [a for a in ("online", "offline") if a in set(data["arm"])]


def _select(data: pd.DataFrame, figure: str, series: str | None = None, arm: str | None = None) -> pd.DataFrame:
    d = data[data["figure"] == figure]
    if series is not None:
        d = d[d["series"] == series]
    if arm is not None:
        d = d[d["arm"] == arm]
    return d


def save_figure(fig, path: str | Path, *, dpi: int = 120) -> Path:
    """Lay out ``fig``, write it to ``path`` (its folder made first) and close it; the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _finish(fig, out: str | Path) -> None:
    save_figure(fig, out, dpi=110)


def plot_loss_curves(data: pd.DataFrame, out: str | Path) -> None:
    """Validation (and training) loss against batches, for each arm."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm in _arms(data):
        style = ARM_STYLE[arm]
        val = _select(data, "loss_curves", "val_loss", arm)
        train = _select(data, "loss_curves", "train_loss", arm)
        ax.plot(val["x"], val["value"], color=style["color"], label=f"{style['label']}: validation")
        ax.plot(train["x"], train["value"], color=style["color"], alpha=0.35, ls="--", label=f"{style['label']}: training")
    ax.set(xlabel="batches", ylabel="MSE (normalised)", yscale="log", title="Loss against batches")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _finish(fig, out)


def plot_throughput(data: pd.DataFrame, out: str | Path) -> None:
    """Batches per second and samples per second over wall-clock time, for each arm."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, series, label in zip(axes, ("batches_per_s", "samples_per_s"), ("batches / s", "samples / s")):
        for arm in _arms(data):
            d = _select(data, "throughput", series, arm)
            ax.plot(d["x"], d["value"], color=ARM_STYLE[arm]["color"], label=ARM_STYLE[arm]["label"], marker=".", ms=3)
        ax.set(xlabel="training time (s)", ylabel=label, title=f"{label.capitalize()} over time")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _finish(fig, out)


def plot_test_error(data: pd.DataFrame, out: str | Path) -> None:
    """Test MSE and relative L2 error against the time step (pooled over the test members); for an
    autoregressive model the one-step error (solid) and the rollout's from the first steps (dashed):
    how the error grows when the surrogate runs as a solver."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, series, label in zip(axes, ("mse", "rel_l2"), ("MSE (normalised)", "relative L2 error")):
        for arm in _arms(data):
            d = _select(data, "test_error", series, arm)
            rolled = _select(data, "test_error", f"rollout_{series}", arm)
            name = ARM_STYLE[arm]["label"]
            ax.plot(d["step"], d["value"], color=ARM_STYLE[arm]["color"], label=f"{name}, one step" if len(rolled) else name)
            if len(rolled):
                ax.plot(rolled["step"], rolled["value"], color=ARM_STYLE[arm]["color"], ls="--", label=f"{name}, rollout")
        ax.set(xlabel="time step", ylabel=label, yscale="log", title=f"Test {label} per time step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _finish(fig, out)


def _grid(d: pd.DataFrame) -> np.ndarray:
    ys, xs = np.unique(d["y"]), np.unique(d["x"])
    grid = np.full((len(ys), len(xs)), np.nan)
    grid[np.searchsorted(ys, d["y"]), np.searchsorted(xs, d["x"])] = d["value"]
    return grid


def plot_error_maps(data: pd.DataFrame, out: str | Path) -> None:
    """Truth, prediction of each arm and its error, for one test member at a few time steps."""
    maps = _select(data, "error_maps")
    arms = _arms(maps)
    steps = sorted(maps["step"].dropna().unique())
    member = int(maps["member"].dropna().iloc[0]) if len(maps) else 0
    cols = ["truth"] + [f"{arm}:{kind}" for arm in arms for kind in ("prediction", "error")]
    fig, axes = plt.subplots(len(steps), len(cols), figsize=(2.6 * len(cols), 2.4 * len(steps)), squeeze=False)
    temp = maps[maps["series"] != "error"]["value"]
    vmin, vmax = (float(temp.min()), float(temp.max())) if len(temp) else (0.0, 1.0)
    emax = float(maps[maps["series"] == "error"]["value"].abs().max() or 1.0) if len(maps) else 1.0
    for r, step in enumerate(steps):
        at = maps[maps["step"] == step]
        for c, col in enumerate(cols):
            ax = axes[r, c]
            arm, kind = (arms[0], "truth") if col == "truth" else col.split(":")
            d = at[(at["arm"] == arm) & (at["series"] == kind)]
            if kind == "error":
                im = ax.imshow(_grid(d), origin="lower", cmap="RdBu_r", vmin=-emax, vmax=emax)
            else:
                im = ax.imshow(_grid(d), origin="lower", cmap="inferno", vmin=vmin, vmax=vmax)
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            title = "truth" if col == "truth" else f"{arm} {kind}"
            ax.set_title(f"{title}, step {int(step)}", fontsize=8)
    fig.suptitle(f"Test member {member}: truth, prediction and error (prediction - truth)", fontsize=10)
    _finish(fig, out)


def plot_reservoir(data: pd.DataFrame, out: str | Path) -> None:
    """Buffer occupancy and mean times seen over time; histogram of how often samples were seen."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for arm in _arms(data):
        style = ARM_STYLE[arm]
        occ = _select(data, "reservoir", "occupancy", arm)
        axes[0].plot(occ["x"], occ["value"], color=style["color"], label=style["label"])
        seen = _select(data, "reservoir", "seen_mean", arm)
        axes[1].plot(seen["x"], seen["value"], color=style["color"], label=style["label"])
        hist = _select(data, "seen_histogram", "samples", arm)
        if len(hist):
            # The CSV holds the exact counts per number of times seen; the figure bins them.
            lo, hi = float(hist["x"].min()), float(hist["x"].max())
            bins = np.arange(lo, hi + 2) - 0.5 if hi - lo < 40 else np.linspace(lo, hi + 1, 41)
            axes[2].hist(hist["x"], bins=bins, weights=hist["value"], alpha=0.55, color=style["color"], label=style["label"])
        else:
            axes[2].text(0.5, 0.5, f"{arm}: not recorded", transform=axes[2].transAxes, ha="center")
    axes[0].set(xlabel="training time (s)", ylabel="occupancy (held / capacity)", title="Buffer occupancy", ylim=(0, 1.05))
    axes[1].set(xlabel="training time (s)", ylabel="mean times seen", title="Times a held sample was drawn")
    axes[2].set(xlabel="times seen", ylabel="samples", title="How often samples were seen")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _finish(fig, out)


def plot_parameter_space(data: pd.DataFrame, out: str | Path) -> None:
    """Relative L2 test error of each test member against each of its parameters."""
    d = _select(data, "parameter_space")
    names = [s.split(":", 1)[1] for s in dict.fromkeys(d["series"]) if s.startswith("param:")]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(2.9 * max(len(names), 1), 3.2), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        for arm in _arms(d):
            p = _select(d, "parameter_space", f"param:{name}", arm).set_index("member")["value"]
            e = _select(d, "parameter_space", "rel_l2", arm).set_index("member")["value"]
            ax.scatter(p.reindex(e.index), e, color=ARM_STYLE[arm]["color"], label=ARM_STYLE[arm]["label"], s=18)
        ax.set(xlabel=name, yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test relative L2 error")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Test error over the parameter space (one point per test member)", fontsize=10)
    _finish(fig, out)


FIGURES: dict[str, Callable[[pd.DataFrame, str | Path], None]] = {
    "loss_curves": plot_loss_curves,
    "throughput": plot_throughput,
    "test_error": plot_test_error,
    "error_maps": plot_error_maps,
    "reservoir": plot_reservoir,
    "parameter_space": plot_parameter_space,
}


def plot(name: str, data_csv: str | Path, out: str | Path) -> Path:
    """Draw figure ``name`` from ``figure_data.csv`` into ``out``."""
    try:
        draw = FIGURES[name]
    except KeyError:
        raise ValueError(f"unknown figure '{name}' (known: {', '.join(FIGURES)})") from None
    data = pd.read_csv(data_csv)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    draw(data, out)
    return Path(out)
