"""The trainer's side of ingest: a pool of ingest processes, their slots and their messages.

Each worker has one duplex pipe to the trainer and nothing else in common with the other workers:
    trainer -> worker   commands: ReadMember(m): read member m; ReadJob(j): read job j's stream (its
                        members one after another); FreeSlots([s, ...]): slots free again; Stop
    worker -> trainer   messages of several events of :mod:`datamove.streaming.events` (Opened, Step, ...)
in the compact formats of :mod:`datamove.streaming.events` (``encode``: a run of steps is a record
array, not a pickle). The trainer reads a worker's pipe with one ``os.read`` of everything waiting
in it and splits it into messages itself (the framing of ``Connection.send_bytes``: a 4-byte
big-endian length, then the bytes), instead of two reads and an unpickling per message.

Why pipes and not ``multiprocessing.Queue``: a Queue sends from a feeder thread, and a worker that
waits in ADIOS2 holds the GIL, so its step events left in bursts, late (measured: one worker spent
1.43 s of 3.27 s waiting for a free slot that the trainer had long returned). ``Connection.send``
writes from the calling thread. And a shared Queue has a lock: a worker killed while holding it
(ADIOS2 has crashed readers with SIGSEGV) would hang every other worker. Here a dead worker breaks
only its own pipe, which the trainer sees at once (end of file).

A worker waits for each step inside ADIOS2 (blocking: see ingest.py), so it cannot time out a
writer that stays silent; the pool can (:meth:`IngestPool.stop_silent`, called by the member feed):
a worker reading a member that has sent nothing for that long while it had a free slot is killed and
replaced, and its member ends as lost with that reason.

Slots are owned: worker ``w`` writes only slots ``w*k .. w*k+k-1`` (``k = n_slots // n_workers``)
and the trainer returns each slot to its owner. A replacement for a dead worker starts with its
predecessor's slots minus those the trainer still holds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from datamove.config import StreamConfig
from datamove.streaming.contract import Expectation, job_stream_name
from datamove.streaming.events import (
    Command,
    Done,
    Ended,
    Event,
    FreeSlots,
    JobEnded,
    JobOpened,
    Opened,
    ReadJob,
    ReadMember,
    Step,
    Stop,
    decode,
    encode_command,
)
from datamove.streaming.ingest import IngestSpec, run_ingest, slot_array

# At most this many events per poll(), so that a flood of steps cannot starve training.
MAX_EVENTS = 1024
# The most one read of a worker's pipe takes: far more than a worker can have sent unread (at most
# one step per slot it owns, 32 bytes each, between two polls), so one read empties the pipe.
READ_BYTES = 1 << 20


@dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: Connection
    member: int | None = None  # the member it reads; None when idle (or between a job's members)
    job: int | None = None  # the job whose stream it reads (the many-members form)
    listed: tuple[int, ...] = ()  # that job's members not ended yet, in order
    exited: bool = False  # sent "done": it left its loop on purpose
    progress: float = 0.0  # monotonic time of its last event, or of a slot given back to it
    stopped_why: str | None = None  # why the pool killed it (a silent stream)
    partial: bytes = b""  # the start of a message whose end has not arrived yet


class IngestPool:
    """``n_workers`` ingest processes reading member streams into ``n_slots`` shared-memory slots.

    Use: ``start()``; ``assign(member)`` (or ``assign_job(job)``) to an ``idle`` worker; ``poll()`` for events (each
    :class:`Step` names a slot of ``slots``, float32 [n_slots, n_fields, ny, nx], to copy and then
    ``release``); ``stop_silent(limit)`` now and then; ``finish()`` once every member has ended;
    ``close()`` always.
    """

    def __init__(
        self,
        *,
        stream: StreamConfig,
        stream_dir: str | Path,
        expect: Expectation,
        n_steps: int,
        n_members: int,
        n_workers: int,
        n_slots: int,
        nice: int = 0,
        say: Callable[[str], None] = print,
    ):
        if n_workers < 1:
            raise ValueError("an ingest pool needs at least one worker")
        if n_slots < n_workers:
            raise ValueError(
                f"trainer.slots ({n_slots}) must be at least the number of ingest workers ({n_workers}): "
                "each worker owns its own slots"
            )
        self.stream, self.stream_dir, self.expect = stream, str(stream_dir), expect
        self.n_steps, self.n_workers, self.n_slots, self.nice = n_steps, n_workers, n_slots, nice
        self.n_members = n_members
        self.per_worker = n_slots // n_workers
        self.say = say
        self.workers: list[_Worker] = []
        self.held: list[set[int]] = [set() for _ in range(n_workers)]  # slots the trainer holds, by owner
        self._ctx = mp.get_context("spawn")  # no fork of a process that holds torch threads
        self._finishing = False
        # One poll object over every worker's pipe, kept up to date as workers are replaced:
        # multiprocessing.connection.wait() builds a selector on every call.
        self._poller = select.poll()
        self._fd_worker: dict[int, int] = {}
        self.shm: shared_memory.SharedMemory | None = None
        self.slots: np.ndarray | None = None

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> IngestPool:
        shape = self.expect.sample_shape
        self.shm = shared_memory.SharedMemory(create=True, size=self.n_slots * int(np.prod(shape)) * 4)
        self.slots = slot_array(self.shm, self.n_slots, shape)
        self.workers = [self._spawn(w) for w in range(self.n_workers)]
        return self

    def _spawn(self, w: int) -> _Worker:
        first = w * self.per_worker
        own = range(first, first + self.per_worker)
        spec = IngestSpec(
            worker=w,
            stream=self.stream,
            stream_dir=self.stream_dir,
            expect=self.expect,
            n_steps=self.n_steps,
            n_members=self.n_members,
            shm_name=self.shm.name,
            n_slots=self.n_slots,
            free_slots=tuple(s for s in own if s not in self.held[w]),
            nice=self.nice,
        )
        mine, theirs = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=run_ingest, args=(spec, theirs), name=f"ingest-{w}", daemon=True)
        proc.start()
        theirs.close()  # else the trainer never sees end of file when the worker dies
        self._poller.register(mine.fileno(), select.POLLIN)
        self._fd_worker[mine.fileno()] = w
        return _Worker(proc=proc, conn=mine)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    @property
    def idle(self) -> list[int]:
        """Workers free to read a member."""
        return [i for i, w in enumerate(self.workers) if w.member is None and w.job is None and not w.exited]

    @property
    def busy(self) -> bool:
        """Whether any worker is reading a member (or a job's stream)."""
        return any(w.member is not None or w.job is not None for w in self.workers)

    def assign(self, member: int, worker: int | None = None) -> int:
        """Hand ``member`` to an idle worker (the first, unless ``worker`` is given); returns it."""
        idle = self.idle
        if not idle:
            raise RuntimeError("no idle ingest worker")
        w = idle[0] if worker is None else worker
        self.workers[w].member = member
        self.workers[w].progress = time.monotonic()
        self._send(w, ReadMember(member))
        return w

    def assign_job(self, job: int, worker: int | None = None) -> int:
        """Hand job ``job``'s stream to an idle worker (the first, unless ``worker`` is given); returns it."""
        idle = self.idle
        if not idle:
            raise RuntimeError("no idle ingest worker")
        w = idle[0] if worker is None else worker
        self.workers[w].job, self.workers[w].listed = job, ()
        self.workers[w].progress = time.monotonic()
        self._send(w, ReadJob(job))
        return w

    def release(self, slots) -> None:
        """The trainer has copied ``slots`` (slot ids: a sequence or an int array): back to the
        workers that own them, one message per worker (a pipe write costs more than the copy of a
        small field)."""
        slots = np.asarray(slots, dtype=np.int64).tolist()
        if not slots:
            return
        k = self.per_worker
        by_owner: dict[int, list[int]] = {}
        for slot in slots:  # a few tens of ints: a dict beats np.unique's sort (~20 us)
            by_owner.setdefault(slot // k, []).append(slot)
        now = time.monotonic()
        for owner, mine in by_owner.items():
            held = self.held[owner]
            if len(held) == k:
                self.workers[owner].progress = now  # it waited for us, not for its stream
            held.difference_update(mine)
            self._send(owner, FreeSlots(mine))

    def finish(self) -> None:
        """Every member has ended: the workers may exit."""
        self._finishing = True
        for w in range(len(self.workers)):
            self._send(w, Stop())

    def close(self, timeout: float = 10.0) -> None:
        """Stop every worker (mid-member if need be), wait for them, free the shared memory."""
        self.finish()
        for w in self.workers:
            # A worker mid-member may be blocked in ADIOS2 waiting for a step: it cannot see the
            # stop, so it gets a second, not ``timeout``.
            w.proc.join(timeout=1.0 if w.member is not None or w.job is not None else timeout)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(timeout=2)
            self._unregister(w.conn)
            w.conn.close()
        self.slots = None
        if self.shm is not None:
            self.shm.close()
            self.shm.unlink()
            self.shm = None

    # -- messages ---------------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """Events that have arrived, waiting up to ``timeout`` s for the first (about MAX_EVENTS at most).

        A worker that died (no Done before its pipe closed) is replaced, and its member, if it had
        one, ends as lost: ``Ended(member, "lost", "ingest process crashed ...", 0, worker)``; its
        job's stream, if it read one, ends too (``JobEnded`` with the members that had not begun).
        """
        events: list[Event] = []
        ready = self._poller.poll(timeout * 1000)
        while ready and len(events) < MAX_EVENTS:
            for fd, _mask in ready:  # one read per ready worker and round: none starves
                w = self._fd_worker.get(fd)
                if w is None:
                    continue
                batch = self._receive(w)
                if batch is None:  # end of file
                    events.extend(self._lost_worker(w))
                    continue
                # Steps are most events: their slot is noted here, the rest by _note.
                self.workers[w].progress = time.monotonic()
                held = self.held[w]
                for ev in batch:
                    if type(ev) is Step:
                        held.add(ev.slot)
                    else:
                        self._note(w, ev)
                events.extend(batch)
            ready = self._poller.poll(0)
        return events

    def _receive(self, w: int) -> list[Event] | None:
        """The events of every whole message waiting in worker ``w``'s pipe, in order (one read;
        the start of a message cut by it is kept for the next); None at end of file."""
        wk = self.workers[w]
        try:
            data = os.read(wk.conn.fileno(), READ_BYTES)
        except OSError:  # a connection reset: as good as end of file
            data = b""
        if not data:
            return None
        if wk.partial:
            data = wk.partial + data
        view, end, pos = memoryview(data), len(data), 0
        events: list[Event] = []
        while end - pos >= 4:
            size, head = int.from_bytes(data[pos : pos + 4], "big", signed=True), 4
            if size == -1:  # Connection.send_bytes' header of a message of 2 GiB or more
                if end - pos < 12:
                    break
                size, head = int.from_bytes(data[pos + 4 : pos + 12], "big"), 12
            if end - pos - head < size:
                break
            events.extend(decode(view[pos + head : pos + head + size]))
            pos += head + size
        wk.partial = data[pos:] if pos < end else b""
        return events

    def stop_silent(self, limit: float) -> None:
        """Kill workers whose member has sent nothing for ``limit`` s although they had a free slot;
        poll() then sees their end of file and ends the member as lost."""
        now = time.monotonic()
        for w, wk in enumerate(self.workers):
            if (wk.member is None and wk.job is None) or wk.stopped_why or len(self.held[w]) == self.per_worker:
                continue
            if now - wk.progress > limit:
                wk.stopped_why = f"no step for {limit:g} s (stream.member_timeout_s)"
                wk.proc.kill()

    def _note(self, w: int, ev: Event) -> None:
        """What an event other than a Step (noted in poll) tells of its worker."""
        wk = self.workers[w]
        if isinstance(ev, Step):
            self.held[w].add(ev.slot)
        elif isinstance(ev, Opened):
            wk.member = ev.member
        elif isinstance(ev, Ended):
            wk.member = None
            wk.listed = tuple(m for m in wk.listed if m != ev.member)
        elif isinstance(ev, JobOpened):
            wk.listed = tuple(ev.members)
        elif isinstance(ev, JobEnded):
            wk.job, wk.listed = None, ()
        elif isinstance(ev, Done):
            wk.exited = True

    def _lost_worker(self, w: int) -> list[Event]:
        old = self.workers[w]
        self._unregister(old.conn)
        old.conn.close()
        old.proc.join(timeout=5)
        if old.exited or self._finishing:
            return []
        code = old.proc.exitcode
        if old.stopped_why:
            reason = old.stopped_why
            what = f"member {old.member}" if old.member is not None else job_stream_name(old.job)
            self.say(f"{what}: {reason}; its ingest worker {w} stopped, starting another")
        else:
            reason = f"ingest process crashed (exit code {code})"
            self.say(f"ingest worker {w} died (exit code {code}); starting another")
        self.workers[w] = self._spawn(w)
        lost = [] if old.member is None else [Ended(old.member, "lost", reason, 0, w)]
        if old.job is not None:  # the members of its job's stream that had not begun wait for a rerun
            unsent = tuple(m for m in old.listed if m != old.member)
            lost.append(JobEnded(old.job, unsent, reason, w))
        return lost

    def _unregister(self, conn: Connection) -> None:
        if not conn.closed and self._fd_worker.pop(conn.fileno(), None) is not None:
            self._poller.unregister(conn.fileno())

    def _send(self, w: int, command: Command) -> None:
        try:
            self.workers[w].conn.send_bytes(encode_command(command))
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # a dead worker: poll() sees its end of file and replaces it
