"""The trainer's pool of ingest processes, with real solver processes streaming through SST."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import popen_datamove
from datamove.config import StudyConfig
from datamove.reservoir import make_buffer
from datamove.streaming.feed import MemberFeed
from datamove.streaming.ingest import contact_signature, streams_present
from datamove.streaming.pool import IngestPool
from datamove.streaming.contract import Expectation
from datamove.streaming.events import Ended, Step
from datamove.training.records import Ledger


def _pool(cfg: StudyConfig, *, n_workers: int, n_slots: int) -> IngestPool:
    expect = Expectation.of(cfg.problem)
    return IngestPool(
        stream=cfg.stream,
        stream_dir=cfg.stream_dir,
        expect=expect,
        n_steps=cfg.problem.n_steps,
        n_members=cfg.ensemble.n_members,
        n_workers=n_workers,
        n_slots=n_slots,
        say=lambda msg: None,
    )


def _until(pool: IngestPool, done, timeout: float, on_event) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        for ev in pool.poll(timeout=0.05):
            on_event(ev)


def _wait_streams(cfg: StudyConfig, members: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while streams_present(cfg.stream, cfg.stream_dir, members) != members:
        assert time.monotonic() < deadline, "the solvers did not open their streams"
        time.sleep(0.05)


def test_slots_are_owned_and_returned(tiny_config, tmp_path):
    path = tiny_config(ensemble={"n_members": 1})
    cfg = StudyConfig.load(path)
    pool = _pool(cfg, n_workers=3, n_slots=7).start()
    solver = popen_datamove("simulate", "--config", path, "--member", 0, log=tmp_path / "sim.log")
    try:
        assert pool.per_worker == 2  # 7 // 3: one slot unused
        _wait_streams(cfg, [0])
        worker = pool.assign(0, worker=1)
        seen_slots, ends = set(), []

        def on_event(ev):
            if isinstance(ev, Step):
                seen_slots.add(ev.slot)
                pool.release([ev.slot])
            elif isinstance(ev, Ended):
                ends.append(ev)

        _until(pool, lambda: ends, 60, on_event)
        assert ends[0][0:4] == (0, "complete", "", cfg.problem.n_steps)
        assert worker == 1 and seen_slots == {2, 3}  # worker 1 writes only its own slots
        assert pool.idle == [0, 1, 2] and not pool.busy
        assert solver.wait(timeout=60) == 0
    finally:
        solver.kill()
        pool.close()


@pytest.mark.slow
def test_killed_ingest_worker_is_replaced_and_the_others_go_on(tiny_config, tmp_path):
    """SIGKILL of a worker mid-member: its member ends as lost with the reason, the other worker
    finishes its member (no shared lock left held), and the replacement reads a rerun to its end."""
    path = tiny_config(ensemble={"n_members": 2}, solver={"n_steps": 30})
    cfg = StudyConfig.load(path)
    log_dir = tmp_path
    pool = _pool(cfg, n_workers=2, n_slots=4).start()
    solvers = [popen_datamove("simulate", "--config", path, "--member", m, log=log_dir / f"sim{m}.log") for m in (0, 1)]
    try:
        _wait_streams(cfg, [0, 1])
        assert pool.assign(0, worker=0) == 0 and pool.assign(1, worker=1) == 1
        held, steps, ends = [], {0: 0, 1: 0}, {}

        def on_event(ev):
            if isinstance(ev, Step):
                steps[ev.member] += 1
                if ev.member == 0:
                    held.append(ev.slot)  # member 0's slots are kept: its worker stalls on a full hand-off
                else:
                    pool.release([ev.slot])
            elif isinstance(ev, Ended):
                ends[ev.member] = ev

        _until(pool, lambda: len(held) == pool.per_worker, 60, on_event)
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        _until(pool, lambda: 0 in ends and 1 in ends, 60, on_event)
        assert ends[0][1:3] == ("lost", f"ingest process crashed (exit code {-signal.SIGKILL})")
        assert ends[1][1:4] == ("complete", "", cfg.problem.n_steps)
        assert pool.pids[0] != victim and pool.idle == [0, 1]

        # A rerun of member 0 goes to the replacement, which gets its predecessor's slots back as
        # the trainer releases them.
        dead = contact_signature(cfg.stream_dir, 0)
        solvers[0].kill()
        solvers[0] = popen_datamove("simulate", "--config", path, "--member", 0, log=log_dir / "rerun.log")
        deadline = time.monotonic() + 60
        while contact_signature(cfg.stream_dir, 0) in (dead, None) or not streams_present(cfg.stream, cfg.stream_dir, [0]):
            assert time.monotonic() < deadline, "the rerun did not open its stream"
            time.sleep(0.05)
        for slot in held:
            pool.release([slot])
        steps[0], held[:] = 0, []
        del ends[0]
        pool.assign(0, worker=0)

        def release_all(ev):
            if isinstance(ev, Step):
                steps[ev.member] += 1
                pool.release([ev.slot])
            elif isinstance(ev, Ended):
                ends[ev.member] = ev

        _until(pool, lambda: 0 in ends, 60, release_all)
        assert ends[0][1:4] == ("complete", "", cfg.problem.n_steps)
        assert steps[0] == cfg.problem.n_steps
        assert solvers[0].wait(timeout=60) == 0
    finally:
        for s in solvers:
            s.kill()
        pool.close()


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])  # field 19: nice


def test_solvers_and_ingest_run_niced(tiny_config, tmp_path):
    """ensemble.nice and trainer.ingest_nice lower the solvers' and the ingest's priority (training
    keeps the CPU where cores are shared); the trainer's own priority is untouched."""
    path = tiny_config(ensemble={"n_members": 1, "nice": 7})
    cfg = StudyConfig.load(path)
    base = os.nice(0)
    pool = _pool(cfg, n_workers=2, n_slots=2)
    pool.nice = cfg.trainer.ingest_nice
    pool.start()
    solver = popen_datamove("simulate", "--config", path, "--member", 0, log=tmp_path / "sim.log")
    try:
        _wait_streams(cfg, [0])  # the solver waits in Open for a reader: alive, past its start-up
        deadline = time.monotonic() + 60
        while [_niceness(pid) for pid in pool.pids] != [min(base + 19, 19)] * 2:  # the default, once started
            assert time.monotonic() < deadline, [_niceness(pid) for pid in pool.pids]
            time.sleep(0.1)
        assert _niceness(solver.proc.pid) == min(base + 7, 19)
        assert os.nice(0) == base
    finally:
        solver.kill()
        pool.close()


