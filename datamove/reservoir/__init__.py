"""Training buffers between the simulation streams and the trainer, selected by policy name.

    buf = make_buffer("reservoir", capacity=10_000, watermark=1_000, x_dim=6, y_shape=(100, 100))

A new policy is a `Buffer` subclass in `policies.py` with a `name`, registered in `POLICIES`.
"""

from __future__ import annotations

from datamove.reservoir.base import ON_FULL, Batch, Buffer, Displaced
from datamove.reservoir.policies import BalancedBuffer, FifoBuffer, FiroBuffer, ReservoirBuffer

POLICIES: dict[str, type[Buffer]] = {
    cls.name: cls for cls in (ReservoirBuffer, FifoBuffer, FiroBuffer, BalancedBuffer)
}


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
    "make_buffer",
]
