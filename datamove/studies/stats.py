"""A trained arm's test errors, pooled over its test samples, and the statistics over seeds and
test members that the models and diversity tables share.

An arm's test error is pooled over its test samples as in datamove.evaluation.errors: ``mse`` the
mean normalised MSE, ``rel_l2`` = sqrt(sum sq_err / sum sq_truth). For an autoregressive model
(``trainer.sample: autoregressive``) evaluation.csv holds the one-step errors of the steps after the
first ``trainer.sample_stride`` and the errors of a rollout from the member's first steps
(``rollout_mse``, ``rollout_sq_err``), pooled alike; a direct model has no rollout. Per test member
sums (:data:`SUMS`) are kept, so that a bootstrap over test members, and a table joined from parts,
pool exactly what the whole study pools.

The rollout study also wants the rollout's error at its *horizon*, the member's last step:
``horizon_rel_l2`` = sqrt(sum rollout_sq_err / sum sq_truth) over the test members' last steps
(:data:`HORIZON`, from the per member sums :data:`HORIZON_SUMS`; ``horizon=True`` in
:func:`member_sums` and :func:`arm_row`). The other kinds do not ask for it, and their tables are
unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

#: The errors compared, as the tables name them, with how they read.
STATS = {
    "test_mse": "test MSE",
    "test_rel_l2": "relative L2",
    "rollout_mse": "rollout MSE",
    "rollout_rel_l2": "rollout relative L2",
}
#: Per test member sums from which every statistic is pooled (:func:`member_sums`).
SUMS = ("n", "mse_sum", "sq_err", "sq_truth", "rollout_mse_sum", "rollout_sq_err")
#: The rollout's error at its horizon (the member's last step), as the rollout study's table names it.
HORIZON = {"horizon_rel_l2": "rollout relative L2 at the horizon"}
#: Per test member sums of the horizon: the last step's rollout_sq_err and sq_truth.
HORIZON_SUMS = ("horizon_sq_err", "horizon_sq_truth")


def member_sums(evaluation: pd.DataFrame, *, horizon: bool = False) -> pd.DataFrame:
    """Per test member, the sums every statistic pools (:data:`SUMS`): samples ``n``, ``mse_sum``,
    ``sq_err``, ``sq_truth`` and, for an autoregressive model (columns rollout_mse and
    rollout_sq_err), ``rollout_mse_sum`` and ``rollout_sq_err`` (NaN for a direct model).

    ``horizon``: also :data:`HORIZON_SUMS`, the rollout_sq_err and sq_truth of the member's last
    step (its row of the largest ``step``); horizon_sq_err is NaN for a direct model."""
    g = evaluation.groupby("member", sort=True)
    out = pd.DataFrame({"n": g.size(), "mse_sum": g["mse"].sum(), "sq_err": g["sq_err"].sum(),
                        "sq_truth": g["sq_truth"].sum()})
    rollout = {"rollout_mse_sum": "rollout_mse", "rollout_sq_err": "rollout_sq_err"}
    for name, col in rollout.items():
        out[name] = g[col].sum() if col in evaluation else np.nan
    if horizon:
        last = evaluation.loc[g["step"].idxmax()].set_index("member").sort_index()
        out["horizon_sq_err"] = last["rollout_sq_err"] if "rollout_sq_err" in evaluation else np.nan
        out["horizon_sq_truth"] = last["sq_truth"]
    return out.reset_index()


def pooled_stats(sums: Mapping[str, np.ndarray], weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The statistics of :data:`STATS` pooled over members: ``sums`` maps each of :data:`SUMS` to
    an array [..., members] (and, where it has :data:`HORIZON_SUMS`, :data:`HORIZON` too);
    ``weights`` [resamples, members] (bootstrap counts) or None (each member once). Returns arrays
    [..., resamples] (or [...])."""

    def total(name):
        x = np.asarray(sums[name], dtype=float)
        return x.sum(-1) if weights is None else np.einsum("...m,bm->...b", x, weights)

    n, sq_truth = total("n"), total("sq_truth")
    out = {"test_mse": total("mse_sum") / n, "test_rel_l2": np.sqrt(total("sq_err") / sq_truth),
           "rollout_mse": total("rollout_mse_sum") / n, "rollout_rel_l2": np.sqrt(total("rollout_sq_err") / sq_truth)}
    if all(k in sums for k in HORIZON_SUMS):  # the rollout study's sums
        out["horizon_rel_l2"] = np.sqrt(total("horizon_sq_err") / total("horizon_sq_truth"))
    return out


def bootstrap_weights(rng: np.random.Generator, members: int, resamples: int) -> np.ndarray:
    """Percentile-bootstrap counts [resamples, members]: each resample draws ``members`` test
    members with replacement."""
    return rng.multinomial(members, np.full(members, 1.0 / members), size=resamples).astype(float)


def std(x: np.ndarray) -> float:
    """The standard deviation over seeds; NaN for one seed (no spread)."""
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def pm(mean: float, spread: float, mean_format: str = ".3e", spread_format: str = ".1e") -> str:
    """``mean +- spread`` for a table; the mean alone where there is no spread (one seed)."""
    if math.isnan(spread):
        return format(mean, mean_format)
    return f"{format(mean, mean_format)} +- {format(spread, spread_format)}"


def arm_config(folder: str | Path) -> dict[str, Any]:
    """A trained arm's config.yaml (with every default filled in), or {} where it has none."""
    path = Path(folder) / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def arm_row(folder: str | Path, *, horizon: bool = False, **key: Any) -> tuple[dict[str, Any], pd.DataFrame]:
    """The errors and training of a trained arm's folder (evaluation.csv, metrics.csv, and
    config.yaml and ledger.csv where present) as one table row, starting with ``key`` (the run's
    fields), and its per test member sums (:func:`member_sums`, with ``key``'s columns).

    ``horizon``: the row also has ``horizon_rel_l2`` and ``horizon_step`` (the last step), and the
    sums :data:`HORIZON_SUMS`."""
    folder = Path(folder)
    evaluation = pd.read_csv(folder / "evaluation.csv")
    sums = member_sums(evaluation, horizon=horizon)
    metrics = pd.read_csv(folder / "metrics.csv")
    trainer = arm_config(folder).get("trainer", {})
    last = metrics.iloc[-1]
    batches, train_s = int(last["batch"]), float(last["wall_s"])
    per_batch = trainer.get("batch_size", np.nan) * trainer.get("world_size", 1)
    ledger = folder / "ledger.csv"
    members = int((pd.read_csv(ledger)["status"] == "complete").sum()) if ledger.exists() else np.nan
    stats = pooled_stats({k: sums[k].to_numpy() for k in (*SUMS, *(HORIZON_SUMS if horizon else ()))})
    row = {**key, "sample": trainer.get("sample", "direct"), "test_members": len(sums),
           "test_samples": int(sums["n"].sum()), **{k: float(v) for k, v in stats.items()},
           "batches": batches, "train_s": train_s, "batches_per_s": batches / max(train_s, 1e-9),
           "samples_per_s": batches * per_batch / max(train_s, 1e-9), "members": members,
           "val_loss_final": float(last["val_loss"])}
    if horizon:
        row["horizon_step"] = int(evaluation["step"].max())
    return row, sums.assign(**key)
