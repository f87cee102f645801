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
(``encode_command``): ReadMember(m), ReadJob(j) (a job's stream of many members, one after
another: the same events per member, between JobOpened and JobEnded), FreeSlots([s, ...]) (slots
free again), Stop.
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
    JobEnded,
    JobOpened,
    Opened,
    ReadJob,
    ReadMember,
    Step,
    Stop,
    decode_command,
    encode,
)
from datamove.streaming.reader import JobReader, MemberReader, Poll

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
    n_members: int  # the ensemble's: a job's stream lists ids in [0, n_members)
    shm_name: str
    n_slots: int  # all slots of the shared memory
    free_slots: tuple[int, ...]  # the slots this worker owns and may write now
    nice: int = 0  # added to the worker's niceness: training keeps the CPU it needs


def slot_array(shm: shared_memory.SharedMemory, n_slots: int, sample_shape) -> np.ndarray:
    """A float32 view [n_slots, n_fields, ny, nx] of the hand-off memory."""
    return np.ndarray((n_slots, *sample_shape), dtype=np.float32, buffer=shm.buf)


def streams_present(stream: StreamConfig, stream_dir: str | Path, members=None, *, prefix: str = "member-"
                    ) -> list[int]:
    """Members (of ``members``, or any) whose writer has opened its stream (SST: a non-empty contact
    file; BP5: a file with its index), ascending. One directory listing, whatever the ensemble's size.
    ``prefix="job-"``: the jobs whose stream of the many-members form is open (SST) instead."""
    sst = stream.engine.upper() == "SST"
    suffix = ".sst" if sst else ".bp"
    wanted = None if members is None else set(members)
    try:
        entries = list(os.scandir(stream_dir))
    except FileNotFoundError:
        return []
    found = []
    cut = len(prefix)
    for entry in entries:
        stem, dot, ext = entry.name.rpartition(".")
        if not dot or f".{ext}" != suffix or not stem.startswith(prefix) or not stem[cut:].isdigit():
            continue
        member = int(stem[cut:])
        if wanted is not None and member not in wanted:
            continue
        try:
            ready = entry.stat().st_size > 0 if sst else (Path(entry.path) / "md.idx").exists()
        except FileNotFoundError:
            continue  # gone between the listing and now
        if ready:
            found.append(member)
    return sorted(found)


def contact_signature(stream_dir: str | Path, member: int | str) -> tuple[int, int] | None:
    """(inode, mtime) of a member's contact file (or that of the stream named ``member``, a job's),
    to tell a rerun's file from a dead writer's."""
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
        self.members: deque[ReadMember | ReadJob] = deque()  # streams to read, in order
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
                elif type(command) in (ReadMember, ReadJob):
                    self.members.append(command)
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
            command = inbox.members.popleft()
            if type(command) is ReadJob:
                for event in _read_job(spec, command.job, slots, inbox):
                    inbox.post(event)
            else:
                inbox.post(_read_member(spec, command.member, slots, inbox))
            inbox.flush()
        del slots
    except Exception:
        inbox.post(Fatal(spec.worker, traceback.format_exc()))
    finally:
        shm.close()
        inbox.post(Done(spec.worker))
        inbox.flush()
        conn.close()


def _check_finite(spec: IngestSpec, reader: MemberReader, slots, slot: int, zeros, inbox: _Inbox) -> None:
    """Raise StreamError, naming the fields, if the step just read into ``slot`` has NaN or Inf
    (its slot freed first).

    A dot product with zeros instead of isfinite().all(): 0 x NaN and 0 x inf are NaN, every
    finite value gives 0 (no overflow, whatever the values), it allocates nothing, and BLAS runs it
    3-4x faster than the float64 sum used before (128x128: 3 against 9 us; 512x512: 23 against
    105 us a step, measured here)."""
    with np.errstate(invalid="ignore"):
        check = float(np.dot(slots[slot].reshape(-1), zeros))
    if not math.isfinite(check):
        inbox.free.append(slot)
        bad = [name for name, f in zip(spec.expect.fields, slots[slot]) if not np.isfinite(f).all()]
        raise reader.error(StreamError, f"step {reader.steps_read + 1}: non-finite values in {', '.join(map(repr, bad))}")


def _open(reader: MemberReader, inbox: _Inbox) -> StreamError | None:
    """Open ``reader``, retrying for OPEN_RETRY_S (a contact file can be seen before its writer is
    ready); the last error if it never opened."""
    give_up = time.monotonic() + OPEN_RETRY_S
    while True:
        try:
            reader.open()
            return None
        except StreamError as exc:
            if time.monotonic() > give_up or inbox.stop:
                return exc
            inbox.pump(0.2)


