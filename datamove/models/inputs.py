"""What every network of the registry takes in: checked constructor arguments, and its input tensors.

A *direct* sample's input is ``x`` [batch, in_dim] (a member's parameters, then t, normalised to
[0, 1]). An *autoregressive* one (future work) also carries the fields of step k, ``fields``
[batch, in_fields, ny, nx]. The grid models (fno, unet, mppde) see both as channels over the grid:
:class:`GridInputs`.
"""

from __future__ import annotations

from numbers import Integral

import torch
from torch import nn


def check_int(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; a ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_sample_shape(out_shape) -> tuple[int, int, int]:
    """(n_fields, ny, nx) of one sample, each >= 1."""
    shape = tuple(out_shape)
    if len(shape) != 3 or any(isinstance(n, bool) or not isinstance(n, Integral) or n < 1 for n in shape):
        raise ValueError(f"out_shape must be (n_fields, ny, nx) of positive integers, got {shape}")
    return tuple(int(n) for n in shape)


def check_fields(fields: torch.Tensor | None, *, in_fields: int, batch: int, grid: tuple[int, ...]) -> None:
    """``fields`` must be [batch, in_fields, ny, nx] when the network takes fields, and None otherwise."""
    if in_fields == 0:
        if fields is not None:
            raise ValueError("fields given to a network built with in_fields=0")
        return
    expected = (batch, in_fields, *grid)
    if fields is None:
        raise ValueError(f"this network takes fields {list(expected)} (in_fields={in_fields}); got none")
    if tuple(fields.shape) != expected:
        raise ValueError(f"fields must be {list(expected)}, got {list(fields.shape)}")


class GridInputs(nn.Module):
    """The channels a grid model works on: x broadcast as constant channels, the grid's coordinates,
    then the fields.

    x [batch, in_dim], fields [batch, in_fields, ny, nx] or None
    -> [batch, in_dim + 2 + in_fields, ny, nx]; the two coordinate channels are y and x, each from 0
    at the first node to 1 at the last (0 on an axis of one node).
    """

    def __init__(self, *, in_dim: int, in_fields: int, grid: tuple[int, int]):
        super().__init__()
        self.in_dim = check_int("in_dim", in_dim)
        self.in_fields = check_int("in_fields", in_fields, minimum=0)
        self.grid = tuple(grid)
        ny, nx = self.grid
        yy, xx = torch.meshgrid(_unit(ny), _unit(nx), indexing="ij")
        # Not persistent: rebuilt from the shape, so that checkpoints hold weights only.
        self.register_buffer("coords", torch.stack([yy, xx])[None], persistent=False)

    @property
    def channels(self) -> int:
        return self.in_dim + 2 + self.in_fields

    def forward(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[0]
        check_fields(fields, in_fields=self.in_fields, batch=batch, grid=self.grid)
        parts = [
            x[:, :, None, None].expand(-1, -1, *self.grid),
            self.coords.to(x.dtype).expand(batch, -1, -1, -1),
        ]
        if fields is not None:
            parts.append(fields.to(x.dtype))
        return torch.cat(parts, dim=1)


def _unit(n: int) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, n) if n > 1 else torch.zeros(1)


def n_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
