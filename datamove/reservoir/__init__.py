"""Training buffers between the simulation streams and the trainer, selected by policy name.

    buf = make_buffer("reservoir", capacity=10_000, watermark=1_000, x_dim=6, y_shape=(100, 100))

A new policy is a `Buffer` subclass in `policies.py` with a `name`, registered in `POLICIES`.
"""

from __future__ import annotations

import math

import torch

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


def make_buffer(policy: str, **kwargs) -> Buffer:
    """Build the buffer registered under `policy`; `kwargs` go to its keyword-only constructor.

    Raises:
        ValueError: if `policy` is not registered (the message lists the known policies).
    """
    try:
        cls = POLICIES[policy]
    except KeyError:
        raise ValueError(
            f"unknown buffer policy {policy!r}; known policies: {', '.join(sorted(POLICIES))}"
        ) from None
    return cls(**kwargs)


__all__ = [
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
