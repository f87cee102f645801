"""Training buffers between the simulation streams and the trainer, selected by policy name.

    buf = make_buffer("reservoir", capacity=10_000, watermark=1_000, x_dim=6, y_shape=(100, 100))

A new policy is a `Buffer` subclass in `policies.py` with a `name`, registered in `POLICIES`. A
policy from outside the package (an installed plug-in of the entry point group
``datamove.policies``, or an import path ``package.module:ClassName`` in ``reservoir.policy``) is a
`Buffer` subclass too (docs/plugins.md).
"""

from __future__ import annotations

import math

import torch

from datamove.plugins import POLICY_GROUP, Found, PluginError, names, resolve
from datamove.reservoir.base import ON_FULL, Batch, Buffer, Displaced
from datamove.reservoir.policies import BalancedBuffer, FifoBuffer, FiroBuffer, ReservoirBuffer

POLICIES: dict[str, type[Buffer]] = {
    cls.name: cls for cls in (ReservoirBuffer, FifoBuffer, FiroBuffer, BalancedBuffer)
}


def buffer_bytes(*, capacity: int, x_dim: int, y_shape) -> int:
    """Memory a buffer of ``capacity`` samples takes: x and y float32 on its device, plus 40 bytes
    of CPU metadata a sample (member, step, seen, arrival, ring)."""
    return capacity * (4 * (x_dim + math.prod(y_shape)) + 40)


def available_bytes(device) -> int | None:
    """Memory that can still be allocated on ``device`` (CUDA: free device memory; CPU: the
    kernel's MemAvailable), or None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def policy_class(name: str, *, key: str = "reservoir.policy") -> Found:
    """The Buffer subclass policy ``name`` names (built in, an installed plug-in, an import path) and
    where it comes from; PluginError naming ``key`` otherwise."""
    found = resolve(name, group=POLICY_GROUP, key=key, builtins=POLICIES)
    if not (isinstance(found.obj, type) and issubclass(found.obj, Buffer)):
        raise PluginError(f"key '{key}': {name!r} ({found.origin}) is {found.obj!r}, not a subclass of "
                          f"datamove.reservoir.Buffer")
    if not isinstance(getattr(found.obj, "consumes", None), bool):
        raise PluginError(f"key '{key}': policy {name!r} ({found.origin}) declares no consumes (True: each drawn "
                          f"sample leaves the buffer; False: samples are drawn again)")
    return found


def policy_names() -> dict[str, str]:
    """Every policy a config can name: built-in and installed plug-ins -> origin."""
    return names(POLICY_GROUP, POLICIES)


def make_buffer(policy: str, **kwargs) -> Buffer:
    """Build the buffer of `policy` (see :func:`policy_class`); `kwargs` go to its keyword-only
    constructor.

    Raises:
        ValueError: if `policy` names no buffer class (the message lists the known policies).
    """
    return policy_class(policy).obj(**kwargs)


__all__ = [
    "policy_class",
    "policy_names",
    "ON_FULL",
    "POLICIES",
    "BalancedBuffer",
    "Batch",
    "Buffer",
    "Displaced",
    "FifoBuffer",
    "FiroBuffer",
    "ReservoirBuffer",
    "available_bytes",
    "buffer_bytes",
    "make_buffer",
]
