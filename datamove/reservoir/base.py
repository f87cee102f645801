"""The training-buffer interface: preallocated storage, counters and checkpoint state.

A buffer sits between the stream of simulation samples and the trainer. Samples arrive one by one
(`put`) or in batches with the same semantics (`put_many`), training batches are drawn from whatever
the buffer holds (`sample`). A policy decides only these things, and a subclass overrides only those:

* whether it replaces held samples when full (`replaces`) and which ones new samples replace
  (`_victims`); a policy that does not replace refuses new samples when full (`can_put()` false),
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

A buffer of autoregressive windows (``window = L``: a sample's y is L steps of one member, L x F
fields) stores each step once: a window's L steps overlap the next window's L - 1, so storing
windows whole would copy each step L times (the intake's cost: measured L = 9 at 64x64, 0.73 of the
direct samples' rate). Its steps live in a step store of ``capacity x L`` entries (a window's steps
are never more), a held sample keeps L indices into it (`_refs`), and `put_many` copies only the
steps it has not stored before, recognised by the keys its caller gives them (`y_keys`: the member
feed numbers each step it receives). A step no held sample refers to is freed lazily, by a sweep
over the held samples' indices (`_sweep`) when the store runs short or every `capacity`
allocations, so that neither a policy nor a draw that removes samples has to count references.
A batch gathers each window's L steps from the store: the same bytes a stored window would copy.

`put` is `put_many` of one sample. `put_many` decides where each of its samples goes and what each
displaces with numpy on the CPU metadata (a loop over small integers only where a policy's choice
depends on the previous one), then copies the fields in one `index_copy_` for x and one for y (one
per part, where the fields come in parts): a torch op costs microseconds of dispatch (and a launch on
a GPU), a 16 KB field copy less.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

#: What a full buffer whose policy does not replace samples does with a new one.
ON_FULL = ("block", "drop_oldest")
class _Part(NamedTuple):
    """Fields of a `put_many`: ``source[rows[i]]`` (``source[i]`` where rows is None) fills the
    field axis ``fields`` of sample i's stored y (None: all of it)."""

    source: torch.Tensor  # [m, k, *y_shape[1:]]
    rows: np.ndarray | None  # [n]
    fields: slice | None

    def rows_of(self, kept: np.ndarray | None) -> np.ndarray | None:
        """The source rows of the samples `kept` [k] (None: all n); None: all of the source, in order."""
        if self.rows is None:
            return kept
        return self.rows if kept is None else self.rows[kept]


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
    """A sample that left the buffer during `put` (or `put_many`) without being drawn by its caller.

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


class Displacements:
    """Every `Displaced` sample of one `put_many`, in order, as aligned [k] numpy arrays.

    A sequence of `Displaced` (len, iteration, indexing; equal to any sequence of the same
    `Displaced` in the same order, a list included), built without a Python object per sample: a
    trainer takes in tens of samples between two batches and counts only the unseen ones
    (`unseen`) in its ledger.

    Attributes:
        member, step, seen: int64 [k].
        reason: str [k], ``"evicted"``, ``"rejected"`` or ``"dropped"`` (see `Displaced`).
    """

    __slots__ = ("member", "step", "seen", "reason")
    __hash__ = None  # compares by value, like a list

    def __init__(self, member: np.ndarray, step: np.ndarray, seen: np.ndarray, reason: np.ndarray) -> None:
        self.member, self.step, self.seen, self.reason = member, step, seen, reason

    @classmethod
    def none(cls) -> Displacements:
        empty = np.empty(0, dtype=np.int64)
        return cls(empty, empty, empty, np.empty(0, dtype="<U8"))

    def __len__(self) -> int:
        return len(self.member)

    def __iter__(self):
        arrays = (self.member.tolist(), self.step.tolist(), self.seen.tolist(), self.reason.tolist())
        return (Displaced(*fields) for fields in zip(*arrays))

    def __getitem__(self, i: int) -> Displaced:
        return Displaced(int(self.member[i]), int(self.step[i]), int(self.seen[i]), str(self.reason[i]))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Displacements, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Displacements({list(self)!r})"

    def unseen(self) -> list[tuple[int, str]]:
        """(member, reason) of each displaced sample never drawn (seen 0), in order: what a
        trainer's ledger counts as received but not trained on."""
        keep = self.seen == 0
        return list(zip(self.member[keep].tolist(), self.reason[keep].tolist()))


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
        window: a sample's y is this many steps of ``y_shape[0] // window`` fields each, along the
            field axis (an autoregressive window of L steps), and each step is stored once however
            many held samples hold it, recognised by `put_many`'s ``y_keys``. 1 (default): a
            sample's y is stored whole.

    The per-sample metadata (member, step, seen counter, arrival number) stays on the CPU whatever
    the device: it is read by Python on every `put` and `stats`, and keeping it off the GPU avoids a
    sync per sample.
    """

    #: Registry name of the policy, as written in the configuration.
    name: ClassVar[str]
    #: True when drawn samples leave the buffer (each sample is used once), False when they stay.
    consumes: ClassVar[bool]
    #: True when a full buffer makes room by replacing a held sample (`_victims`), so it never refuses.
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
        window: int = 1,
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
        if window < 1 or y_shape[0] % window:
            raise ValueError(f"window must be >= 1 and divide y_shape[0] = {y_shape[0]}, got {window}")

        self.capacity = capacity
        self.watermark = watermark
        self.x_dim = x_dim
        self.y_shape = y_shape
        self.on_full = on_full
        self.window = window
        self.device = torch.device(device)
        # A CPU generator whatever the device: its state is then the same object on every machine,
        # so a checkpoint taken on a GPU resumes with identical draws on a CPU and vice versa.
        self._gen = torch.Generator().manual_seed(seed)

        # torch.empty: pages are not touched (resident) until a sample is written to them.
        self._x = torch.empty((capacity, x_dim), dtype=torch.float32, device=self.device)
        if window == 1:
            self._y = torch.empty((capacity, *y_shape), dtype=torch.float32, device=self.device)
        else:
            # Windows: a step store and each sample's L indices into it (see the module docstring).
            # Entries are handed out from the lowest free one up, so that the store's untouched
            # pages stay untouched while freed entries can be reused.
            step_shape = (y_shape[0] // window, *y_shape[1:])
            self._store = torch.empty((capacity * window, *step_shape), dtype=torch.float32, device=self.device)
            self._refs = torch.zeros((capacity, window), dtype=torch.int64)  # CPU, as the metadata
            self._refs_np = self._refs.numpy()
            self._store_key = np.full(capacity * window, -1, dtype=np.int64)  # -1: no key (never shared)
            self._entry_of: dict[int, int] = {}  # key -> its step's entry (while not swept)
            self._free = np.arange(capacity * window)  # free entries, ascending, from _next on
            self._next = self._since_sweep = 0
        self._member = torch.zeros(capacity, dtype=torch.int64)
        self._step = torch.zeros(capacity, dtype=torch.int64)
        self._seen = torch.zeros(capacity, dtype=torch.int64)
        self._order = torch.zeros(capacity, dtype=torch.int64)  # arrival number (n_put before the put)
        self._ring = torch.arange(capacity)  # slot ids in position order from _head, then free slots
        # numpy views sharing memory with the CPU tensors (never reassigned: load_state_dict copies
        # into them) for the index bookkeeping of puts and firo's draws: a numpy op on a few
        # integers costs a fraction of a torch op's dispatch.
        self._ring_np = self._ring.numpy()
        self._member_np = self._member.numpy()
        self._step_np = self._step.numpy()
        self._seen_np = self._seen.numpy()
        self._order_np = self._order.numpy()
        # numpy views of a CPU storage, for put_many's copies (see _copy_fields); its gathers.
        on_cpu = self.device.type == "cpu"
        self._x_np = self._x.numpy() if on_cpu else None
        self._y_np = (self._y if window == 1 else self._store).numpy() if on_cpu else None
        self._copier = RowCopier()

        self._head = 0
        self._size = 0
        self._n_put = 0
        self._n_evicted = 0
        self._n_dropped = 0
        self._n_sampled = 0
        self._evicted_unseen = 0

    # ------------------------------------------------------------------ policy hooks

    def put_capacity(self) -> int:
        """How many samples `put_many` accepts now: capacity - len for a policy that does not
        replace in a buffer that blocks when full, else unlimited (`sys.maxsize`)."""
        if self.replaces or self.on_full == "drop_oldest":
            return sys.maxsize
        return self.capacity - self._size

    def can_put(self) -> bool:
        """Whether `put` accepts a sample now: always for a policy that replaces or a lossy buffer,
        else only while the buffer is not full."""
        return self.put_capacity() > 0

    def _victims(self, members: np.ndarray, steps: np.ndarray, n_free: int) -> np.ndarray:
        """Positions (0..len-1) of the held samples that incoming samples replace, or -1 to turn
        one away.

        Args:
            members, steps: [n] int64, the samples of one `put_many`, in order. The first `n_free`
                have gone to free slots (their metadata is written, len(self) counts them); the
                others arrive at a full buffer.

        Returns:
            [n - n_free] int64: the victim of each of the others, chosen as if the samples before it
            had been put one by one, so it may be the position of an earlier sample of this call.

        Called on every `put_many` of a policy that `replaces` (with n_free == n while the buffer
        is not full), so that a policy with bookkeeping of its own sees every sample.
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
        """Store one sample: `put_many` of x [x_dim], y [*y_shape], `member` and `step`.

        Returns:
            None when nothing left the buffer, else the `Displaced` sample: a held sample replaced
            or dropped to make room, or the incoming sample itself if the policy turned it away.
            A trainer counts the displaced samples with ``seen == 0`` as received but never trained
            on (per member, in its ledger).

        Raises:
            RuntimeError: if `can_put()` is false (a full buffer that blocks).
            ValueError: if x or y has the wrong shape.
        """
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        displaced = self.put_many(x.unsqueeze(0), y.unsqueeze(0), member=(member,), step=(step,))
        return displaced[0] if len(displaced) else None

    def put_many(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        member: torch.Tensor | Sequence[int],
        step: torch.Tensor | Sequence[int],
        y_rows: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]] | None = None,
        y_keys: Sequence[np.ndarray | Sequence[int]] | None = None,
    ) -> Displacements:
        """Store n samples as if `put` had been called on each in order: the same samples held in
        the same slots and positions, the same counters and seen counts, the same generator state.

        Args:
            x: [n, x_dim] input vectors (any device and float dtype; CPU tensors may be pinned).
            y: [n, *y_shape] output fields (likewise), or, with `y_rows`, a pool [m, *y_shape] of
                fields that holds them (e.g. the shared-memory hand-off slots of the ingest).
                Or a list or tuple of parts [m_k, c_k, *y_shape[1:]] (sum of c_k = y_shape[0]), each
                with its own `y_rows`: sample i's field is the parts' rows concatenated along the
                field axis (an autoregressive pair: the input step's fields from one pool, the
                target's from another), gathered from each part straight into the storage.
            member: [n] int, the ensemble member of each sample.
            step: [n] int, the time-step index of each sample.
            y_rows: [n] int (a tensor on any device, an array or a sequence): sample i's field is
                ``y[y_rows[i]]``. The fields are gathered from the pool straight into the storage
                (through pinned staging memory on a GPU), without a copy of the caller's first.
                With parts: a list or tuple of such vectors, one a part.
            y_keys: a buffer of windows only (``window`` L > 1), with y in L parts of one step each:
                L vectors [n] of int keys, one a part, that name each step (any int, unique to one
                step's fields for the life of the buffer, until `load_state_dict`). A step whose
                key the buffer holds is not copied again: the sample refers to the held one. None:
                every step is copied (and never shared).

        Returns:
            Every `Displaced` sample of those puts, in order (`Displacements`, a sequence of them);
            a sample stored without displacing anything adds none. A sample of this call displaced
            by a later one of it (n large against the capacity) is reported with seen 0, and its
            field is never copied. x and y have been read when this returns: the caller may reuse
            them (on a GPU the copies to the device may still be in flight, from staging memory of
            their own).

        Raises:
            RuntimeError: if n > `put_capacity()` (a blocking buffer without room for all n);
                nothing is stored then.
            ValueError: if x, y, member, step or y_rows has the wrong shape.
        """
        x = torch.as_tensor(x)
        members, steps = _int_vector(member, "member"), _int_vector(step, "step")
        n = len(members)
        if tuple(x.shape) != (n, self.x_dim):
            raise ValueError(f"x must have shape (n, {self.x_dim}), n = len(member) = {n}; got {tuple(x.shape)}")
        parts = self._parts(y, y_rows, n)
        keys = self._checked_keys(y_keys, parts, n)
        if len(steps) != n:
            raise ValueError(f"step must have length n = len(member) = {n}, got {len(steps)}")
        room = self.put_capacity()
        if n > room:
            raise RuntimeError(
                f"{self.name} buffer is full or lacks room for {n} samples ({self._size}/{self.capacity} held, "
                f"put_capacity() = {room}); check put_capacity() and draw batches before putting more"
            )
        if n == 0:
            return Displacements.none()

        cap, ring = self.capacity, self._ring_np
        n_free = min(n, cap - self._size)
        rest = n - n_free
        # dest[i]: the slot sample i is written to, -1 if it is turned away; first the free slots.
        start = self._head + self._size
        dest = ring.take(np.arange(start, start + n_free), mode="wrap")
        if n_free:
            # Their metadata goes in first: a policy choosing victims for the rest sees them held,
            # as it would after their puts.
            self._write_metadata(dest, members[:n_free], steps[:n_free], self._n_put + np.arange(n_free))
            self._size += n_free
        if self.replaces:
            victims = self._victims(members, steps, n_free)
            victim_slots = ring.take(self._head + victims, mode="wrap")
            dest = np.concatenate([dest, np.where(victims < 0, -1, victim_slots)])
        elif rest:  # on_full == "drop_oldest": each of the rest drops the oldest held sample
            # The held samples leave oldest first, then this call's own samples in the order they
            # came (newer than any held one), and each incoming sample takes the slot of the one it
            # drops: the slots cycle through the free ones, then the held ones oldest first.
            oldest = self._drop_oldest(min(rest, cap - n_free))
            dest = np.resize(np.concatenate([dest, oldest]), n)
            self._head = (self._head + rest) % cap

        displaced = Displacements.none()
        slots, rows = dest, None  # where the fields go, from which of the n samples (None: all)
        if rest:
            reason = "evicted" if self.replaces else "dropped"
            displaced, kept = self._resolve(dest, members, steps, n_free, reason)
            # The samples last written to their slot are the ones held (those filling free slots
            # are written again: the same values).
            slots = dest[kept]
            self._write_metadata(slots, members[kept], steps[kept], self._n_put + kept)
            if len(kept) < n:
                rows = kept
        if len(slots):
            self._copy_fields(x, parts, slots, rows, keys)

        self._n_put += n
        if self.replaces:
            self._n_evicted += rest
            self._evicted_unseen += int(np.count_nonzero(displaced.seen == 0))
        else:
            self._n_dropped += rest
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

    def probe(self, n: int, *, generator: torch.Generator | None = None, min_seen: int = 0) -> Batch:
        """Copies of up to ``n`` held samples chosen uniformly without replacement (all of them if
        fewer) among those drawn into a batch at least ``min_seen`` times, e.g. for the per-member
        loss of adaptive sampling. Does not count as seen."""
        slots = self._held_slots()
        if min_seen > 0:
            slots = slots[self._seen[slots] >= min_seen]
        if len(slots) > n:
            slots = slots[torch.randperm(len(slots), generator=generator)[:n]]
        return self._gather(slots)

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
            "window": self.window,
            "x": self._x if on_cpu else self._x.cpu(),
            # A buffer of windows: its step store and each sample's indices into it.
            **({"y": self._y if on_cpu else self._y.cpu()} if self.window == 1 else
               {"store": self._store if on_cpu else self._store.cpu(), "refs": self._refs.clone()}),
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
        for key in ("policy", "capacity", "x_dim", "y_shape", "window"):
            mine = getattr(self, "name" if key == "policy" else key)
            theirs = tuple(state[key]) if key == "y_shape" else state.get(key, 1)  # window: 1 before windows
            if theirs != mine:
                raise ValueError(f"state_dict {key} is {theirs!r}, this buffer has {mine!r}")
        fields = (("y", self._y),) if self.window == 1 else (("store", self._store), ("refs", self._refs))
        for key, tensor in (("x", self._x), *fields, ("member", self._member), ("ring", self._ring)):
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"state_dict {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
                )
        self._head = int(state["head"])
        self._size = int(state["size"])
        self._ring.copy_(state["ring"])
        self._x.copy_(state["x"])
        for key, tensor in fields:
            tensor.copy_(state[key])
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
        if self.window > 1:
            # The keys named steps of the feed that saved this state: a new one numbers afresh.
            self._store_key[:] = -1
            self._entry_of.clear()
            self._sweep()

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

    def _held_slots(self) -> torch.Tensor:
        """[len] int64 slots of all held samples, in position order."""
        return self._slots(torch.arange(self._size))

    def _write_metadata(
        self, slots: np.ndarray, members: np.ndarray, steps: np.ndarray, order: np.ndarray
    ) -> None:
        """Metadata of new samples: [k] distinct slots, their members, steps and arrival numbers."""
        self._member_np[slots] = members
        self._step_np[slots] = steps
        self._seen_np[slots] = 0
        self._order_np[slots] = order

    def _drop_oldest(self, k: int) -> np.ndarray:
        """Make the k ring entries from the head hold the k oldest held samples (1 <= k <= len),
        oldest first, as k successive lossy drops do (each swaps the front entry with the oldest
        one's, then the head moves on), and return their slots [k]. The caller moves the head.

        A swap only ever moves a front entry, so the loop is over k small integers with a dict of
        the entries moved; for fifo (oldest in front) nothing moves.
        """
        ring, head, cap = self._ring_np, self._head, self.capacity
        held = ring.take(np.arange(head, head + self._size), mode="wrap")
        orders = self._order_np[held]
        positions = np.argpartition(orders, k - 1)[:k]  # O(len), then a sort of k
        positions = positions[np.argsort(orders[positions])]
        slots = held[positions]
        moved: dict[int, int] = {}  # slot -> its position after a swap moved it out of the front
        for front_position, (slot, position) in enumerate(zip(slots.tolist(), positions.tolist())):
            position = moved.pop(slot, position)
            if position != front_position:
                front = int(ring[(head + front_position) % cap])
                ring[(head + position) % cap] = front
                ring[(head + front_position) % cap] = slot
                moved[front] = position
        return slots

    def _resolve(
        self, dest: np.ndarray, members: np.ndarray, steps: np.ndarray, n_free: int, reason: str
    ) -> tuple[Displacements, np.ndarray]:
        """What the samples of a `put_many` after the first `n_free` displace, and which samples of
        it end up stored.

        Args:
            dest: [n] int64, the slot each sample is written to, in order (-1: turned away); the
                first n_free are distinct free slots, the others may repeat. The metadata of the
                slots not among the first n_free must still be what they held before the call.
            members, steps: [n] int64 of the samples.
            reason: ``"evicted"`` or ``"dropped"``, for what a sample written to a held slot displaces.

        Returns:
            The `Displacements` of samples n_free..n-1, in order: each displaces what its slot
            holds then (a sample held before the call, or an earlier sample of this call, unseen),
            or is itself turned away. And the [k] indices, ascending, of the samples last written
            to their slot.

        A fixed dozen numpy calls whatever n (a dict of the last writer per slot and a `Displaced`
        per sample cost ~2 us a sample, several times that with the caches cold after a train step):
        a stable sort by slot puts the writers of each slot in call order, so each sample's
        predecessor in its slot is its neighbour in that order.
        """
        n = len(dest)
        order = np.argsort(dest, kind="stable")
        by_slot = dest[order]
        # In sorted order: whether the next entry writes the same slot (so this one is not last).
        same_next = np.zeros(n, dtype=bool)
        np.equal(by_slot[1:], by_slot[:-1], out=same_next[:-1])
        previous = np.full(n, -1, dtype=np.int64)  # the sample written to the same slot just before
        previous[order[1:][same_next[:-1]]] = order[:-1][same_next[:-1]]
        any_turned_away = by_slot[0] < 0  # sorted: -1 (turned away) comes first
        last = ~same_next
        if any_turned_away:
            last &= by_slot >= 0
        kept = np.sort(order[last])

        later, before = dest[n_free:], previous[n_free:]
        own = before >= 0
        # A held slot's metadata from before the call, or the earlier sample of this call written
        # there (unseen); -1 indices read placeholders that np.where discards.
        member = np.where(own, members[before], self._member_np[later])
        step = np.where(own, steps[before], self._step_np[later])
        if not any_turned_away:
            seen = np.where(own, 0, self._seen_np[later])
            return Displacements(member, step, seen, np.full(len(later), reason)), kept
        turned_away = later < 0
        seen = np.where(own | turned_away, 0, self._seen_np[later])
        member = np.where(turned_away, members[n_free:], member)
        step = np.where(turned_away, steps[n_free:], step)
        why = np.where(turned_away, "rejected", reason)
        return Displacements(member, step, seen, why), kept

    def _parts(self, y, y_rows, n: int) -> list[_Part]:
        """put_many's y and y_rows as checked parts (see put_many); ValueError naming what is wrong."""
        if not isinstance(y, (list, tuple)):
            y = torch.as_tensor(y)
            if y_rows is None:
                if tuple(y.shape) != (n, *self.y_shape):
                    raise ValueError(
                        f"y must have shape (n, *{self.y_shape}), n = len(member) = {n}; got {tuple(y.shape)}"
                    )
                return [_Part(y, None, None)]
            rows = self._checked_rows(y_rows, "y_rows", len(y))
            if tuple(y.shape[1:]) != self.y_shape or tuple(rows.shape) != (n,):
                raise ValueError(
                    f"with y_rows, y must have shape (m, *{self.y_shape}) and y_rows (n,), n = len(member) = {n}; "
                    f"got {tuple(y.shape)} and {tuple(rows.shape)}"
                )
            return [_Part(y, rows, None)]
        if not isinstance(y_rows, (list, tuple)) or len(y_rows) != len(y):
            raise ValueError(
                f"with y a sequence of {len(y)} parts, y_rows must be a list or tuple of as many row vectors"
            )
        parts, start = [], 0
        for k, (source, part_rows) in enumerate(zip(y, y_rows)):
            source = torch.as_tensor(source)
            rows = self._checked_rows(part_rows, f"y_rows[{k}]", len(source))
            if source.dim() != len(self.y_shape) + 1 or tuple(source.shape[2:]) != self.y_shape[1:] \
                    or tuple(rows.shape) != (n,):
                raise ValueError(
                    f"part y[{k}] must have shape (m, k, *{self.y_shape[1:]}) and y_rows[{k}] (n,), n = len(member) "
                    f"= {n}; got {tuple(source.shape)} and {tuple(rows.shape)}"
                )
            stop = start + source.shape[1]
            parts.append(_Part(source, rows, slice(start, stop)))
            start = stop
        if start != self.y_shape[0]:
            raise ValueError(
                f"the parts of y must add up to the {self.y_shape[0]} fields of a sample, got "
                f"{' + '.join(str(p.source.shape[1]) for p in parts)}"
            )
        return parts

    @staticmethod
    def _checked_rows(values, name: str, m: int) -> np.ndarray:
        """An index vector into m rows (a pool's), range-checked; ValueError naming it."""
        rows = _int_vector(values, name)
        if len(rows) and not (0 <= rows.min() and rows.max() < m):
            raise ValueError(f"{name} must be in 0..{m - 1}, got {rows.min()}..{rows.max()}")
        return rows

    def _checked_keys(self, y_keys, parts: list[_Part], n: int) -> np.ndarray | None:
        """put_many's y_keys as [n, window] int64 (None: no keys); ValueError naming what is wrong."""
        if y_keys is None:
            return None
        if self.window == 1:
            raise ValueError("y_keys is for a buffer of windows (window > 1); this buffer stores each sample whole")
        if not self._one_step_each(parts):
            raise ValueError(
                f"with y_keys, y must come in window = {self.window} parts of {self.y_shape[0] // self.window} "
                f"fields each (one a step), got {len(parts)} parts"
            )
        if not isinstance(y_keys, (list, tuple)) or len(y_keys) != self.window:
            raise ValueError(f"y_keys must be a list or tuple of window = {self.window} key vectors, one a part")
        keys = [_int_vector(k, f"y_keys[{j}]") for j, k in enumerate(y_keys)]
        for j, k in enumerate(keys):
            if len(k) != n:
                raise ValueError(f"y_keys[{j}] must have length n = len(member) = {n}, got {len(k)}")
        return np.stack(keys, axis=1)

    def _copy_fields(
        self, x: torch.Tensor, parts: list[_Part], slots: np.ndarray, rows: np.ndarray | None,
        keys: np.ndarray | None = None,
    ) -> None:
        """Copy the samples `rows` [k] (None: all n) into the k distinct storage `slots`: x[rows]
        from x [n, x_dim], and their fields from each part (its source's rows ``part.rows[rows]``,
        or ``rows`` where it has none) into its share of the field axis. One copy into the storage
        for x and one for each part, after one gather of the rows where they are not all of them
        or not in order. A buffer of windows copies only the steps it does not hold yet
        (`_put_steps`; ``keys`` [n, window], as put_many's y_keys).

        On the CPU, numpy (`RowCopier`): it copies a row with memcpy, where torch's index_copy_
        took 2-3x as long for 16 KiB rows (measured: 48 rows, 30 against 69 us).
        """
        on_cpu = self.device.type == "cpu"
        if on_cpu:
            self._copier.copy(self._x_np, slots, x, rows, "x")
        else:
            index = self._on_device(torch.from_numpy(slots))
            self._x.index_copy_(0, index, self._to_device(x, rows))
        if self.window > 1:
            self._put_steps(parts, slots, rows, keys)
            return
        if on_cpu:
            for k, part in enumerate(parts):
                dest = self._y_np if part.fields is None else self._y_np[:, part.fields]
                self._copier.copy(dest, slots, part.source, part.rows_of(rows), f"y{k}")
            return
        for part in parts:
            dest = self._y if part.fields is None else self._y[:, part.fields]  # index_copy_ writes through the view
            dest.index_copy_(0, index, self._to_device(part.source, part.rows_of(rows)))

    # ------------------------------------------------------------------ the step store (windows)

    def _put_steps(self, parts: list[_Part], slots: np.ndarray, rows: np.ndarray | None,
                   keys: np.ndarray | None) -> None:
        """A buffer of windows: the L steps of the samples `rows` [k] (None: all n), written to the
        k `slots`, as indices into the step store; the steps it does not hold yet (by key; all of
        them without keys) are copied into free entries, each once however many of these samples
        hold it (a copy per part of the steps first met in that part)."""
        k, L = len(slots), self.window
        sources = self._step_sources(parts, rows, k)
        if keys is None:
            refs = self._allocate(k * L, slots, None).reshape(k, L)
            for j, (source, source_rows) in enumerate(sources):
                self._write_steps(refs[:, j], source, source_rows, f"y{j}")
        else:
            keys = (keys if rows is None else keys[rows]).ravel()  # [k L], sample-major
            unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            entries = np.fromiter((self._entry_of.get(key, -1) for key in unique.tolist()), np.int64, len(unique))
            new = np.flatnonzero(entries < 0)
            if len(new):
                got = self._allocate(len(new), slots, entries[entries >= 0])
                entries[new] = got
                self._store_key[got] = unique[new]
                self._entry_of.update(zip(unique[new].tolist(), got.tolist()))
                sample, part = np.divmod(first[new], L)  # where each new step is first met
                for j, (source, source_rows) in enumerate(sources):
                    mine = part == j
                    if mine.any():
                        self._write_steps(got[mine], source, source_rows[sample[mine]], f"y{j}")
            refs = entries[inverse.ravel()].reshape(k, L)
        self._refs_np[slots] = refs

    def _step_sources(self, parts: list[_Part], rows: np.ndarray | None,
                      k: int) -> list[tuple[torch.Tensor, np.ndarray]]:
        """For each of the L steps of a window, (a source [m, F, ...], the [k] rows of it that hold
        that step of the k samples `rows`): the parts themselves where they are one step each,
        else the samples' fields gathered first (a sample's y whole, or parts of other widths)."""
        everything = np.arange(k)
        if self._one_step_each(parts):
            return [(p.source, everything if (r := p.rows_of(rows)) is None else r) for p in parts]
        per = self.y_shape[0] // self.window
        gathered = []
        for part in parts:
            r = part.rows_of(rows)
            source = torch.as_tensor(part.source)
            gathered.append(source if r is None else source[torch.from_numpy(r).to(source.device)])
        fields = torch.cat(gathered, dim=1).reshape(k, self.window, per, *self.y_shape[1:])
        return [(fields[:, j], everything) for j in range(self.window)]

    def _one_step_each(self, parts: list[_Part]) -> bool:
        """Whether put_many's y comes in ``window`` parts of one step's fields each."""
        per = self.y_shape[0] // self.window
        return len(parts) == self.window and all(p.source.shape[1] == per for p in parts)

    def _write_steps(self, entries: np.ndarray, source: torch.Tensor, rows: np.ndarray, name: str) -> None:
        """store[entries] = source[rows] ([k] each)."""
        if self.device.type == "cpu":
            self._copier.copy(self._y_np, entries, source, rows, name)
        else:
            self._store.index_copy_(0, self._on_device(torch.from_numpy(entries)), self._to_device(source, rows))

    def _allocate(self, count: int, overwritten: np.ndarray, in_use: np.ndarray | None) -> np.ndarray:
        """``count`` free entries of the step store, lowest first: sweeping first when too few are
        left, or when `capacity` have been handed out since the last sweep (so that freed entries,
        whose pages are resident, are reused before untouched ones). ``overwritten``: the slots
        this put writes (their old windows go); ``in_use``: entries this put refers to."""
        if self._next + count > len(self._free) or self._since_sweep >= self.capacity:
            self._sweep(overwritten, in_use)
        if self._next + count > len(self._free):  # cannot happen: held windows hold at most capacity x L steps
            raise RuntimeError(f"{self.name} buffer's step store is out of entries ({count} wanted)")
        got = self._free[self._next : self._next + count].copy()
        self._next += count
        self._since_sweep += count
        return got

    def _sweep(self, overwritten: np.ndarray | None = None, in_use: np.ndarray | None = None) -> None:
        """Free every entry of the step store that no held sample refers to (but those in
        ``in_use``; the held samples in slots ``overwritten`` do not count): the free list is
        rebuilt, and the keys of the steps freed are forgotten."""
        held = self._held_slots().numpy()
        if overwritten is not None and len(overwritten):
            going = np.zeros(self.capacity, dtype=bool)
            going[overwritten] = True
            held = held[~going[held]]
        live = np.zeros(len(self._store_key), dtype=bool)
        live[self._refs_np[held].ravel()] = True
        if in_use is not None:
            live[in_use] = True
        dead = np.flatnonzero(~live & (self._store_key >= 0))
        for key in self._store_key[dead].tolist():
            del self._entry_of[key]
        self._store_key[dead] = -1
        self._free = np.flatnonzero(~live)
        self._next = self._since_sweep = 0

    def _fields(self, slots: torch.Tensor | slice) -> torch.Tensor:
        """[k, *y_shape] copies of the fields of the samples in `slots` ([k] int64 on the CPU, or a
        slice), on the storage's device; a buffer of windows gathers each one's L steps."""
        if self.window == 1:
            return self._y[slots].clone() if isinstance(slots, slice) else self._y[self._on_device(slots)]
        entries = self._refs[slots].reshape(-1)
        return self._store[self._on_device(entries)].reshape(-1, *self.y_shape)

    def _to_device(self, t: torch.Tensor, rows: np.ndarray | None) -> torch.Tensor:
        """t[rows] (None: all of t) as float32 on the storage's device (a GPU), safe to overwrite
        t once this returns.

        A host tensor goes through freshly allocated pinned memory with a non-blocking copy: a copy
        from pageable memory would wait for every kernel queued before it (the last train step),
        and the caching host allocator keeps the pinned block until the copy is done.
        """
        index = None if rows is None else torch.from_numpy(rows)
        if t.device.type != "cpu":
            return (t if index is None else t[index.to(t.device)]).to(self.device, torch.float32)
        if t.dtype != torch.float32:
            t = t.float()
        staged = torch.empty((len(t) if index is None else len(index), *t.shape[1:]), dtype=torch.float32, pin_memory=True)
        if index is None:
            staged.copy_(t)
        else:
            torch.index_select(t, 0, index, out=staged)
        return staged.to(self.device, non_blocking=True)

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
            y=self._fields(slots),
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


