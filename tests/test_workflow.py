"""The Snakemake workflow end to end on tiny studies (real processes, real SST streams)."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

from conftest import kill_member_when_streaming, snakemake
from datamove.config import StudyConfig

def read_ledger(path):
    with open(path) as fh:
        return {int(r["member"]): r for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_tiny_online_study(tiny_config, tmp_path):
    path = tiny_config()
    cfg = StudyConfig.load(path)
    proc = snakemake(tmp_path, path, "--cores", 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert len(ledger) == cfg.ensemble.n_members
    assert all(r["status"] == "complete" for r in ledger.values())
    assert sum(int(r["steps_received"]) for r in ledger.values()) == cfg.ensemble.n_members * cfg.problem.n_steps
    with open(cfg.study_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and int(rows[-1]["samples_received"]) == cfg.ensemble.n_members * cfg.problem.n_steps
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    # Online means no dataset on disk: no .bp and no leftover contact file under results/.
    results = Path(cfg.results_dir)
    assert not list(results.rglob("*.bp")) and not list(results.rglob("*.sst"))
    assert not (cfg.study_dir / "streams").exists()
    assert (cfg.study_dir / "model.pt").stat().st_size > 0


@pytest.mark.slow
def test_more_cores_run_members_in_parallel(tiny_config, tmp_path):
    path = tiny_config(ensemble={"n_members": 6})
    cfg = StudyConfig.load(path)
    proc = snakemake(tmp_path, path, "--cores", 8)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert [r["status"] for r in ledger.values()] == ["complete"] * 6


def test_too_few_cores_are_refused(tiny_config, tmp_path):
    proc = snakemake(tmp_path, tiny_config(), "--cores", 1, timeout=120)
    assert proc.returncode != 0
    assert "--cores 1 is too small" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_config_typo_is_refused_before_any_job(tiny_config, tmp_path):
    proc = snakemake(tmp_path, tiny_config(trainer={"batchsize": 3}), "--cores", 2, timeout=120)
    assert proc.returncode != 0
    assert "unknown key 'trainer.batchsize'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_lint_and_dry_run(tiny_config, tmp_path):
    path = tiny_config()
    dry = snakemake(tmp_path, path, "--cores", 2, "-n", timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "simulate_member" in dry.stdout and "train_online" in dry.stdout
    lint = snakemake(tmp_path, path, "--lint", timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.slow
def test_killed_solver_does_not_stop_the_study(tiny_config, tmp_path):
    path = tiny_config(solver={"n_steps": 60, "step_delay_s": 0.05}, ensemble={"retries": 0})
    cfg = StudyConfig.load(path)
    killed: list[int] = []
    watcher = threading.Thread(
        target=kill_member_when_streaming, args=(cfg.stream_dir, 1, killed, time.monotonic() + 240)
    )
    watcher.start()
    proc = snakemake(tmp_path, path, "--cores", 2, "--keep-going")
    watcher.join()
    assert killed, "the member was never seen streaming"
    assert proc.returncode != 0  # the killed job failed, and Snakemake says so
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert ledger[0]["status"] == "complete" and ledger[2]["status"] == "complete"
    assert ledger[1]["status"] == "lost"
    assert 0 < int(ledger[1]["steps_received"]) < cfg.problem.n_steps
    assert "stream error" in ledger[1]["reason"] or "ended after" in ledger[1]["reason"]
    assert (cfg.study_dir / "model.pt").exists()
    assert not list(Path(cfg.results_dir).rglob("*.sst"))


@pytest.mark.slow
def test_killed_solver_is_rerun_without_counting_steps_twice(tiny_config, tmp_path):
    path = tiny_config(solver={"n_steps": 60, "step_delay_s": 0.05}, ensemble={"retries": 1})
    cfg = StudyConfig.load(path)
    killed: list[int] = []
    watcher = threading.Thread(
        target=kill_member_when_streaming, args=(cfg.stream_dir, 1, killed, time.monotonic() + 240)
    )
    watcher.start()
    proc = snakemake(tmp_path, path, "--cores", 2)
    watcher.join()
    assert killed, "the member was never seen streaming"
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the retry succeeded
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert [r["status"] for r in ledger.values()] == ["complete"] * 3
    rerun = ledger[1]
    assert int(rerun["attempts"]) == 2
    assert int(rerun["steps_received"]) == cfg.problem.n_steps  # each step once
    assert 0 < int(rerun["steps_duplicate"]) < cfg.problem.n_steps  # resent by the rerun, not used
    assert "waiting for a rerun" in (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