class _SlotsOnly:
    """An IngestPool's slots and release, without processes: what MemberFeed.intake uses."""

    def __init__(self, n_slots: int, shape, *, held: int = 1):
        self.slots = np.random.default_rng(0).random((n_slots, *shape)).astype(np.float32)
        self.n_slots, self.per_worker = n_slots, 2
        self.held = [set(range(held))]  # worker 0 holds `held` slots: an intake is due (half of 2)
        self.released: list[int] = []

    def release(self, slots) -> None:
        self.released += np.asarray(slots).tolist()


@pytest.mark.parametrize(("policy", "on_full"), [("reservoir", "block"), ("fifo", "drop_oldest"), ("balanced", "block")])
def test_intake_puts_the_waiting_steps_as_puts_one_by_one_would(tiny_config, policy, on_full):
    """The feed's batched intake (one put_many gathering the fields from their slots) against the
    same steps put one by one: the same buffer state, every slot returned once, and each step
    displaced unseen counted once in the ledger, by member."""
    cfg = StudyConfig.load(tiny_config(ensemble={"n_members": 3}))
    shape = cfg.problem.sample_shape
    x_dim = cfg.problem.n_inputs

    def buffer():
        buf = make_buffer(policy, capacity=5, watermark=1, x_dim=x_dim, y_shape=shape, seed=2, on_full=on_full)
        buf._x.zero_()  # torch.empty storage: rows never written compare equal
        buf._y.zero_()
        return buf

    ledger = Ledger(members=[0, 1, 2], steps_expected=cfg.problem.n_steps)
    feed = MemberFeed(cfg=cfg, members=[0, 1, 2], ledger=ledger, clean=False, say=lambda msg: None)
    feed.pool = _SlotsOnly(16, shape)
    feed.params = {m: np.arange(x_dim - 1, dtype=np.float32) + 10 * m for m in range(3)}
    batched, single = buffer(), buffer()
    untrained = Counter()
    rng = np.random.default_rng(1)
    step_of = dict.fromkeys(range(3), 0)
    for chunk in (3, 9, 1, 12):
        slots = rng.permutation(16)[:chunk]
        for slot in slots.tolist():
            m = int(rng.integers(3))
            step_of[m] += 1
            ev = Step(m, step_of[m], 0.1 * step_of[m], slot)
            assert ledger.received(ev.member, ev.step)
            feed.waiting.append(ev)
            x = torch.from_numpy(np.append(feed.params[m], np.float32(ev.time)))
            d = single.put(x, torch.from_numpy(feed.pool.slots[slot]), member=m, step=ev.step)
            if d is not None and d.seen == 0:
                untrained[d.member, "dropped" if d.reason == "dropped" else "evicted"] += 1
        feed.pool.released.clear()
        assert feed.intake(batched) == chunk and not feed.waiting
        assert sorted(feed.pool.released) == sorted(slots.tolist())
        a, b = batched.state_dict(), single.state_dict()
        for key in ("x", "y", "member", "step", "seen", "ring"):
            assert torch.equal(a[key], b[key]), key
        batched.sample(2), single.sample(2)
    got = Counter()
    for m, rec in ledger.records.items():
        got[m, "evicted"] += rec.steps_evicted
        got[m, "dropped"] += rec.steps_dropped
    assert +got == +untrained and sum(untrained.values()) > 0


