"""The fully connected surrogate of the reference papers: (parameters, t) -> every field."""

from __future__ import annotations

import math

import torch
from torch import nn


class FullyConnected(nn.Module):
    """Linear(in, hidden)-ReLU-[Linear(hidden, hidden)-ReLU] x (layers-1)-Linear(hidden, n_fields*ny*nx).

    With the defaults (hidden=256, layers=2) this is the reference network.

    Args:
        in_dim: inputs per sample (parameters + time).
        out_shape: (n_fields, ny, nx), the shape of one sample.
        hidden: width of the hidden layers.
        layers: number of hidden layers (>= 1).
    """

    def __init__(self, *, in_dim: int, out_shape: tuple[int, ...], hidden: int = 256, layers: int = 2):
        super().__init__()
        if layers < 1 or hidden < 1:
            raise ValueError(f"layers and hidden must be >= 1, got layers={layers}, hidden={hidden}")
        self.out_shape = tuple(out_shape)
        dims = [in_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        blocks.append(nn.Linear(hidden, math.prod(self.out_shape)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, in_dim] -> [batch, n_fields, ny, nx]."""
        return self.net(x).view(x.shape[0], *self.out_shape)
