"""The fully connected surrogate of the reference papers: (parameters, t) -> every field."""

from __future__ import annotations

import math

import torch
from torch import nn

from datamove.models.inputs import check_fields, check_int


class FullyConnected(nn.Module):
    """Linear(in, hidden)-ReLU-[Linear(hidden, hidden)-ReLU] x (layers-1)-Linear(hidden, n_fields*ny*nx).

    With the defaults (hidden=256, layers=2) this is the reference network: 1,120,256 parameters
    for one 64x64 field and in_dim 6 (the last layer is most of them: it grows with the grid).

    x [batch, in_dim] (+ fields [batch, in_fields, ny, nx], flattened and appended to x when
    in_fields > 0) -> [batch, *out_shape].

    Args:
        in_dim: inputs per sample (parameters + time).
        out_shape: (n_fields, ny, nx), the shape of one sample.
        hidden: width of the hidden layers.
        layers: number of hidden layers (>= 1).
        in_fields: fields of a step given with x (autoregressive samples); 0: none.
    """

    def __init__(
        self, *, in_dim: int, out_shape: tuple[int, ...], hidden: int = 256, layers: int = 2, in_fields: int = 0
    ):
        super().__init__()
        check_int("hidden", hidden)
        check_int("layers", layers)
        self.in_fields = check_int("in_fields", in_fields, minimum=0)
        self.out_shape = tuple(out_shape)
        if in_fields and len(self.out_shape) != 3:
            raise ValueError(f"in_fields needs out_shape (n_fields, ny, nx), got {self.out_shape}")
        self.grid = self.out_shape[1:]
        dims = [check_int("in_dim", in_dim) + in_fields * math.prod(self.grid)] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        blocks.append(nn.Linear(hidden, math.prod(self.out_shape)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim], fields [batch, in_fields, ny, nx] or None -> [batch, n_fields, ny, nx]."""
        check_fields(fields, in_fields=self.in_fields, batch=x.shape[0], grid=self.grid)
        if fields is not None:
            x = torch.cat([x, fields.flatten(1).to(x.dtype)], dim=1)
        return self.net(x).view(x.shape[0], *self.out_shape)
