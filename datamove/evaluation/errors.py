"""Test errors of a trained surrogate: MSE and relative L2, per sample, then per step, member, overall.

Definitions (the same for every arm):

- ``mse``: mean squared error on the normalised scale, the scale of the training and validation
  losses (each field divided by its span, :meth:`datamove.problems.Problem.normalisation`), over
  every field of a sample; ``mse:<field>`` the same for one field.
- ``rel_l2``: relative L2 error in physical units, ``||prediction - truth|| / ||truth||``, over every
  field of a sample. Aggregates over several samples pool the sums (``sqrt(sum err^2 / sum truth^2)``),
  so they weigh every grid point alike.
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
from datamove.training.inputs import direct_inputs


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
    for m in load_members(cfg, folder, sampling, missing=missing):
        truth = torch.from_numpy(m.fields).to(device, torch.float64)  # [n_steps, n_fields, ny, nx]
        pred = model(direct_inputs(m.params, m.times).to(device)).to(torch.float64)
        err = pred - truth
        sq_err_field = err.square().flatten(2).sum(2)  # [n_steps, n_fields]
        sq_err = sq_err_field.sum(1)
        sq_truth = truth.square().flatten(1).sum(1)
        n_points = truth[0].numel()
        mse_field = sq_err_field / (n_points / len(fields)) / span.to(device) ** 2  # normalised, per field
        frame = pd.DataFrame({
            "arm": arm,
            "member": m.member,
            "step": np.arange(1, len(m.times) + 1),  # 1-based, as the solver numbers its steps
            "time": m.times,
            **{name: value for name, value in zip(sampling.names, m.params)},
            "mse": mse_field.mean(1).cpu().numpy(),
            **({f"mse:{name}": mse_field[:, i].cpu().numpy() for i, name in enumerate(fields)} if len(fields) > 1 else {}),
            "rel_l2": (sq_err / sq_truth).sqrt().cpu().numpy(),
            "sq_err": sq_err.cpu().numpy(),
            "sq_truth": sq_truth.cpu().numpy(),
            "n_points": n_points,
        })
        rows.append(frame)
        if m.member == map_member:
            maps.append(_maps(arm, m.member, fields[map_field], m.times, truth[:, map_field], pred[:, map_field], map_max_side))
    return pd.concat(rows, ignore_index=True), pd.concat(maps, ignore_index=True) if maps else pd.DataFrame()


def _maps(arm: str, member: int, field_name: str, times, truth: torch.Tensor, pred: torch.Tensor, max_side: int) -> pd.DataFrame:
    """Maps of one field: truth and pred [n_steps, ny, nx]."""
    ny, nx = truth.shape[1:]
    sy, sx = -(-ny // max_side), -(-nx // max_side)  # strides: at most max_side points a side
    iy, ix = np.meshgrid(np.arange(0, ny, sy), np.arange(0, nx, sx), indexing="ij")
    out = []
    for k in map_steps(len(times)):
        fields = {"truth": truth[k], "prediction": pred[k], "error": pred[k] - truth[k]}
        for kind, field in fields.items():
            values = field[::sy, ::sx].cpu().numpy()
            out.append(pd.DataFrame({
                "arm": arm, "member": member, "field": field_name, "step": k + 1, "time": float(times[k]), "kind": kind,
                "iy": iy.ravel(), "ix": ix.ravel(), "value": values.ravel(),
            }))
    return pd.concat(out, ignore_index=True)


def pooled(errors: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """MSE and relative L2 pooled over the samples of each group (overall when ``by`` is empty).

    Every sample has the same number of points, so the pooled normalised MSE is the mean of the
    samples' MSEs; the pooled relative L2 is ``sqrt(sum sq_err / sum sq_truth)``.
    """
    by = list(by)
    grouped = errors.groupby(by if by else np.zeros(len(errors), dtype=int), sort=True)
    out = pd.DataFrame({
        "mse": grouped["mse"].mean(),
        "rel_l2": np.sqrt(grouped["sq_err"].sum() / grouped["sq_truth"].sum()),
        "samples": grouped.size(),
    })
    return out.reset_index(drop=not by)
