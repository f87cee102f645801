"""The online trainer: member streams -> member feed (ingest processes, shared memory) -> reservoir
-> the training loop shared with the offline trainer (:mod:`datamove.training.loop`)."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamove.config import ConfigError, StudyConfig
from datamove.reservoir import available_bytes, buffer_bytes, make_buffer
from datamove.streaming.feed import MemberFeed
from datamove.training.distributed import Dist, init_from_env
from datamove.training.loop import Source, Training
from datamove.training.records import Ledger, MemberRecord


@dataclass(frozen=True)
class TrainResult:
    batches: int
    val_loss: float
    samples_received: int
    members_complete: int
    members_lost: int
    wall_s: float


class Heartbeat:
    """Refreshes ``path`` every ``period`` s while the trainer is ready to read streams.

    The workflow's readiness gate lets solvers start only once this file is fresh. A thread is fine
    here: the training process never calls into ADIOS2 once streaming has begun.

    Each beat carries a sequence number, one more than the last: readers on other nodes judge
    freshness by seeing it advance on their own clock (datamove.gate), as the nodes' clocks may
    disagree. ``time`` (this node's clock) is for people reading the file.
    """

    def __init__(self, path: Path, period: float):
        self.path, self.period = path, period
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")

    def _beat(self, **extra) -> None:
        self._seq += 1
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "seq": self._seq, "time": time.time(), **extra}))
        tmp.replace(self.path)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat()
            self._stop.wait(self.period)

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, finished: bool) -> None:
        """``finished``: the trainer read every stream to its end; a last beat says so, and lets
        the last solvers confirm that it outlived their streams (see datamove.gate)."""
        self._stop.set()
        self._thread.join()
        if finished:
            self._beat(finished=True)
        else:
            self.path.unlink(missing_ok=True)


class StudyBusyError(RuntimeError):
    """Another trainer holds this study."""


class StudyLock:
    """One trainer per study: a second one refuses, naming the first (pid, host, start time).

    A lock whose process is gone (a crash, kill -9) is taken over.
    """

    def __init__(self, path: Path):
        self.path = path

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            other = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            other = None
        if other and other.get("pid") != me["pid"] and self._alive(other):
            raise StudyBusyError(
                f"study {self.path.parent.name} is already being trained by pid {other['pid']} on "
                f"{other['host']} (started {other['started']}; lock file {self.path})"
            )
        self.path.write_text(json.dumps(me))

    @staticmethod
    def _alive(other: dict) -> bool:
        if other.get("host") != socket.gethostname():
            return True  # cannot check another host: assume it runs
        try:
            os.kill(int(other["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _say(msg: str) -> None:
    print(f"[train] {msg}", flush=True)


class OnlineSource(Source):
    """Batches drawn from the reservoir, which the member feed fills while the ensemble runs.

    It is finished once every member of this rank has ended and every step received is in the
    buffer; it can train once the buffer holds its watermark (or, finished, anything), until
    ``trainer.extra_batches`` batches after every rank has finished.
    """

    waits = True

    def __init__(self, *, cfg: StudyConfig, dd: Dist, feed: MemberFeed, buffer, n_members: int):
        self.cfg, self.dd, self.feed, self.buffer = cfg, dd, feed, buffer
        self.n_members = n_members  # the whole ensemble's, for progress lines
        self.extra = 0  # batches trained after every rank's streams had ended
        self._announced = False

    def poll(self) -> tuple[bool, bool]:
        finished = self.feed.ended
        idle = self.feed.quiet and not self.buffer.ready(final=finished)
        self.feed.poll(timeout=0.05 if idle else 0.0)
        self.feed.intake(self.buffer)
        finished = self.feed.ended
        if finished and not self._announced:
            self._announced = True
            ledger = self.feed.ledger
            _say(
                f"all members ended ({ledger.count('complete')} complete, {ledger.count('lost')} lost); "
                f"training {self.cfg.trainer.extra_batches} more batches"
                + (f" (rank {self.dd.rank}; waiting for the other ranks)" if self.dd.active else "")
            )
        # final=finished (this rank's streams, known now): a consuming buffer below its watermark
        # at the end is drained.
        can_train = self.buffer.ready(final=finished) and not (finished and self.extra >= self.cfg.trainer.extra_batches)
        return finished, can_train

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.buffer.sample(self.cfg.trainer.batch_size)
        return b.x, b.y

    def trained(self, all_done: bool) -> None:
        self.extra += all_done

    def metrics(self) -> dict[str, Any]:
        ledger = self.feed.ledger
        received, done = self.dd.all_sum(
            ledger.steps_received, len(ledger.records) - len(ledger.unfinished())
        )
        stats = self.buffer.stats()  # this rank's reservoir (rank 0's in metrics.csv)
        return {"samples_received": int(received), "members_done": int(done), **stats}

    def progress(self, row) -> str:
        return (
            f"received {row['samples_received']}/{self.n_members * self.cfg.problem.n_steps} | members done "
            f"{row['members_done']}/{self.n_members} | buffer {len(self.buffer)}/{self.cfg.reservoir.capacity}"
        )


def train_online(cfg: StudyConfig, *, members: list[int] | None = None) -> TrainResult:
    """Train the surrogate from the ensemble's streams while the ensemble runs.

    Writes ``model.pt``, ``metrics.csv`` and ``ledger.csv`` to ``cfg.study_dir``; checkpoints to
    ``checkpoint.pt`` every ``trainer.checkpoint_every`` batches and resumes from it after a crash.
    """
    dd = init_from_env(cfg.trainer.device)
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    lock = StudyLock(cfg.lock_path)
    if dd.main:
        lock.acquire()
    try:
        return _train_online(cfg, members, dd)
    finally:
        if dd.main:
            lock.release()


def _rank_path(path: Path, dd: Dist) -> Path:
    """Rank 0 keeps the plain name; other ranks of a data-parallel run get their own file."""
    return path if dd.main else path.with_name(f"{path.stem}.rank{dd.rank}{path.suffix}")


def _train_online(cfg: StudyConfig, members: list[int] | None, dd: Dist) -> TrainResult:
    tc, problem = cfg.trainer, cfg.problem
    all_members = list(range(cfg.ensemble.n_members)) if members is None else list(members)
    members = dd.share(all_members)  # data-parallel: each rank reads its own share
    study_dir = cfg.study_dir
    run = Training(cfg=cfg, dd=dd, label="train")
    _check_buffer_memory(cfg, run.device)
    buffer = make_buffer(
        cfg.reservoir.policy,
        capacity=cfg.reservoir.capacity,
        watermark=cfg.reservoir.watermark,
        x_dim=problem.n_inputs,
        y_shape=problem.sample_shape,
        seed=tc.seed + dd.rank,
        device=run.device,
        on_full=cfg.reservoir.on_full,
    )
    ledger = Ledger(members=members, steps_expected=problem.n_steps)
    ckpt_path = _rank_path(cfg.checkpoint_path, dd)
    resumed = _resume(cfg, ckpt_path, run, buffer, ledger, dd)
    run.open_metrics(study_dir / "metrics.csv", rows=resumed["metrics_rows"] if resumed else None)
    if dd.active:
        _say(f"rank {dd.rank} of {dd.world}: members {members[:8]}{' ...' if len(members) > 8 else ''}")
    _say(
        f"study '{cfg.study}': {len(all_members)} members of {problem.describe()}, engine {cfg.stream.engine}, "
        f"model {tc.model} on {run.device}, {cfg.reservoir.policy} buffer {cfg.reservoir.capacity} "
        f"(watermark {cfg.reservoir.watermark}), {len(run.val_x)} validation samples"
    )
    params = {m: np.asarray(p, dtype=np.float32) for m, p in (resumed["params"] if resumed else {}).items()}
    if dd.main and resumed is None:
        # Notes of failed launches belong to an earlier run of the study: this one starts afresh.
        for member in all_members:
            cfg.member_failure(member).unlink(missing_ok=True)
    # Rank 0 removes stale contact files; no rank reads a stream before the gate opens, after the barrier.
    feed = MemberFeed(cfg=cfg, members=members, ledger=ledger, params=params, clean=dd.main, say=_say).start()
    dd.barrier()  # every rank's ingest pool is up before the gate opens
    heartbeat = Heartbeat(cfg.heartbeat_path, tc.heartbeat_s)
    if dd.main:
        heartbeat.start()
    _say(f"ready: reading streams from {cfg.stream_dir} with {feed.n_workers} ingest process(es)")
    source = OnlineSource(cfg=cfg, dd=dd, feed=feed, buffer=buffer, n_members=len(all_members))
    last_ckpt = [time.monotonic()]

    def checkpoint() -> None:
        if dd.active and ckpt_path.exists():
            # Ranks write theirs moments apart: keep the previous one, so that after a crash in
            # between every rank still has a checkpoint of the same batch (see _resume).
            ckpt_path.replace(_prev_path(ckpt_path))
        run.save(ckpt_path, extra={
            "buffer": buffer.state_dict(),
            "ledger": ledger.state(),
            "params": {m: p.tolist() for m, p in feed.params.items()},
            "metrics_rows": run.metrics.rows,
        })
        ledger.write(_rank_path(study_dir / "ledger.csv", dd))  # a readable view of the same moment
        last_ckpt[0], feed.completed = time.monotonic(), 0

    def idle() -> None:
        # A member's completion is worth a checkpoint soon: its job's marker now exists, and a
        # resumed trainer would otherwise wait for a member Snakemake will not rerun. (Not under
        # data-parallel training: ranks checkpoint together, at fixed batches.)
        if tc.checkpoint_every and feed.completed and not dd.active and time.monotonic() - last_ckpt[0] > 2.0:
            checkpoint()

    finished = False
    try:
        run.run(source, checkpoint=checkpoint, idle=idle)
        finished = True
        # Samples never drawn when training ends (the newest of a replacing buffer; of a consuming
        # one, those trainer.extra_batches did not reach) were received but not trained on.
        unused = buffer.held_members()[buffer.seen_counts() == 0]
        ledger.unused(unused.tolist())
        if len(unused):
            _say(
                f"{len(unused)} of the {len(buffer)} samples left in the buffer were never drawn "
                "(counted as steps_unused in the ledger)"
                + ("; raise trainer.extra_batches to train on them" if buffer.consumes else "")
            )
    finally:
        if dd.main:
            heartbeat.stop(finished=finished)
        feed.close()
        ledger.write(_rank_path(study_dir / "ledger.csv", dd))

    run.finish(source)
    # The whole ensemble's ledger, from every rank's share.
    if dd.active:
        for state in dd.gather(ledger.state()):
            for row in state:
                ledger.records[row["member"]] = MemberRecord(**row)
    dd.barrier()
    ckpt_path.unlink(missing_ok=True)  # the study is done: a rerun starts afresh
    _prev_path(ckpt_path).unlink(missing_ok=True)
    if dd.active and not dd.main:
        _rank_path(study_dir / "ledger.csv", dd).unlink(missing_ok=True)
        return TrainResult(run.batch, float("nan"), ledger.steps_received, 0, 0, run.wall_s)
    ledger.write(study_dir / "ledger.csv")
    try:
        cfg.stream_dir.rmdir()
    except OSError:
        pass
    run.save(study_dir / "model.pt", extra={"ledger": ledger.state()})
    result = TrainResult(
        batches=run.batch,
        val_loss=run.val_loss,
        samples_received=ledger.steps_received,
        members_complete=ledger.count("complete"),
        members_lost=ledger.count("lost"),
        wall_s=run.wall_s,
    )
    _say(
        f"done: {result.batches} batches in {result.wall_s:.1f} s, val loss {result.val_loss:.3e}, "
        f"{result.members_complete} members complete, {result.members_lost} lost, "
        f"{result.samples_received} samples received, "
        f"{ledger.steps_trained} of them trained on; "
        f"wrote {study_dir}/model.pt, metrics.csv, ledger.csv"
    )
    sys.stdout.flush()
    return result


def _check_buffer_memory(cfg: StudyConfig, device: torch.device) -> None:
    """Refuse, before allocating it, a reservoir larger than the memory left on its device (rather
    than an allocator's error for terabytes in the middle of a study)."""
    res, problem = cfg.reservoir, cfg.problem
    need = buffer_bytes(capacity=res.capacity, x_dim=problem.n_inputs, y_shape=problem.sample_shape)
    free = available_bytes(device)
    if free is not None and need > free:
        raise ConfigError(
            f"key 'reservoir.capacity': {res.capacity} samples of {list(problem.sample_shape)} float32 need "
            f"{need / 2**30:.2f} GiB, but {device} has {free / 2**30:.2f} GiB available: lower reservoir.capacity "
            f"(at most {free * 9 // 10 // (need // res.capacity)} here)"
        )


def _prev_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _resume(cfg: StudyConfig, path: Path, run: Training, buffer, ledger: Ledger, dd: Dist) -> dict | None:
    """Restore the state of a crashed run from its checkpoint ``path``; the checkpoint, or None.

    Under data-parallel training every rank must restart from the same batch (replicas and
    collectives in step), and ranks write their checkpoints moments apart: each keeps its previous
    one too, and all take the newest batch that every rank has. Checkpoints are memory-mapped, not
    read whole: one holds the reservoir (capacity x sample).
    """
    found: dict[int, tuple[Path, dict]] = {}
    for candidate in (path, _prev_path(path)):
        if not candidate.exists():
            continue
        ckpt = torch.load(candidate, map_location="cpu", weights_only=False, mmap=True)
        if ckpt.get("config") != dict(cfg.raw):
            stale = candidate.with_name(f"{candidate.stem}.stale{candidate.suffix}")
            candidate.replace(stale)
            _say(f"checkpoint {candidate} belongs to another configuration: not resumed from (kept as {stale})")
            continue
        found[int(ckpt["step"])] = (candidate, ckpt)
    if dd.active:
        common = set.intersection(*(set(steps) for steps in dd.gather(sorted(found))))
        if found and not common:
            _say(f"rank {dd.rank}: no checkpoint of a batch that every rank has: starting afresh")
        found = {step: found[step] for step in common}
    if not found:
        return None
    path, ckpt = found[max(found)]
    run.resume(ckpt)
    buffer.load_state_dict(ckpt["buffer"])
    ledger.load_state(ckpt["ledger"])
    for member in ledger.unfinished():
        rec = ledger[member]
        if cfg.member_marker(member).exists():
            # Its solver finished after the checkpoint: Snakemake will not rerun it.
            ledger.ended(
                member, "lost", "its solver finished between the last trainer checkpoint and the trainer crash"
            )
        elif rec.status == "streaming":
            rec.status = "retrying"  # its solver died with the trainer; a rerun resends it
    done = sum(ledger[m].status == "complete" for m in ledger.records)
    _say(
        f"resumed from {path} at batch {ckpt['step']}: {done} members complete, "
        f"{len(ledger.unfinished())} to come, {len(buffer)} samples in the buffer"
    )
    return ckpt
