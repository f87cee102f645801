"""The online trainer fed by real producers: datamove's own solver and an external ADIOS2 program."""

from __future__ import annotations

import csv
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, datamove, popen_datamove
from datamove.config import StudyConfig
from datamove.ensemble.members import note_start
from datamove.run.heartbeat import read_heartbeat
from datamove.training.step import evaluate, load_surrogate
from datamove.training.heldout import load_heldout

PRODUCER = REPO / "examples" / "producer.py"


def read_ledger(path):
    with open(path) as fh:
        return {int(r["member"]): r for r in csv.DictReader(fh)}


def read_metrics(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def train_from_producers(path, tmp_path, breakages=("none", "none", "none")):
    """`datamove train` on config `path`, fed by the external producer, one member after another
    (member k breaks its stream as ``breakages[k]`` says); returns the trainer's exit code and output."""
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    trainer = popen_datamove("train", "--config", path, "--threads", 1, log=tmp_path / "train.log")
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        for member, breakage in enumerate(breakages):
            args = ["--stream-dir", cfg.stream_dir, "--member", member, "--nx", cfg.problem.config.nx,
                    "--ny", cfg.problem.config.ny, "--steps", cfg.problem.n_steps, "--break", breakage]
            subprocess.run([sys.executable, PRODUCER, *map(str, args)], check=True, timeout=60)
        returncode = trainer.wait(timeout=120)
    finally:
        trainer.kill()
    return returncode, trainer.output


@pytest.mark.slow
def test_external_producers_feed_datamove_train(tiny_config, tmp_path):
    """A solver written outside the package (plain ADIOS2) feeds `datamove train`; a member whose
    stream breaks the contract (NaN in a field) is rejected and the study goes on."""
    path = tiny_config()
    cfg = StudyConfig.load(path)
    returncode, out = train_from_producers(path, tmp_path, ("none", "none", "nan"))
    assert returncode == 0, out
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert [ledger[m]["status"] for m in (0, 1)] == ["complete", "complete"]
    assert [int(ledger[m]["steps_received"]) for m in (0, 1)] == [cfg.problem.n_steps] * 2
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
    # 8 s: the timeout also runs while member 0 connects; at 3 s the test failed now and then on a
    # loaded 2-core machine.
    path = tiny_config(stream={"member_timeout_s": 8})
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    # Member 0 starts first and waits for the trainer, so it connects well within the timeout on a
    # loaded machine. Members 1 and 2 are started by their jobs (their start notes, written the
    # way a job writes them) but never open a stream: a solver that hangs before its Open.
    solver = popen_datamove("simulate", "--config", path, "--member", 0, "--wait-trainer", log=tmp_path / "sim.log")
    trainer = popen_datamove("train", "--config", path, "--threads", 1, log=tmp_path / "train.log")
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        for m in (1, 2):
            note_start(cfg, m)
        returncode = trainer.wait(timeout=60)
        assert solver.wait(timeout=60) == 0, solver.output
    finally:
        trainer.kill()
        solver.kill()
    assert returncode == 0, trainer.output
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert ledger[0]["status"] == "complete"
    for m in (1, 2):
        assert ledger[m]["status"] == "lost" and "never connected (started, no stream within 8 s)" in ledger[m]["reason"]
    assert not list(cfg.study_dir.rglob("*.sst"))


@pytest.mark.slow
def test_members_never_started_are_pending_however_long(tiny_config, tmp_path):
    """A member that no job has started (it waits in Snakemake's or the cluster's queue) is
    pending, not lost, for longer than stream.member_timeout_s; started later, it completes."""
    path = tiny_config(ensemble={"n_members": 2}, stream={"member_timeout_s": 6})
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    trainer = popen_datamove("train", "--config", path, "--threads", 1, log=tmp_path / "train.log")
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        datamove("simulate", "--config", path, "--member", 0, "--wait-trainer", "--marker", cfg.member_marker(0))
        time.sleep(2 * cfg.stream.member_timeout_s)  # member 1 waits in a queue meanwhile
        assert trainer.proc.poll() is None, trainer.output
        assert read_heartbeat(cfg.heartbeat_path)["status"]["pending"] == 1
        datamove("simulate", "--config", path, "--member", 1, "--wait-trainer", "--marker", cfg.member_marker(1))
        assert trainer.wait(timeout=60) == 0, trainer.output
    finally:
        trainer.kill()
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert [ledger[m]["status"] for m in (0, 1)] == ["complete", "complete"], ledger
    assert "never connected" not in trainer.output


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [True, False], ids=["intake-beside-steps", "intake-between-steps"])
def test_ledger_counts_steps_left_in_a_consuming_buffer(tiny_config, tmp_path, overlap):
    """fifo holds every step (capacity = 3 members x 20 steps = watermark), so almost nothing is
    trained before the streams end, and 2 extra batches of 8 cannot drain it: the steps never drawn
    are in the ledger's steps_unused, per member, and the trainer says so; whether the intake runs
    beside the train steps (trainer.overlap_intake) or between them."""
    path = tiny_config(reservoir={"policy": "fifo", "capacity": 60, "watermark": 60},
                       trainer={"extra_batches": 2, "overlap_intake": overlap})
    cfg = StudyConfig.load(path)
    returncode, out = train_from_producers(path, tmp_path)
    assert returncode == 0, out
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    final = read_metrics(cfg.study_dir / "metrics.csv")[-1]
    sampled = int(float(final["n_sampled"]))
    assert sampled == 8 * int(final["batch"])
    unused = {m: int(r["steps_unused"]) for m, r in ledger.items()}
    assert sum(unused.values()) == 60 - sampled > 0, (unused, sampled)
    # fifo draws the oldest first: member 0 streamed first, so the last member keeps the most.
    assert unused[2] == 20 and unused[0] <= unused[1] <= unused[2], unused
    assert all(int(r["steps_received"]) == 20 and int(r["steps_evicted"]) == int(r["steps_dropped"]) == 0
               for r in ledger.values()), ledger
    assert f"{60 - sampled} of the {60 - sampled} samples left in the buffer were never drawn" in out
    assert "raise trainer.extra_batches" in out
    assert f"60 samples received, {sampled} of them trained on" in out


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["reservoir", "balanced"])
def test_ledger_counts_steps_evicted_before_any_batch(tiny_config, tmp_path, policy):
    """A replacing buffer of 10 samples, 60 steps sent and no extra batches: the steps evicted (or,
    for balanced, turned away) before any batch drew them are the buffer's own evicted_unseen,
    counted per member; with those left undrawn at the end, every step sent is trained on or
    accounted for."""
    path = tiny_config(reservoir={"policy": policy, "capacity": 10, "watermark": 10},
                       trainer={"extra_batches": 0, "log_every": 1})
    cfg = StudyConfig.load(path)
    returncode, out = train_from_producers(path, tmp_path)
    assert returncode == 0, out
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    final = read_metrics(cfg.study_dir / "metrics.csv")[-1]
    evicted = sum(int(r["steps_evicted"]) for r in ledger.values())
    unused = sum(int(r["steps_unused"]) for r in ledger.values())
    assert evicted == int(float(final["evicted_unseen"])) > 0, (ledger, final)
    assert 0 <= unused <= 10
    for r in ledger.values():
        assert int(r["steps_received"]) == 20 and int(r["steps_dropped"]) == 0, r
        trained = int(r["steps_received"]) - int(r["steps_evicted"]) - int(r["steps_unused"])
        assert trained >= 0, r
    # Each batch draws 8 samples, so at most 8 per batch were trained on.
    trained_total = 60 - evicted - unused
    assert 0 < trained_total <= int(float(final["n_sampled"])), (trained_total, final)


