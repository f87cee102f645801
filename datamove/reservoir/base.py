"""The training-buffer interface: preallocated storage, counters and checkpoint state.

A buffer sits between the stream of simulation samples and the trainer. Samples arrive one by one
(`put`), training batches are drawn from whatever the buffer holds (`sample`). A policy decides only
these things, and a subclass overrides only those:

* whether it replaces held samples when full (`replaces`) and which one a new sample replaces
  (`_victim`); a policy that does not replace refuses new samples when full (`can_put()` false),
  which is the backpressure that slows the solvers down, unless the user chose the lossy
  ``on_full="drop_oldest"``,
* which held samples a batch is made of (`_pick`),
* whether drawn samples leave the buffer (`consumes`).

Storage is `capacity` preallocated slots that never move. A ring of slot ids (`_ring`, int64 on the
CPU) orders them: held samples are in the `len(self)` ring entries that follow `_head`, free slots in
the rest; a sample's *position* 0..len-1 counts from `_head`, so position 0 is the oldest sample as
long as samples only leave from the front. Removing samples from the middle (firo, a lossy drop)
swaps a few slot ids in the ring and never copies a field, which matters on a GPU. Policies work in
positions, never in slots, which keeps the ring arithmetic (and the checkpoint layout) in this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import torch

#: What a full buffer whose policy does not replace samples does with a new one.
ON_FULL = ("block", "drop_oldest")


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


class Displaced(NamedTuple):
    """A sample that left the buffer during `put` without being drawn by that put's caller.

    Attributes:
        member, step: which sample it was.
        seen: times it had been drawn into a batch; 0 means it was never trained on.
        reason: ``"evicted"`` (a held sample replaced by a replacing policy), ``"rejected"`` (the
            incoming sample itself, turned away by a replacing policy; always unseen) or
            ``"dropped"`` (the oldest held sample, discarded by ``on_full="drop_oldest"``).
    """

    member: int
    step: int
    seen: int
    reason: str


class Buffer(ABC):
    """An in-memory training buffer of fixed capacity (see the module docstring for the design).

    Args:
        capacity: number of samples the buffer can hold (>= 1).
        watermark: occupancy from which `ready()` is true (1 <= watermark <= capacity).
        x_dim: length of an input vector x.
        y_shape: shape of one output field y, e.g. (ny, nx).
        seed: seeds the buffer's own `torch.Generator`, the only source of its randomness.
        device: where x and y are stored and where batches of x and y are returned.
        on_full: ``"block"`` (a full buffer refuses samples: backpressure, nothing lost) or
            ``"drop_oldest"`` (a full buffer discards its oldest held sample to take the new one:
            lossy, every drop counted). Only matters for policies that do not replace samples.

    The per-sample metadata (member, step, seen counter, arrival number) stays on the CPU whatever
    the device: it is read by Python on every `put` and `stats`, and keeping it off the GPU avoids a
    sync per sample.
    """

    #: Registry name of the policy, as written in the configuration.
    name: ClassVar[str]
    #: True when drawn samples leave the buffer (each sample is used once), False when they stay.
    consumes: ClassVar[bool]
    #: True when a full buffer makes room by replacing a held sample (`_victim`), so it never refuses.
    replaces: ClassVar[bool] = False

    def __init__(
        self,
        *,
        capacity: int,
        watermark: int,
        x_dim: int,
        y_shape: tuple[int, ...],
        seed: int = 0,
        device: torch.device | str = "cpu",
        on_full: str = "block",
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
        if on_full not in ON_FULL:
            raise ValueError(f"on_full must be one of {', '.join(ON_FULL)}, got {on_full!r}")

        self.capacity = capacity
        self.watermark = watermark
        self.x_dim = x_dim
        self.y_shape = y_shape
        self.on_full = on_full
        self.device = torch.device(device)
        # A CPU generator whatever the device: its state is then the same object on every machine,
        # so a checkpoint taken on a GPU resumes with identical draws on a CPU and vice versa.
        self._gen = torch.Generator().manual_seed(seed)

        # torch.empty: pages are not touched (resident) until a sample is written to them.
        self._x = torch.empty((capacity, x_dim), dtype=torch.float32, device=self.device)
        self._y = torch.empty((capacity, *y_shape), dtype=torch.float32, device=self.device)
        self._member = torch.zeros(capacity, dtype=torch.int64)
        self._step = torch.zeros(capacity, dtype=torch.int64)
        self._seen = torch.zeros(capacity, dtype=torch.int64)
        self._order = torch.zeros(capacity, dtype=torch.int64)  # arrival number (n_put before the put)
        self._ring = torch.arange(capacity)  # slot ids in position order from _head, then free slots

        self._head = 0
        self._size = 0
        self._n_put = 0
        self._n_evicted = 0
        self._n_dropped = 0
        self._n_sampled = 0
        self._evicted_unseen = 0

    # ------------------------------------------------------------------ policy hooks

    def can_put(self) -> bool:
        """Whether `put` accepts a sample now: always for a policy that replaces or a lossy buffer,
        else only while the buffer is not full."""
        return self.replaces or self.on_full == "drop_oldest" or self._size < self.capacity

    def _victim(self, member: int, step: int) -> int | None:
        """Position (0..len-1) of the held sample that the incoming sample (`member`, `step`)
        replaces in a full buffer, or None to turn the incoming sample away.

        Only called for a policy that `replaces`, when the buffer is full.
        """
        raise NotImplementedError(f"policy {self.name!r} never replaces held samples")

    @abstractmethod
    def _pick(self, batch_size: int) -> torch.Tensor:
        """Positions of the held samples that make the next batch.

        Called with len(self) >= 1. Returns an int64 CPU tensor [B'] of positions in 0..len-1; a
        policy that `consumes` must return distinct positions and may return fewer than
        `batch_size` (at most len(self)).
        """

    def _policy_state(self) -> dict[str, Any]:
        """Extra state of a policy with bookkeeping of its own (saved in `state_dict`)."""
        return {}

    def _load_policy_state(self, state: dict[str, Any]) -> None:
        """Restore `_policy_state`; called after the held samples are restored."""

    # ------------------------------------------------------------------ public interface

    def __len__(self) -> int:
        return self._size

    def ready(self, *, final: bool = False) -> bool:
        """Whether training may draw a batch: occupancy has reached the watermark, or, once the
        streams have ended (`final`), whenever anything is left."""
        return self._size >= self.watermark or (final and self._size > 0)

    def put(self, x: torch.Tensor, y: torch.Tensor, *, member: int, step: int) -> Displaced | None:
        """Store one sample, copying it into preallocated storage.

        Args:
            x: [x_dim] input vector.
            y: [*y_shape] output field.
            member: ensemble member the sample came from.
            step: time-step index the sample came from.

        Returns:
            None when nothing left the buffer, else the `Displaced` sample: a held sample replaced
            or dropped to make room, or the incoming sample itself if the policy turned it away.
            A trainer counts the displaced samples with ``seen == 0`` as received but never trained
            on (per member, in its ledger).

        Raises:
            RuntimeError: if `can_put()` is false (a full buffer that blocks).
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

        displaced = None
        if self._size < self.capacity:
            slot = self._free_slot()
            self._size += 1
        elif self.replaces:
            position = self._victim(member, step)
            self._n_evicted += 1
            if position is None:
                self._n_put += 1
                self._evicted_unseen += 1
                return Displaced(member=int(member), step=int(step), seen=0, reason="rejected")
            slot = int(self._slots(torch.tensor(position)))
            displaced = self._describe(slot, "evicted")
            if displaced.seen == 0:
                self._evicted_unseen += 1
        else:  # on_full == "drop_oldest": remove the oldest held sample, append the new one
            oldest = torch.argmin(self._order[self._held_slots()])
            displaced = self._describe(int(self._slots(oldest)), "dropped")
            self._remove(oldest.reshape(1))
            self._n_dropped += 1
            slot = self._free_slot()
            self._size += 1
        self._x[slot].copy_(x)
        self._y[slot].copy_(y)
        self._member[slot] = member
        self._step[slot] = step
        self._seen[slot] = 0
        self._order[slot] = self._n_put
        self._n_put += 1
        return displaced

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

    def held_members(self) -> torch.Tensor:
        """[len] int64: the member of each held sample, in position order (no field is copied)."""
        return self._member[self._held_slots()]

    def seen_histogram(self) -> torch.Tensor:
        """[max seen + 1] int64: entry k is the number of held samples drawn exactly k times."""
        return torch.bincount(self.seen_counts(), minlength=1)

    def stats(self) -> dict[str, float]:
        """Counters and statistics for logging (all values float; see docs/reservoir.md).

        Keys: occupancy (len/capacity), n_put, n_evicted (samples displaced by a replacing policy,
        turned-away incoming ones included), n_dropped (discarded by on_full="drop_oldest"),
        n_sampled (samples drawn, summed over batches), seen_mean and seen_max (over held samples,
        0 when empty), evicted_unseen (evicted samples never drawn), members_held (distinct members
        among held samples), step_mean (mean time-step index of held samples, 0 when empty).
        """
        held = self._held_slots()
        seen = self._seen[held].double()
        return {
            "occupancy": self._size / self.capacity,
            "n_put": float(self._n_put),
            "n_evicted": float(self._n_evicted),
            "n_dropped": float(self._n_dropped),
            "n_sampled": float(self._n_sampled),
            "seen_mean": seen.mean().item() if self._size else 0.0,
            "seen_max": seen.max().item() if self._size else 0.0,
            "evicted_unseen": float(self._evicted_unseen),
            "members_held": float(len(self._member[held].unique())),
            "step_mean": self._step[held].double().mean().item() if self._size else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the sample storage, per-sample metadata, counters, the ring
        head and the RNG state (plus a policy's own bookkeeping).

        Memory: for a buffer on the CPU, ``x`` and ``y`` are the live storage tensors themselves,
        not copies, so that checkpointing a full reservoir does not double the trainer's memory.
        Serialise the state (``torch.save``) before the next `put` or `sample`. A buffer on a GPU
        returns CPU copies. The checkpoint holds all `capacity` rows (the unused ones of a buffer
        that is not yet full included).
        """
        on_cpu = self.device.type == "cpu"
        return {
            "policy": self.name,
            "capacity": self.capacity,
            "x_dim": self.x_dim,
            "y_shape": self.y_shape,
            "head": self._head,
            "size": self._size,
            "ring": self._ring.clone(),
            "x": self._x if on_cpu else self._x.cpu(),
            "y": self._y if on_cpu else self._y.cpu(),
            "member": self._member.clone(),
            "step": self._step.clone(),
            "seen": self._seen.clone(),
            "order": self._order.clone(),
            "n_put": self._n_put,
            "n_evicted": self._n_evicted,
            "n_dropped": self._n_dropped,
            "n_sampled": self._n_sampled,
            "evicted_unseen": self._evicted_unseen,
            "rng_state": self._gen.get_state(),
            "policy_state": self._policy_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`. The buffer must have the same policy, capacity, x_dim and
        y_shape; the watermark and on_full are configuration and stay the constructor's.

        Raises:
            ValueError: naming the first key that does not match.
        """
        for key in ("policy", "capacity", "x_dim", "y_shape"):
            mine = getattr(self, "name" if key == "policy" else key)
            theirs = tuple(state[key]) if key == "y_shape" else state[key]
            if theirs != mine:
                raise ValueError(f"state_dict {key} is {theirs!r}, this buffer has {mine!r}")
        for key, tensor in (("x", self._x), ("y", self._y), ("member", self._member), ("ring", self._ring)):
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"state_dict {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
                )
        self._head = int(state["head"])
        self._size = int(state["size"])
        self._ring.copy_(state["ring"])
        self._x.copy_(state["x"])
        self._y.copy_(state["y"])
        self._member.copy_(state["member"])
        self._step.copy_(state["step"])
        self._seen.copy_(state["seen"])
        self._order.copy_(state["order"])
        self._n_put = int(state["n_put"])
        self._n_evicted = int(state["n_evicted"])
        self._n_dropped = int(state["n_dropped"])
        self._n_sampled = int(state["n_sampled"])
        self._evicted_unseen = int(state["evicted_unseen"])
        self._gen.set_state(state["rng_state"])
        self._load_policy_state(state["policy_state"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.capacity}, watermark={self.watermark}, "
            f"x_dim={self.x_dim}, y_shape={self.y_shape}, on_full={self.on_full!r}, len={self._size}, "
            f"device={self.device})"
        )

    # ------------------------------------------------------------------ ring bookkeeping

    def _slots(self, positions: torch.Tensor) -> torch.Tensor:
        """[k] int64 storage slots of positions [k]."""
        return self._ring[(self._head + positions) % self.capacity]

    def _free_slot(self) -> int:
        """The slot a sample appended at position len(self) goes to (the buffer is not full)."""
        return int(self._ring[(self._head + self._size) % self.capacity])

    def _held_slots(self) -> torch.Tensor:
        """[len] int64 slots of all held samples, in position order."""
        return self._slots(torch.arange(self._size))

    def _describe(self, slot: int, reason: str) -> Displaced:
        return Displaced(
            member=int(self._member[slot]), step=int(self._step[slot]), seen=int(self._seen[slot]), reason=reason
        )

    def _on_device(self, index: torch.Tensor) -> torch.Tensor:
        """An index tensor on the storage's device. From pinned memory and non-blocking on a GPU:
        a pageable copy would wait for every kernel queued before it (the last train step)."""
        if self.device.type == "cuda":
            return index.pin_memory().to(self.device, non_blocking=True)
        return index.to(self.device)

    def _gather(self, slots: torch.Tensor) -> Batch:
        dev_slots = self._on_device(slots)
        # Advanced indexing copies, which is what makes a returned batch independent of storage.
        return Batch(
            x=self._x[dev_slots],
            y=self._y[dev_slots],
            member=self._member[slots],
            step=self._step[slots],
        )

    def _remove(self, positions: torch.Tensor) -> None:
        """Remove the samples at the k distinct `positions`; no field is copied.

        The ring drops its k front entries. A survivor among them swaps ring entries with a removed
        sample further back: the survivor's slot id takes the hole, the freed slot id goes to the
        front entries, which become free. For a policy that removes the front (fifo) nothing is
        swapped and arrival order is kept.
        """
        k = len(positions)
        in_front = positions < k
        holes_behind = positions[~in_front]
        survivor = torch.ones(k, dtype=torch.bool)
        survivor[positions[in_front]] = False
        survivors_in_front = survivor.nonzero().squeeze(1)
        if len(survivors_in_front):
            a = (self._head + survivors_in_front) % self.capacity
            b = (self._head + holes_behind) % self.capacity
            self._ring[a], self._ring[b] = self._ring[b], self._ring[a]
        self._head = (self._head + k) % self.capacity
        self._size -= k
