"""Ingest processes: read member streams and hand their steps to the trainer through shared memory.

Why separate processes: the ADIOS2 bindings hold the GIL in ``Open`` and ``begin_step``, so a reader
thread inside the training process would stall training for seconds. Each ingest process polls its
share of the members (member id modulo the number of workers) with ``begin_step(timeout=0)``, copies
each field straight into a free shared-memory slot, and sends a small event to the trainer.

Back-pressure: a worker that finds no free slot waits for one and reads nothing meanwhile, so the SST
queue of its writers fills and (with ``QueueFullPolicy=Block``) the solvers wait. Nothing is dropped.

Events sent to the trainer (tuples, first item the kind):
    ("open", member)                                   the reader connected
    ("info", member, params)                           attributes checked; params float64 [n_params]
    ("step", member, step, time, slot)                 field u in shared-memory slot ``slot``
    ("end", member, status, reason, steps)             status "complete" or "lost"
    ("done", worker)                                   the worker has exited its loop
"""

from __future__ import annotations

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


@dataclass(frozen=True, kw_only=True)
class IngestSpec:
    """What one ingest worker reads and where it puts it."""

    worker: int
    members: tuple[int, ...]
    stream: StreamConfig
    stream_dir: str
    expect: Expectation
    n_steps: int  # steps expected of each member
    shm_name: str
    n_slots: int


def slot_array(shm: shared_memory.SharedMemory, n_slots: int, field_shape) -> np.ndarray:
    """A float32 view [n_slots, ny, nx] of the hand-off memory."""
    return np.ndarray((n_slots, *field_shape), dtype=np.float32, buffer=shm.buf)


def _stream_present(spec: IngestSpec, member: int) -> bool:
    if spec.stream.engine.upper() == "SST":
        return contact_file(spec.stream_dir, member).exists()
    return (stream_path(spec.stream_dir, member, "BP5") / "md.idx").exists()


def run_ingest(spec: IngestSpec, free_slots, events, stop) -> None:
    """Entry point of an ingest process (see the module docstring)."""
    shm = shared_memory.SharedMemory(name=spec.shm_name)
    try:
        _loop(spec, slot_array(shm, spec.n_slots, spec.expect.field_shape), free_slots, events, stop)
    except Exception:
        events.put(("fatal", spec.worker, traceback.format_exc()))
    finally:
        shm.close()
        events.put(("done", spec.worker))


def _loop(spec: IngestSpec, slots: np.ndarray, free_slots, events, stop) -> None:
    pending = list(spec.members)
    active: dict[int, MemberReader] = {}
    last_step: dict[int, float] = {}
    idle_limit = spec.stream.member_timeout_s

    def finish(member: int, status: str, reason: str) -> None:
        reader = active.pop(member)
        reader.close()
        events.put(("end", member, status, reason, reader.steps_read))

    while (pending or active) and not stop.is_set():
        progressed = False
        for member in [m for m in pending if _stream_present(spec, m)]:
            pending.remove(member)
            reader = MemberReader(
                stream=spec.stream, stream_dir=spec.stream_dir, member=member, expect=spec.expect
            )
            try:
                reader.open()
            except StreamError as exc:
                events.put(("end", member, "lost", exc.reason, 0))
                continue
            active[member] = reader
            last_step[member] = time.monotonic()
            events.put(("open", member))
            progressed = True

        for member in list(active):
            reader = active[member]
            # Several steps per visit keeps per-poll overhead low; the cap keeps members fair.
            for _ in range(8):
                try:
                    status = reader.poll(timeout=0.0)
                    if status is Poll.NOT_READY:
                        if time.monotonic() - last_step[member] > idle_limit:
                            finish(member, "lost", f"no step for {idle_limit:g} s (stream.member_timeout_s)")
                        break
                    if status is Poll.END:
                        n = reader.steps_read
                        if n == spec.n_steps:
                            finish(member, "complete", "")
                        else:
                            finish(member, "lost", f"stream ended after {n} of {spec.n_steps} steps")
                        break
                    if reader.steps_read == 0:
                        events.put(("info", member, reader.info.params))
                    slot = _get_slot(free_slots, stop)
                    if slot is None:
                        return
                    t = reader.read_time()
                    reader.read_field("u", out=slots[slot])
                    if not np.isfinite(slots[slot]).all():
                        free_slots.put(slot)
                        raise StreamError(member, f"step {reader.steps_read + 1}: non-finite values in 'u'")
                    reader.end_step()
                    events.put(("step", member, reader.steps_read, t, slot))
                    last_step[member] = time.monotonic()
                    progressed = True
                except StreamError as exc:
                    finish(member, "lost", exc.reason)
                    break
        if not progressed:
            time.sleep(0.002)  # nothing to read: do not spin a core the solvers need

    for member in list(active):  # stopped by the trainer
        finish(member, "lost", "trainer stopped reading")


def _get_slot(free_slots, stop) -> int | None:
    while not stop.is_set():
        try:
            return free_slots.get(timeout=0.1)
        except queue.Empty:
            continue
    return None