def test_intake_waits_for_enough_steps_while_training_goes_on(tiny_config, monkeypatch):
    """A buffer ready to train: a few steps wait for the next intake, until a quarter of the
    slots are waiting, a worker has half its slots waiting, or the oldest waited INTAKE_WAIT_S;
    a buffer below its watermark takes them at once."""
    from datamove.streaming import feed as feed_module

    cfg = StudyConfig.load(tiny_config(ensemble={"n_members": 1}))
    shape, x_dim = cfg.problem.sample_shape, cfg.problem.n_inputs
    ledger = Ledger(members=[0], steps_expected=cfg.problem.n_steps)
    feed = MemberFeed(cfg=cfg, members=[0], ledger=ledger, clean=False, say=lambda msg: None)
    feed.pool = _SlotsOnly(16, shape, held=0)
    feed.pool.per_worker = 8
    feed.params = {0: np.zeros(x_dim - 1, dtype=np.float32)}
    buf = make_buffer("reservoir", capacity=10, watermark=2, x_dim=x_dim, y_shape=shape)
    clock = [100.0]
    monkeypatch.setattr(feed_module.time, "monotonic", lambda: clock[0])

    def arrive(k):
        for _ in range(k):
            step = ledger[0].steps_received + 1
            feed._handle(Step(0, step, 0.1 * step, step % 16))

    arrive(1)
    assert feed.intake(buf) == 1  # below the watermark: at once
    arrive(2)
    assert feed.intake(buf) == 2
    arrive(2)
    assert feed.intake(buf) == 0 and len(feed.waiting) == 2  # ready: 2 < 16 / 4
    clock[0] += 1.01 * feed_module.INTAKE_WAIT_S
    assert feed.intake(buf) == 2  # the oldest waited long enough
    arrive(3)
    assert feed.intake(buf) == 0
    feed.pool.held[0].update(range(4))  # half of worker 0's 8 slots
    assert feed.intake(buf) == 3
    feed.pool.held[0].clear()
    arrive(4)
    assert feed.intake(buf) == 4  # a quarter of the slots
    assert len(buf) == 10 and ledger[0].steps_received == 12


def test_event_messages_keep_order_types_and_member_boundaries():
    """A run of steps travels as a record array, anything else pickled: decoded, the same events in
    the same order, with Python ints for member, step and slot; and the trainer's commands, typed."""
    from datamove.streaming.events import (
        FreeSlots,
        Info,
        Opened,
        ReadMember,
        Stop,
        decode,
        decode_command,
        encode,
        encode_command,
    )

    steps = [Step(3, 7, 0.25, 5), Step(3, 8, 0.5, 6), Step(9, 1, 0.125, 12)]  # two members in one message
    message = encode(steps)
    assert message[:1] == b"S" and len(message) == 1 + 32 * len(steps)
    back = decode(message)
    assert back == steps and all(type(ev) is Step and type(ev.member) is int and type(ev.slot) is int for ev in back)
    mixed = [Opened(9, 2), Info(9, np.arange(3.0)), *steps, Ended(9, "complete", "", 1, 2)]
    out = decode(encode(mixed))
    assert [type(ev) for ev in out] == [type(ev) for ev in mixed] and out[2:5] == steps and out[-1] == mixed[-1]
    assert decode(memoryview(message)) == steps
    slots = encode_command(FreeSlots([4, 2, 9]))
    assert slots[:1] == b"R" and len(slots) == 1 + 8 * 3  # int64 ids, no pickle
    assert decode_command(slots) == FreeSlots([4, 2, 9])
    assert decode_command(encode_command(ReadMember(12))) == ReadMember(12)
    assert decode_command(encode_command(Stop())) == Stop()
    assert ReadMember(3) != FreeSlots([3]) and FreeSlots([3]) != ReadMember(3)  # told apart by type


def test_pool_splits_what_one_read_returns_into_messages():
    """The trainer reads a worker's pipe in one go and splits it by the send_bytes framing: several
    messages in one read, and a message cut between two reads, come out whole and in order."""
    import multiprocessing as mp
    from types import SimpleNamespace

    from datamove.streaming.events import Done, encode

    mine, theirs = mp.Pipe(duplex=True)
    pool = IngestPool.__new__(IngestPool)  # only _receive: no processes
    pool.workers = [SimpleNamespace(conn=mine, partial=b"")]
    first = [Step(0, k, 0.1 * k, k) for k in range(1, 4)]
    theirs.send_bytes(encode(first))
    theirs.send_bytes(encode([Ended(0, "complete", "", 3, 0)]))
    assert pool._receive(0) == [*first, Ended(0, "complete", "", 3, 0)]
    # One message written in two pieces, the cut inside its length header and inside its body.
    body = encode([Step(1, 1, 0.5, 2), Step(1, 2, 1.0, 3)])
    framed = len(body).to_bytes(4, "big") + body
    for piece in (framed[:2], framed[2:20]):
        theirs._send(piece)  # the raw bytes, as a slow write would deliver them
        assert pool._receive(0) == []
    theirs._send(framed[20:])
    theirs.send_bytes(encode([Done(0)]))
    assert pool._receive(0) == [Step(1, 1, 0.5, 2), Step(1, 2, 1.0, 3), Done(0)]
    theirs.close()
    assert pool._receive(0) is None  # end of file
    mine.close()
