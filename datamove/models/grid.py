"""Any grid network as a DATAMOVE model (``trainer.model: grid:package.module:ClassName``).

A grid network maps channels over the grid to channels over the grid, [batch, c_in, ny, nx] ->
[batch, c_out, ny, nx] (a neuraloperator FNO, a U-Net of a segmentation library, a
``torch.nn.Conv2d``). :class:`GridNetwork` gives it DATAMOVE's model interface: it builds the grid
inputs (:class:`~datamove.models.inputs.GridInputs`: a sample's parameters and t as constant
channels, the two coordinate channels, then the input steps' fields) and passes the channel counts to
the class under the names it takes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from datamove.models.inputs import GridInputs, check_sample_shape


class GridNetwork(nn.Module):
    """``network`` (a class) built with c_in = in_dim + 2 + in_fields input channels and c_out =
    n_fields output channels, on the grid inputs.

    x [batch, in_dim] (+ fields [batch, in_fields, ny, nx]) -> [batch, n_fields, ny, nx].

    Args:
        network: the grid network's class (or any callable that returns the module).
        in_dim: inputs per sample (parameters + time).
        out_shape: (n_fields, ny, nx), the shape of one sample.
        in_fields: fields of the input steps (autoregressive samples); 0: none.
        in_channels_as, out_channels_as: the names under which ``network`` takes c_in and c_out
            (``in_channels``, ``out_channels``: torch.nn.Conv2d's and neuraloperator's names).
        **kwargs: the rest of trainer.model_args, handed to ``network`` as they are.
    """

    def __init__(self, *, network, in_dim: int, out_shape: tuple[int, ...], in_fields: int = 0,
                 in_channels_as: str = "in_channels", out_channels_as: str = "out_channels", **kwargs: Any):
        super().__init__()
        n_fields, ny, nx = check_sample_shape(out_shape)
        self.out_shape = (n_fields, ny, nx)
        self.inputs = GridInputs(in_dim=in_dim, in_fields=in_fields, grid=(ny, nx))
        for name in (in_channels_as, out_channels_as):
            if name in kwargs:
                raise ValueError(f"{name} is the channel count DATAMOVE gives the network: leave it out of "
                                 f"trainer.model_args")
        self.net = network(**{in_channels_as: self.inputs.channels, out_channels_as: n_fields}, **kwargs)
        if not isinstance(self.net, nn.Module):
            raise ValueError(f"{network!r} built a {type(self.net).__name__}, not a torch.nn.Module")

    def forward(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim], fields [batch, in_fields, ny, nx] or None -> [batch, n_fields, ny, nx]."""
        h = self.inputs(x, fields)  # [batch, c_in, ny, nx]
        out = self.net(h)
        expected = (x.shape[0], *self.out_shape)
        if tuple(out.shape) != expected:
            raise ValueError(f"the grid network returned {list(out.shape)} for inputs {list(h.shape)}, "
                             f"expected {list(expected)}")
        return out
