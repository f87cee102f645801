"""Ingest processes: read member streams and hand their steps to the trainer through shared memory.

Why separate processes: the ADIOS2 bindings hold the GIL in ``Open`` and ``begin_step``, so a reader
thread inside the training process would stall training for seconds.

Why one stream at a time per process: several SST readers in one process crash writers of this
ADIOS2 build (segfault in the writer's ``EndStep``, measured with 8 concurrent members and one
polling reader process; one reader per process never crashed). So the trainer runs a pool of
``trainer.ingest_workers`` processes and dispatches each member whose stream has appeared to an
idle worker; a solver that finds every worker busy waits in ``Open`` (bounded by
``stream.open_timeout_s``).

A worker copies each field straight into a free shared-memory slot and sends a small event.
Back-pressure: a worker that finds no free slot waits for one and reads nothing meanwhile, so the SST
queue of its writer fills and (with ``QueueFullPolicy=Block``) the solver waits. Nothing is dropped.

Events sent to the trainer (tuples, first item the kind):
    ("open", member, worker)                       the reader connected
    ("info", member, params)                       attributes checked; params float64 [n_params]
    ("step", member, step, time, slot)             field u in shared-memory slot ``slot``
    ("end", member, status, reason, steps, worker) status "complete" or "lost"; the worker is idle
    ("fatal", worker, traceback)                   a bug, not a stream failure
    ("done", worker)                               the worker has exited
"""

from __future__ import annotations

import os
import queue
import time
import traceback
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from datamove.config import StreamConfig
from datamove.streaming.contract import StreamError, contact_file, stream_path
from datamove.streaming.reader import Expectation, MemberReader, Poll

# A contact file can be seen before the writer is ready for readers: failed opens are retried for
# this long before the member counts as lost.
OPEN_RETRY_S = 10.0
# How long one begin_step waits: bounds how late a worker notices a stop or an idle member.
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
    n_slots: int


def slot_array(shm: shared_memory.SharedMemory, n_slots: int, field_shape) -> np.ndarray:
    """A float32 view [n_slots, ny, nx] of the hand-off memory."""
    return np.ndarray((n_slots, *field_shape), dtype=np.float32, buffer=shm.buf)


def streams_present(stream: StreamConfig, stream_dir: str | Path, members) -> list[int]:
    """Members whose writer has opened its stream (SST: a non-empty contact file)."""
    try:
        names = {e.name: e for e in os.scandir(stream_dir)}
    except FileNotFoundError:
        return []
    found = []
    for member in members:
        if stream.engine.upper() == "SST":
            entry = names.get(contact_file(stream_dir, member).name)
            if entry is not None and entry.stat().st_size > 0:
                found.append(member)
        elif stream_path(stream_dir, member, "BP5").name in names:
            if (stream_path(stream_dir, member, "BP5") / "md.idx").exists():
                found.append(member)
    return found


def contact_signature(stream_dir: str | Path, member: int) -> tuple[int, int] | None:
    """(inode, mtime) of a member's contact file, to tell a rerun's file from a dead writer's."""
    try:
        st = contact_file(stream_dir, member).stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


class _Stop:
    """The trainer's stop event, or the trainer's death (a worker must not outlive it)."""

    def __init__(self, event):
        self.event, self.parent = event, os.getppid()

    def is_set(self) -> bool:
        return self.event.is_set() or os.getppid() != self.parent


def run_ingest(spec: IngestSpec, commands, free_slots, events, stop) -> None:
    """Entry point of an ingest process: read the members the trainer sends, one at a time.

    ``commands`` carries member ids; None ends the worker.
    """
    stop = _Stop(stop)
    shm = shared_memory.SharedMemory(name=spec.shm_name)
    try:
        slots = slot_array(shm, spec.n_slots, spec.expect.field_shape)
        while not stop.is_set():
            try:
                member = commands.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if member is None:
                break
            status, reason, steps = _read_member(spec, member, slots, free_slots, events, stop)
            events.put(("end", member, status, reason, steps, spec.worker))
        del slots
    except Exception:
        events.put(("fatal", spec.worker, traceback.format_exc()))
    finally:
        shm.close()
        events.put(("done", spec.worker))


def _read_member(spec: IngestSpec, member: int, slots, free_slots, events, stop) -> tuple[str, str, int]:
    """Read one member to its end. Returns (status, reason, steps read)."""
    reader = MemberReader(stream=spec.stream, stream_dir=spec.stream_dir, member=member, expect=spec.expect)
    give_up = time.monotonic() + OPEN_RETRY_S
    while True:
        try:
            reader.open()
            break
        except StreamError as exc:
            if time.monotonic() > give_up or stop.is_set():
                return "lost", exc.reason, 0
            time.sleep(0.2)
    events.put(("open", member, spec.worker))
    idle_limit = spec.stream.member_timeout_s
    last_step = time.monotonic()
    try:
        while not stop.is_set():
            # timeout=0, never a positive timeout: begin_step with a timeout other than 0 or -1
            # intermittently segfaults the SST reader (ADIOS2 issue #1862, measured in 2.12.1:
            # 2-3 crashes in 6 runs with 0.01-0.2 s, none in 6 with 0). The sleep also releases
            # the GIL, so the event queue's feeder thread can send.
            status = reader.poll(timeout=0.0)
            if status is Poll.NOT_READY:
                time.sleep(0.001)
                if time.monotonic() - last_step > idle_limit:
                    return "lost", f"no step for {idle_limit:g} s (stream.member_timeout_s)", reader.steps_read
                continue
            if status is Poll.END:
                n = reader.steps_read
                if n == spec.n_steps:
                    return "complete", "", n
                return "lost", f"stream ended after {n} of {spec.n_steps} steps", n
            if reader.steps_read == 0:
                events.put(("info", member, reader.info.params))
            slot = _get_slot(free_slots, stop)
            if slot is None:
                break
            t = reader.read_time()
            reader.read_field("u", out=slots[slot])
            if not np.isfinite(slots[slot]).all():
                free_slots.put(slot)
                raise StreamError(member, f"step {reader.steps_read + 1}: non-finite values in 'u'")
            reader.end_step()
            events.put(("step", member, reader.steps_read, t, slot))
            last_step = time.monotonic()
        return "lost", "trainer stopped reading", reader.steps_read
    except StreamError as exc:
        return "lost", exc.reason, reader.steps_read
    finally:
        reader.close()


def _get_slot(free_slots, stop) -> int | None:
    while not stop.is_set():
        try:
            return free_slots.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return None
