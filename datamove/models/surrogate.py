"""A network wrapped with the normalisation of its inputs and outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Surrogate(nn.Module):
    """Maps raw inputs (parameters, t) to raw fields, through a network working on [0, 1] scales.

    The bounds come from the problem (:meth:`datamove.problems.Problem.normalisation`): inputs by
    their ranges, each field by its own low and high. Losses are computed on the normalised scale so
    that they read alike across studies and fields.

    An autoregressive surrogate (``in_fields`` > 0) also takes the fields of a step, in physical
    units, normalised like its outputs; a stored sample's y then holds input and target fields
    stacked (:meth:`split`, see :mod:`datamove.problems.samples`).

    With ``delta_scale`` (``trainer.target: delta``, autoregressive only) the network predicts the
    change from its input fields on a per-field scale, and the surrogate adds it back: a prediction
    is ``fields + delta_scale * network(x, fields)``, a state as with ``target: state``, so that
    whatever calls the surrogate (validation, evaluation, rollout, figures) sees no difference.

    Args:
        network: maps [batch, in_dim] (and fields [batch, in_fields, ny, nx]) to [batch, n_fields, ny, nx].
        x_low, x_high: [in_dim] bounds of the inputs.
        y_low, y_high: [n_fields] bounds of each field (a scalar: one field).
        in_fields: fields of a step the network takes (0: direct samples; else n_fields).
        stride: autoregressive samples: steps from the input fields to the target (0: direct).
        delta_scale: [n_fields] the scale of a field's change over ``stride`` steps (raw units,
            :func:`datamove.training.step.delta_scale`): the network then predicts changes; None:
            states.
    """

    def __init__(
        self,
        *,
        network: nn.Module,
        x_low: Sequence[float],
        x_high: Sequence[float],
        y_low: Sequence[float] | float,
        y_high: Sequence[float] | float,
        in_fields: int = 0,
        stride: int = 0,
        delta_scale: Sequence[float] | None = None,
    ):
        super().__init__()
        self.network = network
        self.in_fields, self.stride = int(in_fields), int(stride)
        x_low_t = torch.as_tensor(x_low, dtype=torch.float32)
        span = torch.as_tensor(x_high, dtype=torch.float32) - x_low_t
        # A parameter held fixed (low == high) carries no information; avoid dividing by zero.
        self.register_buffer("x_low", x_low_t)
        self.register_buffer("x_span", torch.where(span > 0, span, torch.ones_like(span)))
        # [n_fields, 1, 1]: broadcast over a sample's grid, one scale per field.
        y_low_t = torch.as_tensor(y_low, dtype=torch.float32).reshape(-1, 1, 1)
        y_span = torch.as_tensor(y_high, dtype=torch.float32).reshape(-1, 1, 1) - y_low_t
        self.register_buffer("y_low", y_low_t)
        self.register_buffer("y_span", torch.clamp(y_span, min=1e-12))
        if self.in_fields not in (0, y_low_t.shape[0]):
            raise ValueError(f"in_fields must be 0 or the {y_low_t.shape[0]} field(s) of a sample, got {in_fields}")
        self.delta = delta_scale is not None
        if self.delta:
            if not self.in_fields:
                raise ValueError("delta targets need autoregressive samples (in_fields > 0): a change from what?")
            scale = torch.as_tensor(delta_scale, dtype=torch.float32).reshape(-1, 1, 1)
            if scale.shape[0] != y_low_t.shape[0] or not bool(torch.all(scale > 0)):
                raise ValueError(f"delta_scale must hold one positive scale per field, got {list(delta_scale)}")
            self.register_buffer("delta_scale", scale)  # [n_fields, 1, 1]

    def normalise_y(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_low) / self.y_span

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A stored sample's y [B, (2 x) n_fields, ny, nx] -> (input fields or None, target), raw."""
        if not self.in_fields:
            return None, y
        return y[:, : self.in_fields], y[:, self.in_fields :]

    def network_output(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim] raw (and fields [batch, in_fields, ny, nx] raw) -> what the network
        predicts, [batch, n_fields, ny, nx]: the normalised state, or with delta targets the change
        from ``fields`` divided by ``delta_scale``."""
        xn = (x - self.x_low) / self.x_span
        if fields is None:
            return self.network(xn)
        return self.network(xn, self.normalise_y(fields))

    def network_target(self, fields: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        """What :meth:`network_output` should be for raw ``target`` [B, n_fields, ny, nx] reached
        from raw ``fields`` (the loss the train step minimises is the MSE of the two)."""
        if self.delta:
            return (target - fields) / self.delta_scale
        return self.normalise_y(target)

    def state_weight(self) -> torch.Tensor | None:
        """[n_fields, 1, 1] (delta_scale / y_span)^2: an error of the network output times this is
        the error on the normalised state scale (None: the two scales are one)."""
        return (self.delta_scale / self.y_span).square() if self.delta else None

    def forward_normalised(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim] raw (and fields [batch, in_fields, ny, nx] raw) -> normalised sample
        [batch, n_fields, ny, nx]."""
        out = self.network_output(x, fields)
        if self.delta:
            return self.normalise_y(fields) + out * (self.delta_scale / self.y_span)
        return out

    def forward(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim] raw (and fields [batch, in_fields, ny, nx] raw) -> sample
        [batch, n_fields, ny, nx] in physical units."""
        if self.delta:  # added in raw units: no round trip of the input through the normalised scale
            return fields + self.network_output(x, fields) * self.delta_scale
        return self.forward_normalised(x, fields) * self.y_span + self.y_low

    def sample_error(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Squared error on the normalised scale of stored samples: x [B, in_dim], y [B, (2 x)
        n_fields, ny, nx] raw -> [B, n_fields, ny, nx]."""
        fields, target = self.split(y)
        return (self.forward_normalised(x, fields) - self.normalise_y(target)).square()
