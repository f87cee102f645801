"""Buffer policies. Each one overrides only the hooks of `Buffer` in which it differs."""

from __future__ import annotations

from typing import Any

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
    is min(B, len) held samples drawn uniformly without replacement, which breaks up the time order
    in which the solvers produce samples."""

    name = "firo"
    consumes = True

    def _pick(self, batch_size: int) -> torch.Tensor:
        n = len(self)
        if 4 * batch_size >= n:
            return torch.randperm(n, generator=self._gen)[:batch_size]
        # B << len: O(B) work instead of permuting every held position. Given how many distinct
        # values m draws with replacement give, they are a uniform random subset of that size
        # (symmetry), and a uniform subset of it of size B is a uniform B-subset; randperm also
        # puts it in random order. m leaves room for the ~m^2 / 2n repeats expected.
        m = batch_size + batch_size * batch_size // n + 16
        while True:
            distinct = torch.randint(n, (m,), generator=self._gen).unique()
            if len(distinct) >= batch_size:
                return distinct[torch.randperm(len(distinct), generator=self._gen)[:batch_size]]


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
