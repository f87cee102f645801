"""Data-parallel training: 2 CPU ranks (gloo) under torchrun, online (each reading its own members) and
offline (each reading its own shard of the stored samples)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import datamove, popen_datamove, model_args
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
    assert sum(int(r["steps_received"]) for r in ledger2) == 4 * cfg.problem.n_steps
    assert int(metrics2[-1]["samples_received"]) == 4 * cfg.problem.n_steps
    first, last1, last2 = float(metrics1[0]["val_loss"]), float(metrics1[-1]["val_loss"]), float(metrics2[-1]["val_loss"])
    assert last2 < first  # it learned
    assert last2 < 3 * last1 + 1e-3, (last1, last2)  # comparable to the single-process run
    model, ckpt = load_surrogate(cfg.study_dir / "model.pt")
    assert ckpt["step"] >= 200
    assert not list(cfg.study_dir.glob("*.rank1*"))  # per-rank files are folded in


def test_offline_shards_are_disjoint_and_change_every_epoch(tiny_config):
    """What each rank of a 2-rank offline run reads: its own half of every epoch's permutation."""
    from test_offline import bp5_config

    from datamove.data.dataset import MemberDataset, make_loader

    _, cfg = bp5_config(tiny_config, offline={"loader_workers": 0})
    ds = MemberDataset.from_config(cfg)  # 3 members x 20 steps
    loaders = [make_loader(ds, batch_size=5, workers=0, seed=0, rank=r, world=2) for r in range(2)]
    orders = []
    for epoch in range(2):
        shards = []
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
            shards.append(torch.cat([idx for _, _, idx in loader]).tolist())
        assert len(shards[0]) == len(shards[1]) == len(ds) // 2  # same batches on both ranks
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(len(ds)))
        orders.append(shards[0])
    assert orders[0] != orders[1]  # reshuffled every epoch
    ds.close()


