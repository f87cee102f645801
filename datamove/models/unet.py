"""A small U-Net (Ronneberger et al. 2015; as a PDE surrogate, Gupta and Brandstetter 2022).

Written by hand: it is a few standard torch layers, no library needed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from datamove.models.inputs import GridInputs, check_int, check_sample_shape


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by GroupNorm and GELU: [B, c_in, h, w] -> [B, c_out, h, w]."""

    def norm(c: int) -> nn.GroupNorm:
        # Group norm, not batch norm: batches are small and drawn from a reservoir of mixed members.
        return nn.GroupNorm(min(8, c), c)

    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), norm(c_out), nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), norm(c_out), nn.GELU(),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections over ``levels`` halvings of the grid.

    x [batch, in_dim] (+ fields [batch, in_fields, ny, nx]) -> [batch, n_fields, ny, nx].

    The inputs become channels over the grid (:class:`~datamove.models.inputs.GridInputs`: x
    broadcast as in_dim constant channels, two coordinate channels y and x in [0, 1], then the
    fields). The grid is padded (replicating its edges) on the bottom and right up to a multiple of
    2**levels, and the output cropped back, so any ny, nx works. Level k has ``width * 2**k``
    channels: a conv block, 2x2 max-pooling down; at the bottom a conv block; up: a 2x2 transposed
    convolution, concatenation with the level's skip, a conv block; a 1x1 convolution to n_fields.

    Defaults (width=16, levels=3): 484,161 parameters at 64x64, one field, in_dim 6 (the count does
    not depend on the grid).

    Args:
        in_dim: inputs per sample (parameters + time).
        out_shape: (n_fields, ny, nx), the shape of one sample.
        width: channels of the first level.
        levels: halvings of the grid (0: one conv block at full resolution, no skip).
        in_fields: fields of a step given with x (autoregressive samples); 0: none.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_shape: tuple[int, ...],
        width: int = 16,
        levels: int = 3,
        in_fields: int = 0,
    ):
        super().__init__()
        n_fields, ny, nx = check_sample_shape(out_shape)
        check_int("width", width)
        check_int("levels", levels, minimum=0)
        if levels > 8:
            raise ValueError(f"levels must be <= 8 (a grid of 256x256 points per coarsest cell), got {levels}")
        self.out_shape = (n_fields, ny, nx)
        self.inputs = GridInputs(in_dim=in_dim, in_fields=in_fields, grid=(ny, nx))
        chans = [width * 2**k for k in range(levels + 1)]
        ins = [self.inputs.channels] + chans
        self.down = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip(ins, chans[:-1]))
        self.bottom = _block(chans[-2] if levels else self.inputs.channels, chans[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in reversed(chans[1:]))
        self.merge = nn.ModuleList(_block(c, c // 2) for c in reversed(chans[1:]))
        self.out = nn.Conv2d(width, n_fields, 1)

    def forward(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim], fields [batch, in_fields, ny, nx] or None -> [batch, n_fields, ny, nx]."""
        _, ny, nx = self.out_shape
        h = self.inputs(x, fields)
        multiple = 2 ** len(self.down)
        pad_y, pad_x = -ny % multiple, -nx % multiple
        if pad_y or pad_x:
            h = F.pad(h, (0, pad_x, 0, pad_y), mode="replicate")
        skips = []
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottom(h)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            h = merge(torch.cat([up(h), skip], dim=1))
        return self.out(h)[..., :ny, :nx]
