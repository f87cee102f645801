"""Test errors of a trained surrogate: MSE and relative L2, per sample, then per step, member, overall.

Definitions (the same for every arm):

- ``mse``: mean squared error on the normalised scale, the scale of the training and validation
  losses (each field divided by its span, :meth:`datamove.problems.Problem.normalisation`), over
  every field of a sample; ``mse:<field>`` the same for one field.
- ``rel_l2``: relative L2 error in physical units, ``||prediction - truth|| / ||truth||``, over every
  field of a sample. Aggregates over several samples pool the sums (``sqrt(sum err^2 / sum truth^2)``),
  so they weigh every grid point alike.

An autoregressive surrogate (``trainer.sample: autoregressive``, stride s, history h) predicts a
step from the h true steps before it, s apart: ``mse`` and ``rel_l2`` are that one-step error (the
first of a bundle's K steps), for steps h s + 1..n (the first h s steps are its inputs and get no
row; written s below). It is also rolled out from the member's first h s true steps,
each prediction the input of the next (:func:`rollout`): ``rollout_mse``, ``rollout_rel_l2`` and
``rollout_sq_err`` are the errors of that trajectory, whose growth with the step is the error
growth of the surrogate used as a solver.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from datamove.config import SamplingConfig, StudyConfig
from datamove.data import load_members
from datamove.models import Surrogate
from datamove.problems.samples import direct_inputs
from datamove.training.rollout import one_step, rollout  # here too: evaluation's rollouts are the trainer's


def map_steps(n_steps: int) -> list[int]:
    """The time steps whose maps are drawn: first, middle and last (0-based)."""
    return sorted({0, (n_steps - 1) // 2, n_steps - 1})


@torch.no_grad()
def evaluate_members(
    model: Surrogate,
    cfg: StudyConfig,
    *,
    arm: str,
    folder: str | Path | None = None,
    sampling: SamplingConfig | None = None,
    map_member: int | None = None,
    map_max_side: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Errors of ``model`` on every stored test member, and maps of one member.

    Returns:
        errors: one row per (member, step): arm, member, step, time, the member's parameters (one
            column each), mse (and mse:<field> with several fields), rel_l2, sq_err (sum of squared
            errors, physical), sq_truth (sum of squared truth), n_points (of every field).
        maps: one row per grid point of field ``evaluation.map_field`` (default: the first) of
            ``map_member`` at the steps of :func:`map_steps`: arm, member, field, step, time, kind
            (truth, prediction, error = prediction - truth), iy, ix, value; subsampled so that no side
            exceeds ``map_max_side`` points.
    """
    folder = cfg.test_dir if folder is None else folder
    sampling = cfg.test if sampling is None else sampling
    map_member = cfg.evaluation.map_member if map_member is None else map_member
    map_max_side = cfg.evaluation.map_max_side if map_max_side is None else map_max_side
    fields = cfg.problem.field_names
    map_field = fields.index(cfg.evaluation.map_field) if cfg.evaluation.map_field else 0
    device = next(model.parameters()).device
    model.eval()
    span = model.y_span.reshape(-1).to(torch.float64)  # [n_fields]
    rows, maps = [], []
    missing = "run `datamove make-testset --config ...`"
    s = getattr(model, "warmup", 0)  # autoregressive: the first h s steps (history x stride) are inputs only
    for m in load_members(cfg, folder, sampling, missing=missing):
        truth_all = torch.from_numpy(m.fields).to(device)  # [n_steps, n_fields, ny, nx]
        x = direct_inputs(m.params, m.times).to(device)
        if s:
            pred = one_step(model, x, truth_all).to(torch.float64)  # steps s+1..n, one step ahead
            rolled = rollout(model, x, truth_all[:s])[s:].to(torch.float64)
        else:
            pred, rolled = model(x).to(torch.float64), None
        truth = truth_all[s:].to(torch.float64)
        n_points = truth[0].numel()
        sq_truth = truth.square().flatten(1).sum(1)

        def errors(pred: torch.Tensor, prefix: str = "") -> dict[str, np.ndarray]:
            sq_err_field = (pred - truth).square().flatten(2).sum(2)  # [steps, n_fields]
            sq_err = sq_err_field.sum(1)
            mse_field = sq_err_field / (n_points / len(fields)) / span.to(device) ** 2  # normalised, per field
            return {
                f"{prefix}mse": mse_field.mean(1).cpu().numpy(),
                **({f"{prefix}mse:{name}": mse_field[:, i].cpu().numpy() for i, name in enumerate(fields)}
                   if len(fields) > 1 else {}),
                f"{prefix}rel_l2": (sq_err / sq_truth).sqrt().cpu().numpy(),
                f"{prefix}sq_err": sq_err.cpu().numpy(),
            }

        frame = pd.DataFrame({
            "arm": arm,
            "member": m.member,
            "step": np.arange(s + 1, len(m.times) + 1),  # 1-based, as the solver numbers its steps
            "time": m.times[s:],
            **{name: value for name, value in zip(sampling.names, m.params)},
            **errors(pred),  # mse (mse:<field>), rel_l2, sq_err
            "sq_truth": sq_truth.cpu().numpy(),
            "n_points": n_points,
            **(errors(rolled, "rollout_") if rolled is not None else {}),
        })
        rows.append(frame)
        if m.member == map_member:
            shown = pred if rolled is None else rolled  # an autoregressive model's maps: its rollout
            maps.append(_maps(arm, m.member, fields[map_field], m.times[s:], truth[:, map_field], shown[:, map_field],
                              map_max_side, first_step=s + 1))
    return pd.concat(rows, ignore_index=True), pd.concat(maps, ignore_index=True) if maps else pd.DataFrame()


