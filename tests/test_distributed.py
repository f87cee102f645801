"""Data-parallel online training: 2 CPU ranks (gloo) under torchrun, each reading its own members."""

from __future__ import annotations

import csv

import pytest

from conftest import datamove, popen_datamove
from datamove.config import StudyConfig
from datamove.training.step import load_surrogate


def _run_study(path, tmp_path, tag):
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    solvers = [
        popen_datamove("simulate", "--config", path, "--member", m, "--wait-trainer", log=tmp_path / f"{tag}{m}.log")
        for m in range(cfg.ensemble.n_members)
    ]
    trainer = popen_datamove("train", "--config", path, "--threads", 1, log=tmp_path / f"{tag}-train.log")
    try:
        assert trainer.wait(timeout=240) == 0, trainer.output
        for s in solvers:
            assert s.wait(timeout=60) == 0, s.output
    finally:
        trainer.kill()
        for s in solvers:
            s.kill()
    with open(cfg.study_dir / "ledger.csv") as fh:
        ledger = list(csv.DictReader(fh))
    with open(cfg.study_dir / "metrics.csv") as fh:
        metrics = list(csv.DictReader(fh))
    return cfg, ledger, metrics, trainer.output


@pytest.mark.slow
def test_two_ranks_train_the_same_study_to_a_comparable_loss(tiny_config, tmp_path):
    common = {"ensemble": {"n_members": 4}, "trainer": {"extra_batches": 200, "log_every": 50, "ingest_workers": 1}}
    single = tiny_config("single.yaml", study="single", **common)
    ddp = tiny_config("ddp.yaml", study="ddp", **{**common, "trainer": {**common["trainer"], "world_size": 2}})

    _, ledger1, metrics1, _ = _run_study(single, tmp_path, "single")
    cfg, ledger2, metrics2, out = _run_study(ddp, tmp_path, "ddp")

    assert "data-parallel" in out and "rank 1 of 2: members [1, 3]" in out
    assert [r["status"] for r in ledger2] == ["complete"] * 4  # both ranks' shares, merged
    assert sum(int(r["steps_received"]) for r in ledger2) == 4 * cfg.solver.n_steps
    assert int(metrics2[-1]["samples_received"]) == 4 * cfg.solver.n_steps
    first, last1, last2 = float(metrics1[0]["val_loss"]), float(metrics1[-1]["val_loss"]), float(metrics2[-1]["val_loss"])
    assert last2 < first  # it learned
    assert last2 < 3 * last1 + 1e-3, (last1, last2)  # comparable to the single-process run
    model, ckpt = load_surrogate(cfg.study_dir / "model.pt")
    assert ckpt["step"] >= 200
    assert not list(cfg.study_dir.glob("*.rank1*"))  # per-rank files are folded in
