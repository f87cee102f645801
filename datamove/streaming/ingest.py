"""Ingest processes: read member streams and hand their steps to the trainer through shared memory.

Why separate processes: the ADIOS2 bindings hold the GIL in ``Open`` and ``begin_step``, so a reader
thread inside the training process would stall training for seconds.

Why one stream at a time per process: several SST readers in one process crash writers of this
ADIOS2 build (segfault in the writer's ``EndStep``, measured with 8 concurrent members and one
polling reader process; one reader per process never crashed). So the trainer runs a pool of
``trainer.ingest_workers`` processes (:class:`datamove.streaming.pool.IngestPool`) and dispatches
each member whose stream has appeared to an idle worker; a solver that finds every worker busy waits
in ``Open`` (bounded by ``stream.open_timeout_s``).

A worker copies each field straight into one of its own free shared-memory slots and sends a small
event through its pipe. Back-pressure: a worker that has no free slot waits for one and reads nothing
meanwhile, so the SST queue of its writer fills and (with ``QueueFullPolicy=Block``) the solver
waits. Nothing is dropped.

Events sent to the trainer: :mod:`datamove.streaming.events` (several per message, in its compact
formats: a run of steps as a record array). Commands from the trainer, likewise encoded
(``encode_command``): ReadMember(m), FreeSlots([s, ...]) (slots free again), Stop.
"""

from __future__ import annotations

import math
import os
import select
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from datamove.config import StreamConfig
from datamove.streaming.contract import ContractError, Expectation, StreamError, contact_file
from datamove.streaming.events import (
    Done,
    Ended,
    Fatal,
    FreeSlots,
    Info,
    Opened,
    ReadMember,
    Step,
    Stop,
    decode_command,
    encode,
)
from datamove.streaming.reader import MemberReader, Poll

# A contact file can be seen before the writer is ready for readers: failed opens are retried for
# this long before the member counts as lost.
OPEN_RETRY_S = 10.0
# Events sent to the trainer in one message at most (see _Inbox.post).
BATCH = 16
# How long an idle worker, or one waiting for a free slot, waits on its pipe between checks that
# the trainer is still alive.
POLL_S = 0.2


@dataclass(frozen=True, kw_only=True)
class IngestSpec:
    """What one ingest worker reads and where it puts it."""

    worker: int
    stream: StreamConfig
    stream_dir: str
    expect: Expectation
    n_steps: int  # steps expected of each member
    shm_name: str
    n_slots: int  # all slots of the shared memory
    free_slots: tuple[int, ...]  # the slots this worker owns and may write now
    nice: int = 0  # added to the worker's niceness: training keeps the CPU it needs


def slot_array(shm: shared_memory.SharedMemory, n_slots: int, sample_shape) -> np.ndarray:
    """A float32 view [n_slots, n_fields, ny, nx] of the hand-off memory."""
    return np.ndarray((n_slots, *sample_shape), dtype=np.float32, buffer=shm.buf)


def streams_present(stream: StreamConfig, stream_dir: str | Path, members=None) -> list[int]:
    """Members (of ``members``, or any) whose writer has opened its stream (SST: a non-empty contact
    file; BP5: a file with its index), ascending. One directory listing, whatever the ensemble's size."""
    sst = stream.engine.upper() == "SST"
    suffix = ".sst" if sst else ".bp"
    wanted = None if members is None else set(members)
    try:
        entries = list(os.scandir(stream_dir))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        stem, dot, ext = entry.name.rpartition(".")
        if not dot or f".{ext}" != suffix or not stem.startswith("member-") or not stem[7:].isdigit():
            continue
        member = int(stem[7:])
        if wanted is not None and member not in wanted:
            continue
        try:
            ready = entry.stat().st_size > 0 if sst else (Path(entry.path) / "md.idx").exists()
        except FileNotFoundError:
            continue  # gone between the listing and now
        if ready:
            found.append(member)
    return sorted(found)


def contact_signature(stream_dir: str | Path, member: int) -> tuple[int, int] | None:
    """(inode, mtime) of a member's contact file, to tell a rerun's file from a dead writer's."""
    try:
        st = contact_file(stream_dir, member).stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


class _Inbox:
    """The worker's end of its pipe: member commands, returned slots, and the stop."""

    def __init__(self, conn, free_slots):
        self.conn, self.free = conn, deque(free_slots)
        self.pending: list[tuple] = []
        # One poll object for the life of the worker: Connection.poll() builds a selector on every
        # call, ~10 us of Python, paid once or twice per step.
        self._poller = select.poll()
        self._poller.register(conn.fileno(), select.POLLIN)
        self.members: deque[int] = deque()
        self.stopping = False
        self.parent = os.getppid()

    @property
    def stop(self) -> bool:
        """Stop asked, or the trainer is gone (a worker must not outlive it)."""
        return self.stopping or os.getppid() != self.parent

    def pump(self, timeout: float = 0.0) -> None:
        """Take every message waiting, waiting up to ``timeout`` s for the first (GIL released)."""
        try:
            if not self._poller.poll(timeout * 1000):
                return
            while True:
                command = decode_command(self.conn.recv_bytes())
                if type(command) is Stop:
                    self.stopping = True
                elif type(command) is FreeSlots:
                    self.free.extend(command.slots)
                elif type(command) is ReadMember:
                    self.members.append(command.member)
                if not self._poller.poll(0):
                    return
        except (EOFError, OSError):
            self.stopping = True  # the trainer closed its end

    def slot(self) -> int | None:
        """A free slot, waiting for the trainer to return one; None on stop."""
        if not self.free:
            self.flush()  # the trainer frees slots only for steps it has heard of
        while not self.free:
            if self.stop:
                return None
            self.pump(POLL_S)
        return self.free.popleft()

    def post(self, event: tuple) -> None:
        """Queue an event for the next flush: while steps are queued in the writer, the worker
        reads them back to back and the trainer gets them as one message (one wake-up, one write),
        not one each. Flushed before the worker waits for anything, and every BATCH events."""
        self.pending.append(event)
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.send(self.pending)
            self.pending = []

    def send(self, events: list) -> None:
        try:
            self.conn.send_bytes(encode(events))  # framed by length: the trainer splits what it reads (pool._receive)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.stopping = True  # the trainer is gone


