"""Surrogate models: a registry, so that config says ``model: fc`` or ``model: fno``, or names a
model from outside the package.

Every network maps normalised inputs x [batch, in_dim] (and, built with ``in_fields > 0``, the
fields of a step [batch, in_fields, ny, nx]: ``forward(x, fields)``) to normalised samples
[batch, n_fields, ny, nx]; :class:`~datamove.models.surrogate.Surrogate` adds the normalisation and
is what gets trained, checkpointed and evaluated. docs/models.md compares them.

- ``fc``: fully connected, the reference papers' network (:mod:`datamove.models.fc`).
- ``fno``: Fourier Neural Operator (:mod:`datamove.models.fno`).
- ``mppde``: message-passing PDE solver over the grid's graph (:mod:`datamove.models.mppde`).
- ``unet``: a small U-Net (:mod:`datamove.models.unet`).

``trainer.model`` also takes the name of an installed plug-in (entry point group
``datamove.models``), an import path ``package.module:ClassName`` of a class with the same
interface (docs/models.md, "Your own model"), or ``grid:package.module:ClassName``: any network of
[batch, c_in, ny, nx] -> [batch, c_out, ny, nx], wrapped by :class:`~datamove.models.grid.GridNetwork`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from datamove.models.fc import FullyConnected
from datamove.models.fno import FNO
from datamove.models.grid import GridNetwork
from datamove.models.mppde import MPPDE
from datamove.models.surrogate import Surrogate
from datamove.models.unet import UNet
from datamove.plugins import BUILTIN_MODELS, MODEL_GROUP, PluginError, is_import_path, load_path, names, resolve

MODELS: dict[str, type[nn.Module]] = {"fc": FullyConnected, "fno": FNO, "mppde": MPPDE, "unet": UNet}
assert tuple(MODELS) == BUILTIN_MODELS  # the names the config checks without importing torch

GRID = "grid:"
# What DATAMOVE passes to every model's constructor itself (not trainer.model_args).
GIVEN = ("in_dim", "out_shape", "in_fields")


def model_factory(name: str, *, key: str = "trainer.model") -> tuple[Callable[..., nn.Module], str]:
    """What builds model ``name`` (called with in_dim=, out_shape=, in_fields= and the
    model_args) and where it comes from; PluginError naming ``key`` when it cannot be found or is
    not a model class."""
    if name.startswith(GRID):
        path = name[len(GRID):]
        if not is_import_path(path):
            raise PluginError(f"key '{key}': {name!r}: after grid: comes an import path package.module:ClassName")
        network = load_path(path, key=key)
        if not callable(network):
            raise PluginError(f"key '{key}': {path!r} is a {type(network).__name__}, not a class")
        return functools.partial(GridNetwork, network=network), f"grid network {path}"
    found = resolve(name, group=MODEL_GROUP, key=key, builtins=MODELS)
    if not (isinstance(found.obj, type) and issubclass(found.obj, nn.Module)):
        raise PluginError(f"key '{key}': {name!r} ({found.origin}) is {found.obj!r}, not a torch.nn.Module class")
    return found.obj, found.origin


def model_arguments(name: str, *, model_args: dict[str, Any] | None = None,
                    key: str = "trainer.model") -> tuple[dict[str, Any], bool]:
    """The trainer.model_args model ``name`` takes, each with its default (``inspect.Parameter.empty``
    where it has none), and whether it takes any other (a ``**kwargs``). A grid network's are its
    class's, less the two channel counts (named by ``model_args``' in_channels_as and
    out_channels_as), plus those two."""
    factory, _ = model_factory(name, key=key)
    if isinstance(factory, functools.partial):  # a grid network
        args = dict(model_args or {})
        given = (args.get("in_channels_as", "in_channels"), args.get("out_channels_as", "out_channels"))
        takes, anything = _parameters(factory.keywords["network"])
        takes = {k: v for k, v in takes.items() if k not in given}
        return {**takes, "in_channels_as": "in_channels", "out_channels_as": "out_channels"}, anything
    takes, anything = _parameters(factory)
    return {k: v for k, v in takes.items() if k not in GIVEN}, anything


def _parameters(obj) -> tuple[dict[str, Any], bool]:
    """The keyword parameters of calling ``obj`` (a class: its constructor) with their defaults,
    and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some C types): anything goes
        return {}, True
    takes = {p.name: p.default for p in params
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return takes, any(p.kind is p.VAR_KEYWORD for p in params)


def build_network(name: str, *, in_dim: int, out_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Model ``name`` (see :func:`model_factory`) built with ``in_dim``, ``out_shape`` and the
    model_args ``kwargs``; a ValueError naming the model and its trainer.model_args when they do
    not fit it."""
    factory, _ = model_factory(name)
    try:
        return factory(in_dim=in_dim, out_shape=tuple(out_shape), **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad trainer.model_args {dict(kwargs)} for model '{name}': {exc}") from None


def check_model(name: str, model_args: dict[str, Any], *, in_dim: int, out_shape: tuple[int, int, int],
                in_fields: int) -> None:
    """Before any job: model ``name`` is found, takes ``model_args`` and what DATAMOVE gives it,
    builds, and maps a dry batch of 2 samples, x [2, in_dim] (+ fields [2, in_fields, ny, nx]), to
    [2, *out_shape]. PluginError, one line naming the key at fault, otherwise."""
    factory, origin = model_factory(name)
    where = f"model {name!r} ({origin})"
    if isinstance(factory, functools.partial):  # a grid network: DATAMOVE gives the channel counts
        for given in (model_args.get("in_channels_as", "in_channels"), model_args.get("out_channels_as", "out_channels")):
            if given in model_args:
                raise PluginError(f"key 'trainer.model_args': {given} is the channel count DATAMOVE gives the "
                                  f"network of {where}: leave it out")
    takes, anything = model_arguments(name, model_args=model_args)
    unknown = sorted(set(model_args) - set(takes))
    if unknown and not anything:
        raise PluginError(f"key 'trainer.model_args': {unknown} are not arguments of {where} "
                          f"(it takes {', '.join(sorted(takes)) or 'none'})")
    if not isinstance(factory, functools.partial):
        needs = [a for a in ("in_dim", "out_shape", *(("in_fields",) if in_fields else ()))]
        params, anything = _parameters(factory)
        missing = [a for a in needs if a not in params and not anything]
        if missing:
            raise PluginError(f"key 'trainer.model': {where} does not take {', '.join(missing)}: a model's "
                              f"constructor takes in_dim, out_shape and in_fields as keywords (docs/models.md)")
    try:
        network = factory(in_dim=in_dim, out_shape=tuple(out_shape), **({"in_fields": in_fields} if in_fields else {}),
                          **model_args)
    except Exception as exc:
        raise PluginError(f"key 'trainer.model_args': {where} cannot be built with {dict(model_args)}: "
                          f"{type(exc).__name__}: {exc}") from None
    x = torch.zeros(2, in_dim)
    fields = torch.zeros(2, in_fields, *out_shape[1:]) if in_fields else None
    try:
        with torch.no_grad():
            out = network(x, fields) if fields is not None else network(x)
    except Exception as exc:
        raise PluginError(f"key 'trainer.model': {where} fails on a dry batch (x [2, {in_dim}]"
                          + (f", fields {list(fields.shape)}" if fields is not None else "")
                          + f"): {type(exc).__name__}: {exc}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, *out_shape):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PluginError(f"key 'trainer.model': {where} returned {got} for a dry batch of 2 samples, "
                          f"expected {[2, *out_shape]} (batch, fields, ny, nx)")


def model_names() -> dict[str, str]:
    """Every model name a config can give by name: built-in and installed plug-ins -> origin."""
    return names(MODEL_GROUP, MODELS)


__all__ = ["FNO", "GRID", "MODELS", "MPPDE", "FullyConnected", "GridNetwork", "Surrogate", "UNet", "build_network",
           "check_model", "model_arguments", "model_factory", "model_names"]