@pytest.mark.slow
def test_markers_without_a_checkpoint_are_lost_at_once(tiny_config, tmp_path):
    """A trainer that starts afresh while markers of an earlier run exist (the workflow will not
    rerun those members) ends them lost at once, saying why, instead of waiting
    stream.member_timeout_s for streams that never come; it removes their markers and finishes
    resumable, so that the next run sends them."""
    path = tiny_config(ensemble={"n_members": 2}, stream={"member_timeout_s": 300})
    cfg = StudyConfig.load(path)
    cfg.member_marker(1).parent.mkdir(parents=True)
    cfg.member_marker(1).write_text('{"member": 1, "steps": 20}')  # sent to a run whose checkpoint is gone
    datamove("make-heldout", "--config", path)
    trainer = popen_datamove("train", "--config", path, log=tmp_path / "train.log")
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        datamove("simulate", "--config", path, "--member", 0, "--wait-trainer", "--marker", cfg.member_marker(0))
        assert trainer.wait(timeout=60) == 0, trainer.output  # not after member_timeout_s (300 s)
    finally:
        trainer.kill()
    assert "1 member(s) had markers from an earlier run" in trainer.output
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert ledger[0]["status"] == "complete"
    assert ledger[1]["status"] == "lost" and "said it was sent, to an earlier trainer run" in ledger[1]["reason"]
    # Not a dead end: the marker is gone, so the workflow's next run sends the member, and the
    # trainer kept what a rerun resumes from (its checkpoint, and the note that makes the
    # workflow rerun it).
    assert "the same command, rerun, sends it again" in ledger[1]["reason"]
    assert not cfg.member_marker(1).exists() and cfg.member_marker(0).exists()
    assert cfg.checkpoint_path.exists() and cfg.resume_path.exists()
    assert cfg.resume_path.stat().st_mtime_ns >= (cfg.study_dir / "model.pt").stat().st_mtime_ns


@pytest.mark.slow
def test_a_paced_budget_is_spent_in_step_with_the_streams(tiny_config, tmp_path):
    """trainer.paced: the producers run one member after another, far slower than this trainer,
    which unpaced would spend its budget on the first member; paced, batch k waits for k / budget of
    the 3 x 20 steps, so every member is trained on and the budget is still spent exactly."""
    budget = 120
    path = tiny_config(trainer={"batch_budget": budget, "paced": True, "log_every": 5})
    cfg = StudyConfig.load(path)
    returncode, out = train_from_producers(path, tmp_path)
    assert returncode == 0, out
    expected = 3 * cfg.problem.n_steps
    rows = read_metrics(cfg.study_dir / "metrics.csv")
    assert int(rows[-1]["batch"]) == budget
    for row in rows:  # a row is logged after its batch, with what had been received by then
        assert int(row["batch"]) <= budget * int(row["samples_received"]) / expected + 1, row
    assert any(int(r["samples_received"]) < expected for r in rows)  # training did go on while members streamed
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    trained = {m: int(r["steps_received"]) - sum(int(r[k]) for k in ("steps_dropped", "steps_evicted", "steps_unused",
                                                                        "steps_unpaired"))
               for m, r in ledger.items()}
    assert all(n > 0 for n in trained.values()), trained  # the last member's steps too