def _maps(arm: str, member: int, field_name: str, times, truth: torch.Tensor, pred: torch.Tensor, max_side: int,
          *, first_step: int = 1) -> pd.DataFrame:
    """Maps of one field: truth and pred [n_steps, ny, nx], of steps first_step, first_step + 1, ..."""
    ny, nx = truth.shape[1:]
    sy, sx = -(-ny // max_side), -(-nx // max_side)  # strides: at most max_side points a side
    iy, ix = np.meshgrid(np.arange(0, ny, sy), np.arange(0, nx, sx), indexing="ij")
    out = []
    for k in map_steps(len(times)):
        fields = {"truth": truth[k], "prediction": pred[k], "error": pred[k] - truth[k]}
        for kind, field in fields.items():
            values = field[::sy, ::sx].cpu().numpy()
            out.append(pd.DataFrame({
                "arm": arm, "member": member, "field": field_name, "step": k + first_step, "time": float(times[k]),
                "kind": kind,
                "iy": iy.ravel(), "ix": ix.ravel(), "value": values.ravel(),
            }))
    return pd.concat(out, ignore_index=True)


def pooled(errors: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """MSE and relative L2 pooled over the samples of each group (overall when ``by`` is empty).

    Every sample has the same number of points, so the pooled normalised MSE is the mean of the
    samples' MSEs; the pooled relative L2 is ``sqrt(sum sq_err / sum sq_truth)``. With rollout
    columns (an autoregressive model), ``rollout_mse`` and ``rollout_rel_l2`` are pooled alike.
    """
    by = list(by)
    grouped = errors.groupby(by if by else np.zeros(len(errors), dtype=int), sort=True)
    out = pd.DataFrame({
        "mse": grouped["mse"].mean(),
        "rel_l2": np.sqrt(grouped["sq_err"].sum() / grouped["sq_truth"].sum()),
        "samples": grouped.size(),
    })
    if has_rollout(errors):
        out["rollout_mse"] = grouped["rollout_mse"].mean()
        out["rollout_rel_l2"] = np.sqrt(grouped["rollout_sq_err"].sum() / grouped["sq_truth"].sum())
    return out.reset_index(drop=not by)


def has_rollout(errors: pd.DataFrame) -> bool:
    """Whether an evaluation holds rollout errors (an autoregressive model's)."""
    return "rollout_mse" in errors.columns
