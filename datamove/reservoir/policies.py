"""Buffer policies. Each one overrides only the hooks of `Buffer` in which it differs."""

from __future__ import annotations

import torch

from datamove.reservoir.base import Buffer


class ReservoirBuffer(Buffer):
    """Random replacement, sampling with replacement; samples can be seen several times.

    `put` appends while the buffer is not full, then replaces a uniformly chosen held sample (an
    eviction), so it never refuses a sample. `sample` draws B positions uniformly with replacement
    among the held samples, which stay.
    """

    name = "reservoir"
    consumes = False

    def can_put(self) -> bool:
        # Never full from the producer's side: a new sample always finds a slot by eviction.
        return True

    def _victim(self) -> int:
        return int(torch.randint(len(self), (1,), generator=self._gen))

    def _pick(self, batch_size: int) -> torch.Tensor:
        return torch.randint(len(self), (batch_size,), generator=self._gen)


class FifoBuffer(Buffer):
    """First in, first out: each sample is used exactly once, in order of arrival.

    `put` appends; a full buffer refuses samples (`can_put()` is false) rather than dropping any,
    so the trainer stops reading the streams and the solvers block: backpressure. `sample` pops the
    min(B, len) oldest samples.
    """

    name = "fifo"
    consumes = True

    def _pick(self, batch_size: int) -> torch.Tensor:
        return torch.arange(min(batch_size, len(self)))


class FiroBuffer(FifoBuffer):
    """First in, random out: as fifo (each sample used once, backpressure when full), but a batch
    is min(B, len) held samples drawn uniformly without replacement, which breaks up the time order
    in which the solvers produce samples."""

    name = "firo"

    def _pick(self, batch_size: int) -> torch.Tensor:
        return torch.randperm(len(self), generator=self._gen)[:batch_size]
