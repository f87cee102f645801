"""What a config may name from outside the package: installed plug-ins and import paths.

A config key that names a part (``trainer.model``, ...) takes a built-in name, the name of an
installed plug-in (an entry point of the part's group, ``datamove.models``, that a pip-installed
package declares in its pyproject), or an import path ``package.module:Name`` found on the Python
path. This module finds them; each part's registry says what the object must be (for models:
:mod:`datamove.models`). It imports nothing heavy: a built-in name is checked without torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any


# The built-in models (datamove.models.MODELS, which asserts it): here, so that a config naming one
# is checked without importing torch.
BUILTIN_MODELS = ("fc", "fno", "mppde", "unet")
MODEL_GROUP = "datamove.models"
PROBLEM_GROUP = "datamove.problems"  # Problem subclasses (datamove.problems)
POLICY_GROUP = "datamove.policies"  # reservoir Buffer subclasses (datamove.reservoir)


class PluginError(ValueError):
    """A name a config gives that cannot be found or used; the message names the key."""


@dataclass(frozen=True)
class Found:
    """What a name resolved to: the object and where it comes from (``built-in``, ``plug-in
    <name> (<distribution> <version>)`` or ``import path``)."""

    obj: Any
    origin: str


def installed(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The installed plug-ins of ``group``: name -> entry point (not loaded)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


def names(group: str, builtins) -> dict[str, str]:
    """Every name a config can give by name for a part: the built-in ones (``builtins``) and the
    installed plug-ins of ``group`` -> where each comes from (a plug-in is not loaded)."""
    found = {name: "built-in" for name in builtins}
    for name, ep in installed(group).items():
        found.setdefault(name, f"plug-in {ep.value}")
    return found


def _origin(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" ({dist.metadata['Name']} {dist.version})" if dist is not None else ""
    return f"plug-in {ep.value}{where}"


def is_import_path(name: str) -> bool:
    """``package.module:Name``: a module path, a colon, an attribute path."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr) and all(part.isidentifier() for part in [*module.split("."), *attr.split(".")])


def load_path(path: str, *, key: str) -> Any:
    """The object at import path ``path`` (``package.module:Name``); PluginError naming ``key`` when
    the module does not import or has no such name."""
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or whatever the module raises as it runs
        raise PluginError(f"key '{key}': module '{module_name}' of {path!r} does not import: "
                          f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"key '{key}': module '{module_name}' has no '{attr}' ({path!r})") from None
    return obj


def resolve(name: str, *, group: str, key: str, builtins: dict[str, Any]) -> Found:
    """What ``name`` names: a built-in (``builtins``), an installed plug-in of ``group``, or an
    import path. PluginError naming ``key``, the built-in and installed names, when it is none."""
    if name in builtins:
        return Found(builtins[name], "built-in")
    plugins = installed(group)
    if name in plugins:
        ep = plugins[name]
        try:
            return Found(ep.load(), _origin(ep))
        except Exception as exc:
            raise PluginError(f"key '{key}': plug-in {name!r} ({ep.value}) does not load: "
                              f"{type(exc).__name__}: {exc}") from None
    if is_import_path(name):
        return Found(load_path(name, key=key), "import path")
    known = ", ".join([*builtins, *sorted(set(plugins) - set(builtins))])
    raise PluginError(f"key '{key}': {name!r} is not a built-in or installed name ({known}), nor an import "
                      f"path package.module:Name")
