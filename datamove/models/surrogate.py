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

    Args:
        network: maps [batch, in_dim] to [batch, n_fields, ny, nx].
        x_low, x_high: [in_dim] bounds of the inputs.
        y_low, y_high: [n_fields] bounds of each field (a scalar: one field).
    """

    def __init__(
        self,
        *,
        network: nn.Module,
        x_low: Sequence[float],
        x_high: Sequence[float],
        y_low: Sequence[float] | float,
        y_high: Sequence[float] | float,
    ):
        super().__init__()
        self.network = network
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

    def normalise_y(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_low) / self.y_span

    def forward_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, in_dim] raw -> normalised sample [batch, n_fields, ny, nx]."""
        return self.network((x - self.x_low) / self.x_span)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, in_dim] raw -> sample [batch, n_fields, ny, nx] in physical units."""
        return self.forward_normalised(x) * self.y_span + self.y_low
