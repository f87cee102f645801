"""Buffer policies. Each one overrides only the hooks of `Buffer` in which it differs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamove.reservoir.base import Batch, Buffer, Displaced


class ReservoirBuffer(Buffer):
    """Random replacement, sampling with replacement; samples can be seen several times.

    `put` appends while the buffer is not full, then replaces a uniformly chosen held sample (an
    eviction), so it never refuses a sample. `sample` draws B positions uniformly with replacement
    among the held samples, which stay.
    """

    name = "reservoir"
    consumes = False
    replaces = True

    def _victim(self, member: int, step: int) -> int | None:
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

    def sample(self, batch_size: int) -> Batch:
        k = min(batch_size, len(self))
        if batch_size < 1 or k == 0 or self._head + k > self.capacity:
            return super().sample(batch_size)  # the errors, and a draw across the end of storage
        # fifo only ever removes its front, so its ring of slot ids stays the identity and the k
        # oldest samples are the slots head..head+k: slices instead of index tensors, a few ops
        # per draw (on a GPU each op costs a launch).
        run = slice(self._head, self._head + k)
        self._seen[run] += 1
        self._n_sampled += k
        batch = Batch(
            x=self._x[run].clone(), y=self._y[run].clone(), member=self._member[run].clone(),
            step=self._step[run].clone(),
        )
        self._head = (self._head + k) % self.capacity
        self._size -= k
        return batch


class FiroBuffer(Buffer):
    """First in, random out: as fifo (each sample used once, backpressure when full), but a batch
    is min(B, len) held samples drawn uniformly without replacement, in uniformly random order,
    which breaks up the time order in which the solvers produce samples.

    A draw is O(B), and apart from its random numbers, the index transfer and the field gathers it
    dispatches no torch op: the index bookkeeping (which positions, which slot ids move) runs in
    numpy on views of the CPU ring and metadata. On a GPU the host time of a draw is mostly per-op
    dispatch (a few us per aten op): done in torch, this bookkeeping made a draw 114 aten ops
    (`reservoir`: 31, this one: 19) and 24 % of a train step on an H100.
    """

    name = "firo"
    consumes = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # numpy views sharing memory with the CPU tensors (never reassigned: load_state_dict copies
        # into them), so the bookkeeping below writes the buffer's own state.
        self._ring_np = self._ring.numpy()
        self._seen_np = self._seen.numpy()
        self._member_np = self._member.numpy()
        self._step_np = self._step.numpy()

    def _positions(self, batch_size: int) -> np.ndarray:
        """[k] int64 distinct positions in 0..len-1, k = min(batch_size, len): a uniform random
        k-subset of the held positions, in uniformly random order."""
        n = len(self)
        k = min(batch_size, n)
        if 4 * k >= n:
            return torch.randperm(n, generator=self._gen)[:k].numpy()
        # B << len: O(B). The first occurrences of i.i.d. uniform positions are sequential
        # sampling without replacement: each new one is uniform over those not yet drawn, so the
        # first k of them are a uniform k-subset, already in uniform order (no shuffle needed).
        # m leaves room for the ~m^2 / 2n repeats expected; a short stream is continued.
        m = k + k * k // n + 16
        stream = torch.randint(n, (m,), generator=self._gen).numpy()
        while True:
            _, first = np.unique(stream, return_index=True)
            if len(first) >= k:
                return stream[np.sort(first)[:k]]
            more = torch.randint(n, (m,), generator=self._gen).numpy()
            stream = np.concatenate([stream, more])

    def _pick(self, batch_size: int) -> torch.Tensor:
        return torch.from_numpy(self._positions(batch_size))

    def sample(self, batch_size: int) -> Batch:
        """As `Buffer.sample`: min(batch_size, len) samples, in the order `_pick` gives, leave."""
        if batch_size < 1 or self._size == 0:
            return super().sample(batch_size)  # the errors
        n = self._size
        positions = self._positions(batch_size)
        k = len(positions)
        # Swap-remove into the tail: the drawn slot ids go to the last k held positions (which
        # become the first free ones: the head never moves), the tail's survivors to the holes the
        # drawn ones leave in front of it. Holes and survivors are equally many (k minus the drawn
        # in the tail) and disjoint sets of positions, so the moves cannot overwrite each other.
        lo = n - k
        in_tail = positions >= lo
        holes = positions[~in_tail]
        survivor = np.ones(k, dtype=bool)
        survivor[positions[in_tail] - lo] = False
        survivors = np.flatnonzero(survivor) + lo
        # Position p is ring entry (head + p) mod capacity: mode="wrap" takes the modulo.
        ring, head = self._ring_np, self._head
        slots = ring.take(head + positions, mode="wrap")  # a copy
        ring.put(head + holes, ring.take(head + survivors, mode="wrap"), mode="wrap")
        ring.put(np.arange(head + lo, head + n), slots, mode="wrap")
        self._size = lo
        # Distinct slots, so a fancy += counts each once (as index_add_ would).
        self._seen_np[slots] += 1
        self._n_sampled += k
        dev_slots = self._on_device(torch.from_numpy(slots))
        return Batch(
            x=self._x[dev_slots],
            y=self._y[dev_slots],
            member=torch.from_numpy(self._member_np[slots]),
            step=torch.from_numpy(self._step_np[slots]),
        )


class BalancedBuffer(ReservoirBuffer):
    """A reservoir that keeps a stratified sample of the stream: balanced over members, and within
    each member uniform over its time steps (DATAMOVE's own policy; see docs/reservoir.md).

    Batches are drawn as in `ReservoirBuffer` (uniform, with replacement; samples stay); only the
    replacement differs. When the buffer is full, the incoming sample of member a is counted with a's
    held samples, and the member to lose a sample is drawn uniformly among those that would then
    hold the most:

    * another member b: a uniformly chosen held sample of b is replaced by the incoming one;
    * a itself: reservoir sampling (Algorithm R) within a: the incoming sample, a's j-th, is kept
      with probability k/j (k = samples of a held) in place of a uniformly chosen held sample of a,
      and is otherwise turned away (`Displaced.reason == "rejected"`).

    So, once full, no member ever holds more samples than the most any member held before, every
    member streamed so far keeps an equal share (within one sample, while members <= capacity),
    and a member's held steps are a uniform sample of all the steps it sent, not its latest ones.
    """

    name = "balanced"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # Bookkeeping per member, indexed by the order in which members first appeared: O(1) per
        # put instead of counting the held members of a [capacity] array on every put.
        self._index: dict[int, int] = {}
        self._ids: list[int] = []
        self._held_of = torch.zeros(16, dtype=torch.int64)
        self._puts_of = torch.zeros(16, dtype=torch.int64)

    def _member_index(self, member: int) -> int:
        i = self._index.get(member)
        if i is None:
            i = self._index[member] = len(self._ids)
            self._ids.append(member)
            if i == len(self._held_of):
                self._held_of = torch.cat([self._held_of, torch.zeros_like(self._held_of)])
                self._puts_of = torch.cat([self._puts_of, torch.zeros_like(self._puts_of)])
        return i

    def put(self, x: torch.Tensor, y: torch.Tensor, *, member: int, step: int) -> Displaced | None:
        i = self._member_index(int(member))
        displaced = super().put(x, y, member=member, step=step)
        self._puts_of[i] += 1
        if displaced is None or displaced.reason != "rejected":
            self._held_of[i] += 1
        if displaced is not None and displaced.reason == "evicted":
            self._held_of[self._index[displaced.member]] -= 1
        return displaced

    def _victim(self, member: int, step: int) -> int | None:
        n = len(self._ids)
        i = self._index[int(member)]
        after = self._held_of[:n].clone()
        after[i] += 1  # the incoming sample counts
        tied = (after == after.max()).nonzero().squeeze(1)
        loser = int(tied[torch.randint(len(tied), (1,), generator=self._gen)])
        if loser == i:
            held, nth = int(self._held_of[i]), int(self._puts_of[i]) + 1
            if held == 0 or int(torch.randint(nth, (1,), generator=self._gen)) >= held:
                return None  # kept with probability held / nth
        # A replacing buffer never removes samples: its ring stays the identity from head 0, so
        # positions are slots.
        positions = (self._member[: self._size] == self._ids[loser]).nonzero().squeeze(1)
        return int(positions[torch.randint(len(positions), (1,), generator=self._gen)])

    def _policy_state(self) -> dict[str, Any]:
        # Members in first-appearance order and their put counts; held counts follow from the samples.
        n = len(self._ids)
        return {"members": list(self._ids), "puts": self._puts_of[:n].clone()}

    def _load_policy_state(self, state: dict[str, Any]) -> None:
        self._index, self._ids = {}, []
        self._held_of = torch.zeros(max(16, len(state["members"])), dtype=torch.int64)
        self._puts_of = torch.zeros_like(self._held_of)
        for member in state["members"]:
            self._member_index(int(member))
        n = len(self._ids)
        self._puts_of[:n] = state["puts"]
        for member, count in zip(*self.held_members().unique(return_counts=True)):
            self._held_of[self._index[int(member)]] = count
