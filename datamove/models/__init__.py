"""Surrogate models: a name-to-class registry, so that config says ``model: fc``.

Every network maps normalised inputs [batch, in_dim] to normalised samples [batch, n_fields, ny, nx];
:class:`~datamove.models.surrogate.Surrogate` adds the normalisation and is what gets trained,
checkpointed and evaluated.
"""

from __future__ import annotations

from torch import nn

from datamove.models.fc import FullyConnected
from datamove.models.surrogate import Surrogate

MODELS: dict[str, type[nn.Module]] = {"fc": FullyConnected}


def build_network(name: str, *, in_dim: int, out_shape: tuple[int, ...], **kwargs) -> nn.Module:
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})") from None
    try:
        return cls(in_dim=in_dim, out_shape=tuple(out_shape), **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad trainer.model_args for model '{name}': {exc}") from None


__all__ = ["MODELS", "FullyConnected", "Surrogate", "build_network"]
