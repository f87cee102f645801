"""Failures injected with real processes: nothing lost silently, nothing hangs."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import datamove, pids_running, popen_datamove, snakemake
from datamove.config import StudyConfig
from datamove.streaming.contract import contact_file
from datamove.training.heldout import load_heldout
from datamove.training.step import evaluate, load_surrogate
from test_workflow import read_ledger


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_same_study_started_twice_refuses(tiny_config, tmp_path):
    path = tiny_config(stream={"member_timeout_s": 60})  # the first trainer waits long enough
    datamove("make-heldout", "--config", path)
    first = popen_datamove("train", "--config", path, log=tmp_path / "first.log")
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 120)
        second = datamove("train", "--config", path, check=False, timeout=120)
        assert second.returncode == 1
        assert f"already being trained by pid {first.proc.pid}" in second.stderr
    finally:
        first.kill()  # kill -9: its lock file stays behind, naming a dead process
    cfg = StudyConfig.load(path)
    assert json.loads(cfg.lock_path.read_text())["pid"] == first.proc.pid
    # The same study (same lock), members that never come (no job will start them, as the workflow
    # notes when it launches no more): a short run that takes the lock over.
    again = tiny_config("again.yaml", stream={"member_timeout_s": 1})
    cfg.launch_stop_path.write_text('{"reason": "no job in this test starts a member"}')
    proc = datamove("train", "--config", again, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not cfg.lock_path.exists()  # released at the end


@pytest.mark.slow
def test_stale_contact_file_from_a_killed_run(tiny_config, tmp_path):
    path = tiny_config(ensemble={"n_members": 1})
    cfg = StudyConfig.load(path)
    # A real dead writer: its contact file survives kill -9.
    writer = popen_datamove("simulate", "--config", path, "--member", 0, log=tmp_path / "dead.log")
    _wait(contact_file(cfg.stream_dir, 0).exists, 30, "the contact file")
    os.kill(writer.proc.pid, signal.SIGKILL)
    writer.wait(timeout=10)
    assert contact_file(cfg.stream_dir, 0).exists()
    datamove("make-heldout", "--config", path)
    trainer = popen_datamove("train", "--config", path, log=tmp_path / "train.log")
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        datamove("simulate", "--config", path, "--member", 0)
        assert trainer.wait(timeout=60) == 0, trainer.output
    finally:
        trainer.kill()
    assert "removing stale contact file" in trainer.output
    assert read_ledger(cfg.study_dir / "ledger.csv")[0]["status"] == "complete"


@pytest.mark.slow
def test_silent_member_is_timed_out(tiny_config, tmp_path):
    """A solver that stops sending without dying is marked lost after stream.member_timeout_s."""
    path = tiny_config(
        ensemble={"n_members": 1, "retries": 0}, solver={"step_delay_s": 4.0}, stream={"member_timeout_s": 1}
    )
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    # Started first and waiting for the trainer, so that it connects well within the timeout.
    solver = popen_datamove("simulate", "--config", path, "--member", 0, "--wait-trainer", log=tmp_path / "sim.log")
    trainer = popen_datamove("train", "--config", path, log=tmp_path / "train.log")
    try:
        assert trainer.wait(timeout=60) == 0, trainer.output
    finally:
        trainer.kill()
        solver.kill()
    rec = read_ledger(cfg.study_dir / "ledger.csv")[0]
    # Silent after its stream appeared: no step (or, on a loaded machine, its reader not open yet).
    assert rec["status"] == "lost" and ("no step for 1 s" in rec["reason"] or "no stream within 1 s" in rec["reason"]), rec
    assert int(rec["steps_received"]) < cfg.problem.n_steps


@pytest.mark.slow
def test_two_studies_at_once_do_not_collide(tiny_config, tmp_path):
    paths = [tiny_config("a.yaml", study="a"), tiny_config("b.yaml", study="b")]
    for p in paths:
        datamove("make-heldout", "--config", p)
    trainers = [popen_datamove("train", "--config", p, log=tmp_path / f"{p.stem}.log") for p in paths]
    try:
        for p in paths:
            datamove("wait-trainer", "--config", p, "--timeout", 60)
        solvers = [
            popen_datamove("simulate", "--config", p, "--member", m, log=tmp_path / f"{p.stem}{m}.log")
            for m in range(3) for p in paths
        ]
        for s in solvers:
            assert s.wait(timeout=120) == 0, s.output
        for t in trainers:
            assert t.wait(timeout=120) == 0, t.output
    finally:
        for t in trainers:
            t.kill()
    for p in paths:
        ledger = read_ledger(StudyConfig.load(p).study_dir / "ledger.csv")
        assert [r["status"] for r in ledger.values()] == ["complete"] * 3


@pytest.mark.slow
def test_sst_study_writes_nothing_but_its_outputs(tiny_config, tmp_path):
    path = tiny_config(solver={"nx": 64, "ny": 48, "n_steps": 40}, trainer={"log_every": 200})
    cfg = StudyConfig.load(path)
    proc = snakemake(tmp_path, path, "--cores", 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = [f for f in Path(cfg.results_dir).rglob("*") if f.is_file()]
    assert {f.suffix for f in files} <= {".pt", ".csv", ".json", ".yaml", ".log"}
    dataset_bytes = cfg.ensemble.n_members * cfg.problem.n_steps * cfg.problem.config.nx * cfg.problem.config.ny * 4
    other = sum(f.stat().st_size for f in files if f.name != "model.pt")
    # Records only: far less than the field data that streamed through.
    sizes = {str(f.relative_to(cfg.results_dir)): f.stat().st_size for f in files}
    assert other < 0.25 * dataset_bytes, (other, dataset_bytes, sizes)


@pytest.mark.slow
def test_trainer_crash_resumes_from_checkpoint(tiny_config, tmp_path):
    path = tiny_config(
        ensemble={"n_members": 4, "retries": 1},
        solver={"n_steps": 30, "step_delay_s": 0.05},
        trainer={"checkpoint_every": 20},
        stream={"open_timeout_s": 20, "member_timeout_s": 20},
    )
    cfg = StudyConfig.load(path)
    killed: list[int] = []

    def kill_trainer_after_first_member():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # A member held by a checkpoint and another streaming (Snakemake runs them in any order).
            streaming = cfg.stream_dir.exists() and any(cfg.stream_dir.glob("*.sst"))
            if streaming and any(cfg.member_receipt(m).exists() for m in range(4)):  # after its checkpoint
                for pid in pids_running(cfg.study_dir, "datamove train"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_trainer_after_first_member)
    watcher.start()
    first = snakemake(tmp_path, path, "--cores", 2, "--keep-going")
    watcher.join()
    assert killed, "the trainer was never killed"
    assert first.returncode != 0
    markers = {m: cfg.member_marker(m).stat().st_mtime_ns for m in range(4) if cfg.member_marker(m).exists()}
    assert markers, "no member was held before the crash"
    ckpt_step = torch.load(cfg.checkpoint_path, weights_only=False)["step"]

    second = snakemake(tmp_path, path, "--cores", 2)
    assert second.returncode == 0, second.stdout + second.stderr
    log = (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
    assert f"resumed from {cfg.checkpoint_path} at batch {ckpt_step}" in log
    for m, mtime in markers.items():  # a member the checkpoint held is not rerun
        assert cfg.member_marker(m).stat().st_mtime_ns == mtime
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    for rec in ledger.values():
        assert rec["status"] == "complete" and int(rec["steps_received"]) == cfg.problem.n_steps, rec
    model, ckpt = load_surrogate(cfg.study_dir / "model.pt")
    assert ckpt["step"] > ckpt_step
    assert not cfg.checkpoint_path.exists()
    with open(cfg.study_dir / "metrics.csv") as fh:
        batches = [int(r["batch"]) for r in csv.DictReader(fh)]
    assert batches == sorted(batches) and batches[0] < ckpt_step < batches[-1]


@pytest.mark.slow
def test_chaos_members_killed_at_random(tiny_config, tmp_path):
    """Members killed at random times: every step is trained on or accounted as lost."""
    n = 6
    path = tiny_config(
        ensemble={"n_members": n, "retries": 0}, solver={"n_steps": 40, "step_delay_s": 0.02},
    )
    cfg = StudyConfig.load(path)
    rng = random.Random(1234)
    victims = sorted(rng.sample(range(n), 3))
    killed: dict[int, int] = {}

    def chaos():
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and len(killed) < len(victims):
            for m in victims:
                if m not in killed and contact_file(cfg.stream_dir, m).exists():
                    time.sleep(rng.uniform(0.0, 0.6))  # at a random point of its stream
                    for pid in pids_running(cfg.study_dir, "datamove simulate", f"--member {m:06d}"):
                        os.kill(pid, signal.SIGKILL)
                        killed[m] = pid
            time.sleep(0.01)

    watcher = threading.Thread(target=chaos)
    watcher.start()
    proc = snakemake(tmp_path, path, "--cores", 2, "--keep-going")
    watcher.join()
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    total_lost = 0
    for m, rec in ledger.items():
        received, expected = int(rec["steps_received"]), int(rec["steps_expected"])
        if rec["status"] == "complete":
            assert received == expected and m not in killed or received == expected
        else:
            assert rec["status"] == "lost" and m in killed and rec["reason"], rec
            assert received < expected
            total_lost += expected - received
    received_total = sum(int(r["steps_received"]) for r in ledger.values())
    assert received_total + total_lost == n * cfg.problem.n_steps
    assert proc.returncode != 0 or not killed
    model, _ = load_surrogate(cfg.study_dir / "model.pt")
    val_x, val_y = load_heldout(cfg)
    assert torch.isfinite(torch.tensor(evaluate(model, val_x, val_y)))

