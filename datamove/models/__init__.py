"""Surrogate models: a name-to-class registry, so that config says ``model: fc`` or ``model: fno``.

Every network maps normalised inputs x [batch, in_dim] (and, built with ``in_fields > 0``, the
fields of a step [batch, in_fields, ny, nx]: ``forward(x, fields)``) to normalised samples
[batch, n_fields, ny, nx]; :class:`~datamove.models.surrogate.Surrogate` adds the normalisation and
is what gets trained, checkpointed and evaluated. docs/models.md compares them.

- ``fc``: fully connected, the reference papers' network (:mod:`datamove.models.fc`).
- ``fno``: Fourier Neural Operator (:mod:`datamove.models.fno`).
- ``mppde``: message-passing PDE solver over the grid's graph (:mod:`datamove.models.mppde`).
- ``unet``: a small U-Net (:mod:`datamove.models.unet`).
"""

from __future__ import annotations

from torch import nn

from datamove.models.fc import FullyConnected
from datamove.models.fno import FNO
from datamove.models.mppde import MPPDE
from datamove.models.surrogate import Surrogate
from datamove.models.unet import UNet

MODELS: dict[str, type[nn.Module]] = {"fc": FullyConnected, "fno": FNO, "mppde": MPPDE, "unet": UNet}


def build_network(name: str, *, in_dim: int, out_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """``MODELS[name](in_dim=, out_shape=, **kwargs)``; a ValueError naming the model and its
    trainer.model_args when they do not fit it."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})") from None
    try:
        return cls(in_dim=in_dim, out_shape=tuple(out_shape), **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad trainer.model_args {dict(kwargs)} for model '{name}': {exc}") from None


__all__ = ["FNO", "MODELS", "MPPDE", "FullyConnected", "Surrogate", "UNet", "build_network"]
