"""A network wrapped with the normalisation of its inputs and outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Surrogate(nn.Module):
    """Maps raw inputs (parameters, t) to raw fields, through a network working on [0, 1] scales.

    Inputs are scaled by their configured ranges (parameters) and [0, t_end] (time); fields by the
    lowest and highest temperature any parameter can take, which bound the solution (maximum
    principle). Losses are computed on the normalised scale so that they read alike across studies.

    Args:
        network: maps [batch, in_dim] to [batch, ny, nx].
        x_low, x_high: [in_dim] bounds of the inputs.
        y_low, y_high: scalar bounds of the field.
    """

    def __init__(
        self,
        *,
        network: nn.Module,
        x_low: Sequence[float],
        x_high: Sequence[float],
        y_low: float,
        y_high: float,
    ):
        super().__init__()
        self.network = network
        x_low_t = torch.as_tensor(x_low, dtype=torch.float32)
        span = torch.as_tensor(x_high, dtype=torch.float32) - x_low_t
        # A parameter held fixed (low == high) carries no information; avoid dividing by zero.
        self.register_buffer("x_low", x_low_t)
        self.register_buffer("x_span", torch.where(span > 0, span, torch.ones_like(span)))
        self.register_buffer("y_low", torch.tensor(float(y_low)))
        self.register_buffer("y_span", torch.tensor(max(float(y_high) - float(y_low), 1e-12)))

    def normalise_y(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_low) / self.y_span

    def forward_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, in_dim] raw -> normalised field [batch, ny, nx]."""
        return self.network((x - self.x_low) / self.x_span)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, in_dim] raw -> field [batch, ny, nx] in physical units."""
        return self.forward_normalised(x) * self.y_span + self.y_low
