"""An autoregressive surrogate rolled out as a solver, from a member's first true steps.

Here, in the training layer, so that the trainer's rollout validation (``trainer.val_rollout_every``,
:meth:`datamove.training.loop.Training.rollout_columns`) and evaluation
(:func:`datamove.evaluation.errors.evaluate_members`) roll out the same way.
"""

from __future__ import annotations

import torch

from datamove.models import Surrogate


@torch.no_grad()
def rollout(model: Surrogate, x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """An autoregressive surrogate used as a solver: every step predicted from its own predictions.

    Args:
        model: built with ``in_fields`` and ``stride`` s.
        x: [n_steps, in_dim] raw inputs of each step of one member (parameters, t_k); or [M,
            n_steps, in_dim] for M members rolled out together (each model call takes every member's).
        first: [s, n_fields, ny, nx] the member's first s true steps (raw); or [M, s, n_fields, ny, nx].

    Returns:
        [n_steps, n_fields, ny, nx] (or [M, n_steps, n_fields, ny, nx]): ``first``, then step k
        (0-based, k >= s) predicted from the prediction of step k - s. s steps at a time: the chains
        that start at each of the first s steps advance together.
    """
    if x.dim() == 2:
        return rollout(model, x[None], first[None])[0]
    s = model.stride
    n_members, n_steps = x.shape[:2]
    step_shape = first.shape[2:]
    out = torch.empty((n_members, n_steps, *step_shape), dtype=first.dtype, device=first.device)
    out[:, :s] = first
    for k in range(s, n_steps, s):
        n = min(s, n_steps - k)
        pred = model(x[:, k - s : k - s + n].reshape(n_members * n, -1),
                     fields=out[:, k - s : k - s + n].reshape(n_members * n, *step_shape))
        out[:, k : k + n] = pred.to(out.dtype).reshape(n_members, n, *step_shape)
    return out


@torch.no_grad()
def rollout_rel_l2(model: Surrogate, x: torch.Tensor, fields: torch.Tensor) -> tuple[float, float]:
    """Relative L2 errors of the rollouts of M members from their first s true steps, pooled over
    the members (as :func:`datamove.evaluation.errors.pooled` pools ``rollout_rel_l2``): at the last step (the horizon), and
    over every predicted step (s+1..n).

    Args:
        x: [M, n_steps, in_dim] raw inputs; fields: [M, n_steps, n_fields, ny, nx] the true steps (raw).
    """
    s = model.stride
    pred = rollout(model, x, fields[:, :s])[:, s:].to(torch.float64)
    truth = fields[:, s:].to(torch.float64)
    sq_err = (pred - truth).square().flatten(2).sum(2)  # [M, n_steps - s]
    sq_truth = truth.square().flatten(2).sum(2)
    horizon = (sq_err[:, -1].sum() / sq_truth[:, -1].sum()).sqrt()
    whole = (sq_err.sum() / sq_truth.sum()).sqrt()
    return float(horizon), float(whole)