class RowCopier:
    """``dest[slots] = source[rows]`` into a CPU storage (a numpy array or view [capacity, ...]),
    with the staging memory of its gathers kept from call to call (a fresh array of hundreds of KiB
    on every call can be a fresh mmap for malloc, page faults included). The buffers' puts use it,
    and so does the benchmarks' stand-in storage.
    """

    #: Gathered rows of at least this many bytes are copied one by one, straight from their
    #: source; smaller ones are gathered into staging memory, then assigned in one call. The loop
    #: costs ~0.5 us of Python a row, the gather a second copy of every row. Measured here (32 rows
    #: of a pool into random slots, us a row, gather then assign / loop): 4 KiB 0.29 / 0.57,
    #: 16 KiB 1.48 / 0.86, 64 KiB 12.6 / 6.8.
    LOOP_BYTES = 16 * 1024

    def __init__(self) -> None:
        self._staging: dict[str, np.ndarray] = {}

    def copy(self, dest: np.ndarray, slots: np.ndarray, source: torch.Tensor | np.ndarray,
             rows: np.ndarray | None, name: str) -> None:
        """``dest[slots] = source[rows]`` (all of source where rows is None), cast to dest's dtype;
        `name` keys the staging memory. The rows must be in range (mode="clip")."""
        a = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
        if rows is not None and dest[0].nbytes >= self.LOOP_BYTES:
            for slot, row in zip(slots.tolist(), rows.tolist()):
                dest[slot] = a[row]
            return
        dest[slots] = self.gather(a, rows, name)

    def gather(self, a: np.ndarray, rows: np.ndarray | None, name: str) -> np.ndarray:
        """a[rows] (None: all of a) as float32, in staging memory kept under `name`."""
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        if rows is None:
            return a
        staging = self._staging.get(name)
        if staging is None or len(staging) < len(rows) or staging.shape[1:] != a.shape[1:]:
            staging = self._staging[name] = np.empty((len(rows), *a.shape[1:]), dtype=np.float32)
        # mode="clip": "raise" (the default) gathers through a temporary buffer, 5x slower; the
        # rows are in range (checked by the caller: put_many checks its y_rows).
        return np.take(a, rows, axis=0, out=staging[: len(rows)], mode="clip")


def _int_vector(values: torch.Tensor | Sequence[int], name: str) -> np.ndarray:
    """[n] int64 numpy array of a tensor (any device) or a sequence of ints."""
    if isinstance(values, torch.Tensor):
        values = values.cpu()
    array = np.asarray(values, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a vector [n], got shape {array.shape}")
    return array
