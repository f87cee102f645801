"""A model for DATAMOVE that is not one of its own: a residual convolutional network.

DATAMOVE's model interface (its docs/models.md, "Your own model"): the constructor takes
``in_dim``, ``out_shape`` = (n_out, ny, nx) and ``in_fields`` as keywords, with its own arguments
(trainer.model_args); ``forward(x, fields=None)`` maps x [batch, in_dim] (a member's parameters and
t, normalised) and, for autoregressive samples, fields [batch, in_fields, ny, nx] to
[batch, n_out, ny, nx].
"""

from __future__ import annotations

import torch
from torch import nn


class ResConv(nn.Module):
    """x as constant channels (and the input fields), ``blocks`` residual 3x3 conv blocks of
    ``width`` channels with periodic padding, a 1x1 convolution to the n_out fields."""

    def __init__(self, *, in_dim: int, out_shape, in_fields: int = 0, width: int = 16, blocks: int = 2):
        super().__init__()
        if width < 1 or blocks < 0:
            raise ValueError(f"width must be >= 1 and blocks >= 0, got width={width}, blocks={blocks}")
        n_out, self.ny, self.nx = (int(n) for n in out_shape)
        self.lift = nn.Conv2d(in_dim + in_fields, width, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, padding_mode="circular"), nn.GELU(),
                          nn.Conv2d(width, width, 3, padding=1, padding_mode="circular"))
            for _ in range(blocks)
        )
        self.project = nn.Conv2d(width, n_out, 1)

    def forward(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim], fields [batch, in_fields, ny, nx] or None -> [batch, n_out, ny, nx]."""
        h = x[:, :, None, None].expand(-1, -1, self.ny, self.nx)
        if fields is not None:
            h = torch.cat([h, fields], dim=1)
        h = self.lift(h)
        for block in self.blocks:
            h = h + block(h)
        return self.project(torch.nn.functional.gelu(h))
