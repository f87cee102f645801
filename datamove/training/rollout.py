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
        model: built with ``history`` h, ``bundle`` K and ``stride`` s (:attr:`Surrogate.warmup`
            = h s true steps to start from).
        x: [n_steps, in_dim] raw inputs of each step of one member (parameters, t_k); or [M,
            n_steps, in_dim] for M members rolled out together (each model call takes every member's).
        first: [h s, n_fields, ny, nx] the member's first h s true steps (raw); or [M, h s, ...].

    Returns:
        [n_steps, n_fields, ny, nx] (or [M, n_steps, n_fields, ny, nx]): ``first``, then every later
        step predicted from predictions. The steps s apart form s chains (k, k + s, ...); a call
        advances every chain of every member by K steps, from the last h steps of each (its input
        time that of the last of them), so K s steps a call.
    """
    if x.dim() == 2:
        return rollout(model, x[None], first[None])[0]
    s, h, K, nf = model.stride, model.history, model.bundle, model.n_fields
    warm = h * s
    n_members, n_steps = x.shape[:2]
    step_shape = first.shape[2:]
    grid = step_shape[1:]
    out = torch.empty((n_members, n_steps, *step_shape), dtype=first.dtype, device=first.device)
    out[:, :warm] = first
    history = torch.arange(-h, 0, device=x.device) * s  # offsets of a chain's input steps
    ahead = torch.arange(K, device=x.device) * s  # offsets of the steps a call predicts
    for k in range(warm, n_steps, K * s):
        chains = torch.arange(k, min(k + s, n_steps), device=x.device)  # each chain's next step
        c = len(chains)
        inputs = chains[:, None] + history[None, :]  # [c, h]
        fields = out[:, inputs].reshape(n_members * c, h * nf, *grid)
        pred = model(x[:, inputs[:, -1]].reshape(n_members * c, -1), fields=fields)
        pred = pred.to(out.dtype).reshape(n_members, c, K, *step_shape)
        targets = chains[:, None] + ahead[None, :]  # [c, K]
        keep = targets < n_steps  # the last call may predict past the horizon
        out[:, targets[keep]] = pred[:, keep]
    return out


@torch.no_grad()
def one_step(model: Surrogate, x: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
    """One-step predictions of a member: step k (k >= h s) predicted from its h true steps before
    it, the first of the K steps that call predicts.

    Args:
        x: [n_steps, in_dim] raw inputs; fields: [n_steps, n_fields, ny, nx] the true steps (raw).

    Returns:
        [n_steps - h s, n_fields, ny, nx], the predictions of steps h s.. n_steps - 1 (0-based).
    """
    s, h, nf = model.stride, model.history, model.n_fields
    n_steps = fields.shape[0]
    steps = torch.arange(h * s, n_steps, device=x.device)
    inputs = steps[:, None] + torch.arange(-h, 0, device=x.device)[None, :] * s  # [n, h]
    pred = model(x[inputs[:, -1]], fields=fields[inputs].flatten(1, 2))
    return pred[:, :nf]


@torch.no_grad()
def rollout_rel_l2(model: Surrogate, x: torch.Tensor, fields: torch.Tensor) -> tuple[float, float]:
    """Relative L2 errors of the rollouts of M members from their first h s true steps, pooled over
    the members (as :func:`datamove.evaluation.errors.pooled` pools ``rollout_rel_l2``): at the last step (the horizon), and
    over every predicted step.

    Args:
        x: [M, n_steps, in_dim] raw inputs; fields: [M, n_steps, n_fields, ny, nx] the true steps (raw).
    """
    s = model.warmup
    pred = rollout(model, x, fields[:, :s])[:, s:].to(torch.float64)
    truth = fields[:, s:].to(torch.float64)
    sq_err = (pred - truth).square().flatten(2).sum(2)  # [M, n_steps - s]
    sq_truth = truth.square().flatten(2).sum(2)
    horizon = (sq_err[:, -1].sum() / sq_truth[:, -1].sum()).sqrt()
    whole = (sq_err.sum() / sq_truth.sum()).sqrt()
    return float(horizon), float(whole)
