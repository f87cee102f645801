"""The trainer's pool of ingest processes, with real solver processes streaming through SST."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import popen_datamove
from datamove.config import StudyConfig
from datamove.streaming.ingest import contact_signature, streams_present
from datamove.streaming.pool import IngestPool
from datamove.streaming.contract import Expectation
from datamove.streaming.events import Ended, Step


def _pool(cfg: StudyConfig, *, n_workers: int, n_slots: int) -> IngestPool:
    expect = Expectation.of(cfg.problem)
    return IngestPool(
        stream=cfg.stream,
        stream_dir=cfg.stream_dir,
        expect=expect,
        n_steps=cfg.problem.n_steps,
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
