"""The online trainer fed by real producers: datamove's own solver and an external ADIOS2 program."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from conftest import REPO, datamove, popen_datamove
from datamove.config import StudyConfig
from datamove.training.step import evaluate, load_surrogate
from datamove.training.heldout import load_heldout

PRODUCER = REPO / "examples" / "producer.py"


def read_ledger(path):
    with open(path) as fh:
        return {int(r["member"]): r for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_external_producers_feed_datamove_train(tiny_config, tmp_path):
    """A solver written outside the package (plain ADIOS2) feeds `datamove train`; a member whose
    stream breaks the contract (NaN in a field) is rejected and the study goes on."""
    path = tiny_config()
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    trainer = popen_datamove("train", "--config", path, "--threads", 1, log=tmp_path / "train.log")
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        for member, breakage in [(0, "none"), (1, "none"), (2, "nan")]:
            args = ["--stream-dir", cfg.stream_dir, "--member", member, "--nx", cfg.solver.nx,
                    "--ny", cfg.solver.ny, "--steps", cfg.solver.n_steps, "--break", breakage]
            subprocess.run([sys.executable, PRODUCER, *map(str, args)], check=True, timeout=60)
        returncode = trainer.wait(timeout=120)
    finally:
        trainer.kill()
    out = trainer.output
    assert returncode == 0, out
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert [ledger[m]["status"] for m in (0, 1)] == ["complete", "complete"]
    assert [int(ledger[m]["steps_received"]) for m in (0, 1)] == [cfg.solver.n_steps] * 2
    assert ledger[2]["status"] == "lost"
    assert "non-finite values in 'u'" in ledger[2]["reason"]
    assert "member 2 lost" in out
    model, ckpt = load_surrogate(cfg.study_dir / "model.pt")
    val_x, val_y = load_heldout(cfg)
    assert torch.isfinite(torch.tensor(evaluate(model, val_x, val_y)))
    assert ckpt["step"] > 0
    assert "[train] batch" in out  # progress on the terminal


@pytest.mark.slow
def test_members_that_never_connect_are_timed_out(tiny_config, tmp_path):
    path = tiny_config(stream={"member_timeout_s": 3})
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    # Member 0 starts first and waits for the trainer, so it connects well within the timeout on a
    # loaded machine; members 1 and 2 never come.
    solver = popen_datamove("simulate", "--config", path, "--member", 0, "--wait-trainer", log=tmp_path / "sim.log")
    trainer = popen_datamove("train", "--config", path, "--threads", 1, log=tmp_path / "train.log")
    try:
        returncode = trainer.wait(timeout=60)
        assert solver.wait(timeout=60) == 0, solver.output
    finally:
        trainer.kill()
        solver.kill()
    assert returncode == 0, trainer.output
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert ledger[0]["status"] == "complete"
    for m in (1, 2):
        assert ledger[m]["status"] == "lost" and "never connected" in ledger[m]["reason"]
    assert not list(cfg.study_dir.rglob("*.sst"))