@pytest.mark.slow
def test_two_ranks_train_offline_to_a_comparable_loss(tiny_config, tmp_path):
    """The offline trainer under torchrun: 2 gloo ranks, the same data and batch budget as 1 rank.

    Each rank trains on its own shard of every epoch, so at the same number of batches the 2-rank
    run has seen twice the samples: its loss must be comparable (a factor 2 is generous: measured
    1.4) and far below the untrained model's.
    """
    from test_offline import bp5_config

    from datamove.training.heldout import load_heldout
    from datamove.training.step import build_surrogate, evaluate

    # 2 ranks x batch 5 = one epoch in samples / 10 batches: the budget is EPOCHS whole epochs.
    MEMBERS, STEPS, EPOCHS = 16, 10, 10
    samples = MEMBERS * STEPS
    per_epoch = samples // 10
    budget = per_epoch * EPOCHS
    common = {
        "ensemble": {"n_members": MEMBERS},
        "solver": {"n_steps": STEPS},
        "trainer": {"batch_size": 5, "log_every": budget // 4, "lr": 3e-3, "weight_decay": 0.0},
        "offline": {"epochs": 1000, "max_batches": budget, "loader_workers": 0},
    }
    single, cfg1 = bp5_config(tiny_config, **common)
    datamove("make-heldout", "--config", single)
    out1 = datamove("train-offline", "--config", single, "--threads", 1).stdout
    metrics1 = list(csv.DictReader((cfg1.study_dir / "metrics.csv").open()))

    # The same member files and held-out set in another study folder; the budget as a comparison
    # study passes it (the relaunch under torchrun carries --budget-from along).
    ddp = tiny_config(
        "ddp.yaml", study="ddp", stream={"engine": "BP5"},
        **{**common, "trainer": {**common["trainer"], "world_size": 2}, "offline": {"loader_workers": 0}},
    )
    cfg = StudyConfig.load(ddp)
    shutil.copytree(cfg1.stream_dir, cfg.stream_dir)
    shutil.copytree(cfg1.heldout_dir, cfg.heldout_dir)
    proc = datamove(
        "train-offline", "--config", ddp, "--threads", 1, "--budget-from", cfg1.study_dir / "metrics.csv", timeout=180
    )
    out = proc.stdout + proc.stderr
    metrics2 = list(csv.DictReader((cfg.study_dir / "metrics.csv").open()))

    assert "data-parallel" in out
    assert f"rank 1 of 2: a shard of {samples // 2} of {samples} samples ({per_epoch} batches)" in out
    assert f"{budget} batches (" in out1 and f"{budget} batches ({EPOCHS}.00 epochs" in out
    assert "stopped by batches" in out1 and "stopped by batches" in out
    assert [int(r["batch"]) for r in metrics2] == [budget // 4 * k for k in (1, 2, 3, 4)]  # one writer: rank 0
    for row in metrics2:  # throughput counts both ranks' batches
        assert float(row["samples_per_s"]) == pytest.approx(2 * 5 * float(row["batches_per_s"]))
    # Disjoint shards: every sample drawn exactly once an epoch, by one rank or the other.
    seen = {int(r["times_seen"]): int(r["samples"]) for r in csv.DictReader((cfg.study_dir / "seen.csv").open())}
    assert seen == {EPOCHS: samples}

    torch.manual_seed(cfg.trainer.seed)  # the untrained model both runs start from
    initial = evaluate(build_surrogate(model_args(cfg)), *load_heldout(cfg))
    last1, last2 = float(metrics1[-1]["val_loss"]), float(metrics2[-1]["val_loss"])
    assert last2 < 0.1 * initial, (initial, last2)  # it learned
    # Comparable to the single-process run, which took as many steps over half the samples.
    assert last2 < 2 * last1, (last1, last2)
    _, ckpt = load_surrogate(cfg.study_dir / "model.pt")
    assert ckpt["trainer"] == "offline" and ckpt["step"] == budget
    written = sorted(p.name for p in cfg.study_dir.iterdir())
    assert written == ["ledger.csv", "metrics.csv", "model.pt", "seen.csv", "streams"]  # rank 0's, nothing else


def _checkpoints(cfg, kind: str = "") -> list[dict] | None:
    """Both ranks' checkpoints (rank 0: checkpoint.pt, rank 1: checkpoint.rank1.pt), or None.
    ``kind="prev"``: the previous ones (checkpoint.prev.pt, checkpoint.rank1.prev.pt)."""
    paths = [_ckpt_path(cfg, 0, kind), _ckpt_path(cfg, 1, kind)]
    try:
        return [torch.load(p, weights_only=False) for p in paths]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def _ckpt_path(cfg, rank: int, kind: str = "") -> Path:
    name = "checkpoint" + (f".rank{rank}" if rank else "") + (f".{kind}" if kind else "") + ".pt"
    return cfg.checkpoint_path.with_name(name)


def _complete(ckpt: dict) -> set[int]:
    return {r["member"] for r in ckpt["ledger"] if r["status"] == "complete"}


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun starts each rank in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


class _Trainer:
    """``datamove train`` under torchrun; :meth:`signal` reaches torchrun, its ranks and their ingest."""

    def __init__(self, path, log):
        self.log = log
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "datamove", "train", "--config", str(path), "--threads", "1"],
                stdout=fh, stderr=subprocess.STDOUT,
            )
        self._tree: list[int] = []

    def signal(self, sig) -> None:
        if self.proc.poll() is None:
            self._tree = _descendants(self.proc.pid)  # before torchrun dies and its ranks lose their parent
        for pid in self._tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("gap", [False, True], ids=["same-batch", "ranks-one-checkpoint-apart"])
