"""Buffer policies. Each one overrides only the hooks of `Buffer` in which it differs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamove.reservoir.base import Batch, Buffer


class ReservoirBuffer(Buffer):
    """Random replacement, sampling with replacement; samples can be seen several times.

    `put` appends while the buffer is not full, then replaces a uniformly chosen held sample (an
    eviction), so it never refuses a sample. `sample` draws B positions uniformly with replacement
    among the held samples, which stay.
    """

    name = "reservoir"
    consumes = False
    replaces = True

    def _victims(self, members: np.ndarray, steps: np.ndarray, n_free: int) -> np.ndarray:
        # One draw per sample past the free slots, all in one call: torch fills a batch element by
        # element from the generator's stream, so the values and the generator's state after are
        # those of one draw per put (tested against puts one by one).
        return torch.randint(len(self), (len(members) - n_free,), generator=self._gen).numpy()

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
            x=self._x[run].clone(), y=self._fields(run), member=self._member[run].clone(),
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
    numpy on the base's views of the CPU ring and metadata. On a GPU the host time of a draw is
    mostly per-op dispatch (a few us per aten op): done in torch, this bookkeeping made a draw 114
    aten ops (`reservoir`: 31, this one: 19) and 24 % of a train step on an H100.
    """

    name = "firo"
    consumes = True

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
            y=self._fields(torch.from_numpy(slots)),
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
        # put instead of counting the held members of a [capacity] array on every put. numpy, as
        # the victim loop reads and writes single entries (a torch op each would cost microseconds).
        self._index: dict[int, int] = {}
        self._ids: list[int] = []
        self._held_of = np.zeros(16, dtype=np.int64)
        self._puts_of = np.zeros(16, dtype=np.int64)

    def _member_index(self, member: int) -> int:
        i = self._index.get(member)
        if i is None:
            i = self._index[member] = len(self._ids)
            self._ids.append(member)
            if i == len(self._held_of):
                self._held_of = np.concatenate([self._held_of, np.zeros_like(self._held_of)])
                self._puts_of = np.concatenate([self._puts_of, np.zeros_like(self._puts_of)])
        return i

    def _victims(self, members: np.ndarray, steps: np.ndarray, n_free: int) -> np.ndarray:
        # Members are registered up front, in the order they first come, as one put each would.
        # The member loop below then sees members that have not yet sent a sample: they hold 0,
        # and 0 never ties for the most held (the incoming sample's member counts at least 1).
        index = np.array([self._member_index(m) for m in members.tolist()], dtype=np.int64)
        held, puts, ids = self._held_of, self._puts_of, self._ids
        np.add.at(held, index[:n_free], 1)
        np.add.at(puts, index[:n_free], 1)
        victims = np.empty(len(members) - n_free, dtype=np.int64)
        if not len(victims):
            return victims

        def draw(high: int) -> int:  # the same single draws, in the same order, as one put each
            return int(torch.randint(high, (1,), generator=self._gen))

        # A replacing buffer never removes samples: its ring stays the identity from head 0, so
        # positions are slots. A local copy follows the replacements of this call.
        member_at = self._member_np[: self._size].copy()
        n_members = len(ids)
        for j, (i, member) in enumerate(zip(index[n_free:].tolist(), members[n_free:].tolist())):
            after = held[:n_members].copy()
            after[i] += 1  # the incoming sample counts
            tied = np.flatnonzero(after == after.max())
            loser = int(tied[draw(len(tied))])
            # The incoming sample is kept with probability held / nth when its own member loses.
            kept = loser != i or (held[i] > 0 and draw(int(puts[i]) + 1) < held[i])
            victims[j] = -1
            if kept:
                positions = np.flatnonzero(member_at == ids[loser])
                victims[j] = positions[draw(len(positions))]
                member_at[victims[j]] = member
                held[loser] -= 1
                held[i] += 1
            puts[i] += 1
        return victims

    def _policy_state(self) -> dict[str, Any]:
        # Members in first-appearance order and their put counts; held counts follow from the samples.
        n = len(self._ids)
        return {"members": list(self._ids), "puts": torch.from_numpy(self._puts_of[:n].copy())}

    def _load_policy_state(self, state: dict[str, Any]) -> None:
        self._index, self._ids = {}, []
        self._held_of = np.zeros(max(16, len(state["members"])), dtype=np.int64)
        self._puts_of = np.zeros_like(self._held_of)
        for member in state["members"]:
            self._member_index(int(member))
        n = len(self._ids)
        self._puts_of[:n] = torch.as_tensor(state["puts"]).numpy()
        for member, count in zip(*self.held_members().unique(return_counts=True)):
            self._held_of[self._index[int(member)]] = count