def run_ingest(spec: IngestSpec, conn) -> None:
    """Entry point of an ingest process: read the members the trainer sends, one at a time."""
    if spec.nice:
        os.nice(spec.nice)
    inbox = _Inbox(conn, spec.free_slots)
    shm = shared_memory.SharedMemory(name=spec.shm_name)
    try:
        slots = slot_array(shm, spec.n_slots, spec.expect.sample_shape)
        while not inbox.stop:
            if not inbox.members:
                inbox.pump(POLL_S)
                continue
            member = inbox.members.popleft()
            inbox.post(_read_member(spec, member, slots, inbox))
            inbox.flush()
        del slots
    except Exception:
        inbox.post(Fatal(spec.worker, traceback.format_exc()))
    finally:
        shm.close()
        inbox.post(Done(spec.worker))
        inbox.flush()
        conn.close()


def _read_member(spec: IngestSpec, member: int, slots, inbox: _Inbox) -> Ended:
    """Read one member to its end; how it ended."""
    reader = MemberReader(stream=spec.stream, stream_dir=spec.stream_dir, member=member, expect=spec.expect)
    zeros = np.zeros(slots[0].size, dtype=slots.dtype)  # the finiteness check's other operand
    give_up = time.monotonic() + OPEN_RETRY_S
    while True:
        try:
            reader.open()
            break
        except StreamError as exc:
            if time.monotonic() > give_up or inbox.stop:
                return Ended(member, "lost", exc.reason, 0, spec.worker)
            inbox.pump(0.2)
    inbox.post(Opened(member, spec.worker))
    try:
        while not inbox.stop:
            # A free slot first, then wait in ADIOS2 for the step, blocking: a blocked reader wakes
            # the moment a step arrives (polling with timeout 0 and a 1 ms sleep lost 40 % of the
            # bare SST rate at 128x128: the writer's queue of 4 steps waited out each sleep), and a
            # positive timeout is not an option (it intermittently segfaults the SST reader: ADIOS2
            # #1862, 2-3 crashes in 6 runs in 2.12.1). The GIL held meanwhile blocks nothing: this
            # process has no other thread. A writer that dies ends the wait with an error; a writer
            # that stays silent is the trainer's to time out (IngestPool: stream.member_timeout_s).
            slot = inbox.slot()
            if slot is None:
                break
            status = reader.poll(timeout=0.0, check=False)  # read_step checks each step
            if status is Poll.NOT_READY:
                inbox.flush()  # nothing queued in the writer: the trainer hears of all read so far
                status = reader.poll(timeout=-1.0, check=False)
            if status is not Poll.STEP:
                inbox.free.appendleft(slot)
                if status is Poll.NOT_READY:
                    continue
                n = reader.steps_read
                if n == spec.n_steps:
                    return Ended(member, "complete", "", n, spec.worker)
                return Ended(member, "lost", f"stream ended after {n} of {spec.n_steps} steps", n, spec.worker)
            if reader.steps_read == 0:
                inbox.post(Info(member, reader.info.params))
            t = reader.read_step(slots[slot])
            # A dot product with zeros instead of isfinite().all(): 0 x NaN and 0 x inf are NaN, every
            # finite value gives 0 (no overflow, whatever the values), it allocates nothing, and BLAS
            # runs it 3-4x faster than the float64 sum used before (128x128: 3 against 9 us; 512x512:
            # 23 against 105 us a step, measured here).
            with np.errstate(invalid="ignore"):
                check = float(np.dot(slots[slot].reshape(-1), zeros))
            if not math.isfinite(check):
                inbox.free.append(slot)
                bad = [name for name, f in zip(spec.expect.fields, slots[slot]) if not np.isfinite(f).all()]
                raise StreamError(member, f"step {reader.steps_read + 1}: non-finite values in {', '.join(map(repr, bad))}")
            reader.end_step()
            inbox.post(Step(member, reader.steps_read, t, slot))
            inbox.pump(0.0)  # returned slots, and a stop
        return Ended(member, "lost", "trainer stopped reading", reader.steps_read, spec.worker)
    except ContractError as exc:
        # The solver writes something else than the config declares: a rerun would do the same.
        return Ended(member, "lost", exc.reason, reader.steps_read, spec.worker, final=True)
    except StreamError as exc:
        return Ended(member, "lost", exc.reason, reader.steps_read, spec.worker)
    finally:
        reader.close()