def _steps(reader: MemberReader, inbox: _Inbox):
    """The slot each next step of ``reader`` is to be read into, as the steps come (the step is
    open: read it, then ``end_step``); ends with the stream (``reader.ended``) or on a stop.

    A free slot first, then wait in ADIOS2 for the step, blocking: a blocked reader wakes the
    moment a step arrives (polling with timeout 0 and a 1 ms sleep lost 40 % of the bare SST rate
    at 128x128: the writer's queue of 4 steps waited out each sleep), and a positive timeout is not
    an option (it intermittently segfaults the SST reader: ADIOS2 #1862, 2-3 crashes in 6 runs in
    2.12.1). The GIL held meanwhile blocks nothing: this process has no other thread. A writer that
    dies ends the wait with an error; a writer that stays silent is the trainer's to time out
    (IngestPool: stream.member_timeout_s)."""
    while not inbox.stop:
        slot = inbox.slot()
        if slot is None:
            return
        status = reader.poll(timeout=0.0, check=False)  # read_step checks each step
        if status is Poll.NOT_READY:
            inbox.flush()  # nothing queued in the writer: the trainer hears of all read so far
            status = reader.poll(timeout=-1.0, check=False)
        if status is Poll.STEP:
            yield slot
            continue
        inbox.free.appendleft(slot)
        if status is Poll.END:
            return


def _read_into(reader: MemberReader, slots, slot: int, inbox: _Inbox) -> float:
    """Read the open step into ``slot``; its time. On an error the slot is free again before it is
    raised (the member ends, and the worker reads on with all its slots)."""
    try:
        return reader.read_step(slots[slot])
    except StreamError:
        inbox.free.append(slot)
        raise


def _read_member(spec: IngestSpec, member: int, slots, inbox: _Inbox) -> Ended:
    """Read one member to its end; how it ended."""
    reader = MemberReader(stream=spec.stream, stream_dir=spec.stream_dir, member=member, expect=spec.expect)
    zeros = np.zeros(slots[0].size, dtype=slots.dtype)  # the finiteness check's other operand
    failed = _open(reader, inbox)
    if failed is not None:
        return Ended(member, "lost", failed.reason, 0, spec.worker)
    inbox.post(Opened(member, spec.worker))
    try:
        for slot in _steps(reader, inbox):
            if reader.steps_read == 0:
                inbox.post(Info(member, reader.info.params))
            t = _read_into(reader, slots, slot, inbox)
            _check_finite(spec, reader, slots, slot, zeros, inbox)
            reader.end_step()
            inbox.post(Step(member, reader.steps_read, t, slot))
            inbox.pump(0.0)  # returned slots, and a stop
        n = reader.steps_read
        if not reader.ended:
            return Ended(member, "lost", "trainer stopped reading", n, spec.worker)
        if n == spec.n_steps:
            return Ended(member, "complete", "", n, spec.worker)
        return Ended(member, "lost", f"stream ended after {n} of {spec.n_steps} steps", n, spec.worker)
    except ContractError as exc:
        # The solver writes something else than the config declares: a rerun would do the same.
        return Ended(member, "lost", exc.reason, reader.steps_read, spec.worker, final=True)
    except StreamError as exc:
        return Ended(member, "lost", exc.reason, reader.steps_read, spec.worker)
    finally:
        reader.close()


def _read_job(spec: IngestSpec, job: int, slots, inbox: _Inbox) -> list:
    """Read job ``job``'s stream (the many-members form) to its end, posting each member's Opened,
    Info and Steps as they come and its Ended once it has all its steps; the last events: the
    Ended of a member cut off (if any), then JobEnded with the listed members that never began."""
    reader = JobReader(stream=spec.stream, stream_dir=spec.stream_dir, job=job, expect=spec.expect,
                       n_members=spec.n_members, n_steps=spec.n_steps)
    zeros = np.zeros(slots[0].size, dtype=slots.dtype)

    def cut(reason: str, *, final: bool = False) -> list:
        member, k = reader.member, reader.member_steps
        if member is None:
            return [JobEnded(job, reader.unsent, reason, spec.worker)]
        # The reader's own counts are the stream's: say the member's too.
        mine = f"{reason} ({reader.name}: {k} of member {member}'s steps read)"
        return [Ended(member, "lost", mine, k, spec.worker, final=final), JobEnded(job, reader.unsent, reason, spec.worker)]

    failed = _open(reader, inbox)
    if failed is not None:
        return [JobEnded(job, (), failed.reason, spec.worker)]
    try:
        for slot in _steps(reader, inbox):
            if reader.steps_read == 0:
                inbox.post(JobOpened(job, reader.members, spec.worker))
            t = _read_into(reader, slots, slot, inbox)
            member = reader.member
            if reader.began:
                inbox.post(Opened(member, spec.worker))
                inbox.post(Info(member, reader.params))
            _check_finite(spec, reader, slots, slot, zeros, inbox)
            reader.end_step()
            k = reader.member_steps or spec.n_steps  # 0 once the member has all its steps
            inbox.post(Step(member, k, t, slot))
            if reader.member is None:
                inbox.post(Ended(member, "complete", "", k, spec.worker))
            inbox.pump(0.0)
        if not reader.ended:
            return cut("trainer stopped reading")
        if reader.member is None:
            return [JobEnded(job, reader.unsent, "", spec.worker)]
        return cut(f"stream ended after {reader.member_steps} of {spec.n_steps} steps")
    except ContractError as exc:
        # A rerun would write the same: the member being read is lost for good; the stream is
        # read no further, and the members after it wait for a rerun (which may differ: a solver
        # of the user's own that lists members it does not then send, for one).
        return cut(exc.reason, final=True)
    except StreamError as exc:
        return cut(exc.reason)
    finally:
        reader.close()