def test_two_ranks_resume_from_their_checkpoints(tiny_config, tmp_path, gap):
    """Data-parallel online training killed (kill -9, every rank) resumes where its ranks checkpointed.

    gap: rank 1 is killed after setting its last checkpoint aside and before writing the new one
    (ranks write theirs moments apart), emulated by removing rank 1's newest checkpoint: both ranks
    must resume from the newest batch both have, rank 0 from its previous checkpoint."""
    path = tiny_config(
        ensemble={"n_members": 4, "retries": 1},
        solver={"n_steps": 30, "step_delay_s": 0.05},
        trainer={"world_size": 2, "checkpoint_every": 100, "ingest_workers": 1, "extra_batches": 100},
        stream={"open_timeout_s": 30, "member_timeout_s": 30},
    )
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)

    def solvers(members, tag):
        return [
            popen_datamove("simulate", "--config", path, "--member", m, "--wait-trainer", log=tmp_path / f"{tag}{m}.log")
            for m in members
        ]

    first = _Trainer(path, tmp_path / "train1.log")
    first_solvers = solvers(range(4), "first")
    try:
        # Kill once each rank has checkpointed one of its members complete (rank 0: 0, 2; rank 1: 1, 3).
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and first.proc.poll() is None, first.log.read_text()
            ckpts = _checkpoints(cfg)
            ready = not gap or _checkpoints(cfg, "prev") is not None
            if ckpts and ready and _complete(ckpts[0]) & {0, 2} and _complete(ckpts[1]) & {1, 3}:
                # Frozen, the pair cannot change under us. Killed with both ranks at one batch, so
                # that the expected batch is known (the gap case then removes one file).
                first.signal(signal.SIGSTOP)
                ckpts = _checkpoints(cfg)
                if ckpts[0]["step"] == ckpts[1]["step"]:
                    break
                first.signal(signal.SIGCONT)
            time.sleep(0.05)
        first.kill()
    finally:
        first.kill()
        for s in first_solvers:
            s.kill()  # their trainer is gone: those still streaming or waiting would fail or time out
    names = [_ckpt_path(cfg, 0), _ckpt_path(cfg, 1)]
    if gap:
        ckpts = _checkpoints(cfg, "prev")
        assert ckpts[0]["step"] == ckpts[1]["step"]
        _ckpt_path(cfg, 1).unlink()
        names = [_ckpt_path(cfg, 0, "prev"), _ckpt_path(cfg, 1, "prev")]
    step = ckpts[0]["step"]
    done = _complete(ckpts[0]) | _complete(ckpts[1])
    assert step > 0 and len(done) < 4
    dead_pid = json.loads(cfg.heartbeat_path.read_text())["pid"]  # left behind by the killed rank 0

    second = _Trainer(path, tmp_path / "train2.log")
    try:
        # Solvers only once the new trainer beats: the dead one's heartbeat file is still there.
        deadline = time.monotonic() + 60
        while json.loads(cfg.heartbeat_path.read_text())["pid"] == dead_pid:
            assert time.monotonic() < deadline and second.proc.poll() is None, second.log.read_text()
            time.sleep(0.05)
        rerun = solvers(sorted(set(range(4)) - done), "second")
        assert second.proc.wait(timeout=180) == 0, second.log.read_text()
        for s in rerun:
            assert s.wait(timeout=60) == 0, s.output
    finally:
        second.kill()
    log = second.log.read_text()
    assert f"resumed from {names[0]} at batch {step}" in log
    assert f"resumed from {names[1]} at batch {step}" in log
    with open(cfg.study_dir / "ledger.csv") as fh:
        ledger = list(csv.DictReader(fh))
    assert [r["status"] for r in ledger] == ["complete"] * 4, ledger
    assert all(int(r["steps_received"]) == cfg.problem.n_steps for r in ledger), ledger
    assert all(int(ledger[m]["attempts"]) == 1 for m in done)  # complete before the crash: not resent
    _, ckpt = load_surrogate(cfg.study_dir / "model.pt")
    assert ckpt["step"] > step
    assert not list(cfg.study_dir.glob("checkpoint*.pt"))
    with open(cfg.study_dir / "metrics.csv") as fh:
        batches = [int(r["batch"]) for r in csv.DictReader(fh)]
    assert batches == sorted(batches) and batches[0] < step < batches[-1]  # the first run's rows kept
