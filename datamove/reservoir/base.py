"""The training-buffer interface: preallocated storage, counters and checkpoint state.

A buffer sits between the stream of simulation samples and the trainer. Samples arrive one by one
(`put`), training batches are drawn from whatever the buffer holds (`sample`). A policy decides only
three things, and a subclass overrides only those:

* which held sample a new one replaces when the buffer is full (`_victim`; none by default, so a full
  buffer refuses new samples, which is the backpressure that slows the solvers down),
* which held samples a batch is made of (`_pick`),
* whether drawn samples leave the buffer (`consumes`).

Storage is a ring of `capacity` preallocated slots. Held samples occupy the `len(self)` slots that
follow `_head`; their *positions* 0..len-1 count from `_head`, so position 0 is the oldest sample as
long as samples only leave from the front. Policies work in positions, never in slots, which keeps
the ring arithmetic (and the checkpoint layout) in this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import torch


class Batch(NamedTuple):
    """A training batch drawn from a buffer.

    Attributes:
        x: [B, x_dim] float32 on the buffer's device (simulation parameters, then time).
        y: [B, *y_shape] float32 on the buffer's device (the field).
        member: [B] int64 on the CPU, the ensemble member each sample came from.
        step: [B] int64 on the CPU, the time-step index each sample came from.
    """

    x: torch.Tensor
    y: torch.Tensor
    member: torch.Tensor
    step: torch.Tensor


class Buffer(ABC):
    """An in-memory training buffer of fixed capacity (see the module docstring for the design).

    Args:
        capacity: number of samples the buffer can hold (>= 1).
        watermark: occupancy from which `ready()` is true (1 <= watermark <= capacity).
        x_dim: length of an input vector x.
        y_shape: shape of one output field y, e.g. (ny, nx).
        seed: seeds the buffer's own `torch.Generator`, the only source of its randomness.
        device: where x and y are stored and where batches of x and y are returned.

    The per-sample metadata (member, step, seen counter) stays on the CPU whatever the device: it is
    read by Python on every `put` and `stats`, and keeping it off the GPU avoids a sync per sample.
    """

    #: Registry name of the policy, as written in the configuration.
    name: ClassVar[str]
    #: True when drawn samples leave the buffer (each sample is used once), False when they stay.
    consumes: ClassVar[bool]

    def __init__(
        self,
        *,
        capacity: int,
        watermark: int,
        x_dim: int,
        y_shape: tuple[int, ...],
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 1 <= watermark <= capacity:
            raise ValueError(f"watermark must be in [1, capacity={capacity}], got {watermark}")
        if x_dim < 1:
            raise ValueError(f"x_dim must be >= 1, got {x_dim}")
        y_shape = tuple(int(n) for n in y_shape)
        if not y_shape or any(n < 1 for n in y_shape):
            raise ValueError(f"y_shape must be a non-empty tuple of positive sizes, got {y_shape}")

        self.capacity = capacity
        self.watermark = watermark
        self.x_dim = x_dim
        self.y_shape = y_shape
        self.device = torch.device(device)
        # A CPU generator whatever the device: its state is then the same object on every machine,
        # so a checkpoint taken on a GPU resumes with identical draws on a CPU and vice versa.
        self._gen = torch.Generator().manual_seed(seed)

        self._x = torch.empty((capacity, x_dim), dtype=torch.float32, device=self.device)
        self._y = torch.empty((capacity, *y_shape), dtype=torch.float32, device=self.device)
        self._member = torch.zeros(capacity, dtype=torch.int64)
        self._step = torch.zeros(capacity, dtype=torch.int64)
        self._seen = torch.zeros(capacity, dtype=torch.int64)

        self._head = 0
        self._size = 0
        self._n_put = 0
        self._n_evicted = 0
        self._n_sampled = 0
        self._evicted_unseen = 0

    # ------------------------------------------------------------------ policy hooks

    def can_put(self) -> bool:
        """Whether `put` accepts a sample now. By default only while the buffer is not full."""
        return self._size < self.capacity

    def _victim(self) -> int:
        """Position (0..len-1) of the held sample that a new sample replaces in a full buffer.

        Only called when the buffer is full and `can_put()` is true, so a policy that keeps the
        default `can_put` never needs it.
        """
        raise NotImplementedError(f"policy {self.name!r} never replaces held samples")

    @abstractmethod
    def _pick(self, batch_size: int) -> torch.Tensor:
        """Positions of the held samples that make the next batch.

        Called with len(self) >= 1. Returns an int64 CPU tensor [B'] of positions in 0..len-1; a
        policy that `consumes` must return distinct positions and may return fewer than
        `batch_size` (at most len(self)).
        """

    # ------------------------------------------------------------------ public interface

    def __len__(self) -> int:
        return self._size

    def ready(self, *, final: bool = False) -> bool:
        """Whether training may draw a batch: occupancy has reached the watermark, or, once the
        streams have ended (`final`), whenever anything is left."""
        return self._size >= self.watermark or (final and self._size > 0)

    def put(self, x: torch.Tensor, y: torch.Tensor, *, member: int, step: int) -> None:
        """Store one sample, copying it into preallocated storage.

        Args:
            x: [x_dim] input vector.
            y: [*y_shape] output field.
            member: ensemble member the sample came from.
            step: time-step index the sample came from.

        Raises:
            RuntimeError: if `can_put()` is false (a full buffer whose policy does not evict).
            ValueError: if x or y has the wrong shape.
        """
        if not self.can_put():
            raise RuntimeError(
                f"{self.name} buffer is full ({self._size}/{self.capacity}); "
                "check can_put() and draw batches before putting more"
            )
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
        if tuple(x.shape) != (self.x_dim,):
            raise ValueError(f"x must have shape ({self.x_dim},), got {tuple(x.shape)}")
        if tuple(y.shape) != self.y_shape:
            raise ValueError(f"y must have shape {self.y_shape}, got {tuple(y.shape)}")

        if self._size < self.capacity:
            slot = (self._head + self._size) % self.capacity
            self._size += 1
        else:
            slot = (self._head + self._victim()) % self.capacity
            self._n_evicted += 1
            if self._seen[slot] == 0:
                self._evicted_unseen += 1
        self._x[slot].copy_(x)
        self._y[slot].copy_(y)
        self._member[slot] = member
        self._step[slot] = step
        self._seen[slot] = 0
        self._n_put += 1

    def sample(self, batch_size: int) -> Batch:
        """Draw a batch chosen by the policy, count each drawn sample as seen once more, and, for a
        policy that `consumes`, remove the drawn samples.

        Returns:
            A `Batch` of B samples (B = batch_size, or fewer for a consuming policy holding fewer);
            the tensors are copies, so later puts do not change a batch already returned.

        Raises:
            ValueError: if batch_size < 1.
            RuntimeError: if the buffer is empty.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self._size == 0:
            raise RuntimeError(f"cannot sample from an empty {self.name} buffer")
        positions = self._pick(batch_size)
        slots = self._slots(positions)
        # index_add_ (not `seen[slots] += 1`) so a sample drawn twice in one batch counts twice.
        self._seen.index_add_(0, slots, torch.ones_like(slots))
        self._n_sampled += len(slots)
        batch = self._gather(slots)
        if self.consumes:
            self._remove(positions)
        return batch

    def held(self) -> Batch:
        """Copies of all held samples in position order (oldest first for fifo), e.g. for the
        per-parameter buffer statistics the trainer logs. Does not count as seen."""
        return self._gather(self._held_slots())

    def seen_counts(self) -> torch.Tensor:
        """[len] int64: how many times each held sample has been drawn, in position order."""
        return self._seen[self._held_slots()]

    def stats(self) -> dict[str, float]:
        """Counters for logging.

        Keys: occupancy (len/capacity), n_put, n_evicted, n_sampled (samples drawn, summed over
        batches), seen_mean and seen_max (over held samples, 0 when empty), evicted_unseen (evicted
        samples that had never been drawn).
        """
        seen = self.seen_counts().double()
        return {
            "occupancy": self._size / self.capacity,
            "n_put": float(self._n_put),
            "n_evicted": float(self._n_evicted),
            "n_sampled": float(self._n_sampled),
            "seen_mean": seen.mean().item() if self._size else 0.0,
            "seen_max": seen.max().item() if self._size else 0.0,
            "evicted_unseen": float(self._evicted_unseen),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: held samples (CPU copies, in position order), counters and
        RNG state. Only held rows are saved, so a checkpoint is as large as the occupancy."""
        held = self._held_slots()
        return {
            "policy": self.name,
            "capacity": self.capacity,
            "x_dim": self.x_dim,
            "y_shape": self.y_shape,
            "x": self._x[held.to(self.device)].cpu(),
            "y": self._y[held.to(self.device)].cpu(),
            "member": self._member[held],
            "step": self._step[held],
            "seen": self._seen[held],
            "n_put": self._n_put,
            "n_evicted": self._n_evicted,
            "n_sampled": self._n_sampled,
            "evicted_unseen": self._evicted_unseen,
            "rng_state": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`. The buffer must have the same policy, capacity, x_dim and
        y_shape; the watermark is configuration and stays the constructor's.

        Raises:
            ValueError: naming the first key that does not match.
        """
        for key in ("policy", "capacity", "x_dim", "y_shape"):
            mine = getattr(self, "name" if key == "policy" else key)
            theirs = tuple(state[key]) if key == "y_shape" else state[key]
            if theirs != mine:
                raise ValueError(f"state_dict {key} is {theirs!r}, this buffer has {mine!r}")
        n = len(state["member"])
        # Positions are what policies see, so restoring them at slots 0..n-1 (head 0) gives the
        # same subsequent draws as the original buffer, wherever its ring head was.
        self._head = 0
        self._size = n
        self._x[:n].copy_(state["x"])
        self._y[:n].copy_(state["y"])
        self._member[:n].copy_(state["member"])
        self._step[:n].copy_(state["step"])
        self._seen[:n].copy_(state["seen"])
        self._n_put = int(state["n_put"])
        self._n_evicted = int(state["n_evicted"])
        self._n_sampled = int(state["n_sampled"])
        self._evicted_unseen = int(state["evicted_unseen"])
        self._gen.set_state(state["rng_state"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.capacity}, watermark={self.watermark}, "
            f"x_dim={self.x_dim}, y_shape={self.y_shape}, len={self._size}, device={self.device})"
        )

    # ------------------------------------------------------------------ ring bookkeeping

    def _slots(self, positions: torch.Tensor) -> torch.Tensor:
        """[k] int64 storage slots of positions [k]."""
        return (self._head + positions) % self.capacity

    def _held_slots(self) -> torch.Tensor:
        """[len] int64 slots of all held samples, in position order."""
        return self._slots(torch.arange(self._size))

    def _gather(self, slots: torch.Tensor) -> Batch:
        dev_slots = slots.to(self.device)
        # Advanced indexing copies, which is what makes a returned batch independent of storage.
        return Batch(
            x=self._x[dev_slots],
            y=self._y[dev_slots],
            member=self._member[slots],
            step=self._step[slots],
        )

    def _remove(self, positions: torch.Tensor) -> None:
        """Remove the samples at the k distinct `positions` without shifting the whole ring.

        The ring drops its k front positions; survivors sitting there first move into the holes
        that the removed samples leave further back. For a policy that removes the front (fifo)
        nothing moves and arrival order is kept; otherwise only min(k, survivors) rows are copied.
        """
        k = len(positions)
        removed = torch.zeros(self._size, dtype=torch.bool)
        removed[positions] = True
        survivors_in_front = (~removed[:k]).nonzero().squeeze(1)
        holes_behind = removed[k:].nonzero().squeeze(1) + k
        if len(survivors_in_front):
            src, dst = self._slots(survivors_in_front), self._slots(holes_behind)
            dev_src, dev_dst = src.to(self.device), dst.to(self.device)
            self._x[dev_dst] = self._x[dev_src]
            self._y[dev_dst] = self._y[dev_src]
            for meta in (self._member, self._step, self._seen):
                meta[dst] = meta[src]
        self._head = (self._head + k) % self.capacity
        self._size -= k
