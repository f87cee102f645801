"""The online trainer: member streams -> member feed (ingest processes, shared memory) -> reservoir
-> the training loop shared with the offline trainer (:mod:`datamove.training.loop`)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamove.config import ConfigError, StudyConfig
from datamove.problems.samples import SampleSpec
from datamove.reservoir import available_bytes, buffer_bytes, make_buffer
from datamove.run.files import write_json
from datamove.run.lock import StudyLock
from datamove.run.receipts import held, read_receipt, write_receipt
from datamove.sampling import proposals
from datamove.streaming.feed import MemberFeed
from datamove.training.distributed import Dist, init_from_env
from datamove.training.loop import Interrupted, Source, StopSignals, Training
from datamove.training.records import Ledger, MemberRecord
from datamove.training.steering import Steering, note_draws


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
    freshness by seeing it advance on their own clock (datamove.run.heartbeat), as the nodes' clocks may
    disagree. ``time`` (this node's clock) is for people reading the file.

    ``status``: called at every beat; its small dict of counters goes into the beat as ``status``,
    for ``datamove status`` (see :meth:`counters`). A failing call leaves it out of that beat: the
    beat itself, which the solvers wait for, never fails for it.
    """

    def __init__(self, path: Path, period: float, *, status: Callable[[], dict[str, Any]] | None = None):
        self.path, self.period, self.status = path, period, status
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")

    @staticmethod
    def counters(*, ledger: Ledger, buffer, training: Training) -> Callable[[], dict[str, Any]]:
        """The live counters of a trainer, for ``status``: members of this process by status
        (``members``: how many it reads, the whole ensemble but under data-parallel training),
        members retried (not lost: streamed again, or waiting for a rerun), samples received, buffer length and capacity, the batch,
        and the batch and losses of the last metrics row (and of the last rollout validation). Counts, never per-member lists: the
        file is rewritten every beat. Read from the heartbeat thread: plain ints and a list's last
        item, no torch call (which could wait on the device)."""

        def status() -> dict[str, Any]:
            by_status = dict.fromkeys(("pending", "streaming", "retrying", "complete", "lost"), 0)
            retried = received = 0
            for rec in list(ledger.records.values()):
                by_status[rec.status] = by_status.get(rec.status, 0) + 1
                retried += rec.status != "lost" and (rec.attempts > 1 or rec.status == "retrying")
                received += rec.steps_received
            rows = training.metrics.rows if training.metrics is not None else []
            last = rows[-1] if rows else {}

            def finite(value):
                return None if value is None or not np.isfinite(value) else float(value)  # NaN is no JSON

            return {
                "members": len(ledger.records), **by_status, "retried": retried,
                "samples_received": received, "buffer": len(buffer), "capacity": buffer.capacity,
                "batch": training.batch, "logged_batch": last.get("batch"),
                "train_loss": finite(last.get("train_loss")), "val_loss": finite(last.get("val_loss")),
                **({} if training.last_rollout is None else {
                    "rollout_batch": training.last_rollout[0], "val_rollout_rel_l2": finite(training.last_rollout[1]),
                }),
            }

        return status

    def _beat(self, **extra) -> None:
        self._seq += 1
        if self.status is not None:
            try:
                extra["status"] = self.status()
            except Exception:  # noqa: BLE001 - counters are a courtesy; the beat is what matters
                pass
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "seq": self._seq, "time": time.time(), **extra}))
        tmp.replace(self.path)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat()
            self._stop.wait(self.period)

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def stop(self, *, finished: bool, reason: str = "") -> None:
        """``finished``: the trainer read every stream to its end and wrote its model; a last beat
        says so. Otherwise the last beat says ``stopped`` (``reason``), so that solvers waiting for
        this trainer fail at once instead of waiting for a heartbeat that will not come (see
        datamove.run.heartbeat); where even that small write fails (a full disk) the file is removed."""
        self._stop.set()
        if self.started:
            self._thread.join()
        try:
            self._beat(**({"finished": True} if finished else {"stopped": reason or "stopped"}))
        except OSError:
            self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
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

    def __init__(self, *, cfg: StudyConfig, dd: Dist, feed: MemberFeed, buffer, n_members: int, batch: int = 0):
        self.cfg, self.dd, self.feed, self.buffer = cfg, dd, feed, buffer
        self.n_members = n_members  # the whole ensemble's, for progress lines
        self.extra = 0  # batches trained after every rank's streams had ended
        self.batches = batch  # batches trained in all (a resumed run's included): trainer.batch_budget
        self._announced = False
        self._took = False  # the last train step's meanwhile() took in what had arrived

    def poll(self) -> tuple[bool, bool]:
        finished = self.feed.ended
        spent = self.cfg.trainer.batch_budget is not None and self.batches >= self.cfg.trainer.batch_budget
        idle = spent or self._ahead(finished) or (self.feed.quiet and not self.buffer.ready(final=finished))
        if idle or not self._took:  # else the intake beside the last train step did it
            self.feed.poll(timeout=0.05 if idle else 0.0)
            self.feed.intake(self.buffer)
        self._took = False
        finished = self.feed.ended
        if finished and not self._announced:
            self._announced = True
            ledger = self.feed.ledger
            budget = self.cfg.trainer.batch_budget
            if budget is None:
                more = f"training {self.cfg.trainer.extra_batches} more batches"
            elif self.batches < budget:
                more = f"training up to the budget of {budget} batches ({budget - self.batches} more)"
            else:
                more = (f"the budget of {budget} batches (trainer.batch_budget) was spent before the last member "
                        "ended, so the steps that arrived since were not trained on: raise it to train on every member")
            _say(
                f"all members ended ({ledger.count('complete')} complete, {ledger.count('lost')} lost); "
                + more
                + (f" (rank {self.dd.rank}; waiting for the other ranks)" if self.dd.active else "")
            )
        # final=finished (this rank's streams, known now): a consuming buffer below its watermark
        # at the end is drained.
        budget = self.cfg.trainer.batch_budget
        if budget is not None:
            # An equal budget for every run: spent, training waits for the streams to end.
            can_train = self.buffer.ready(final=finished) and self.batches < budget and not self._ahead(finished)
        else:
            can_train = self.buffer.ready(final=finished) and not (finished and self.extra >= self.cfg.trainer.extra_batches)
        return finished, can_train

    def _ahead(self, finished: bool) -> bool:
        """trainer.paced: the budget's next batch must wait for the streams, having been spent
        as far as this rank's ensemble has arrived (batch k once k / batch_budget of its expected
        steps are received; no wait once its streams have ended)."""
        tc = self.cfg.trainer
        if not tc.paced or tc.batch_budget is None or finished:
            return False
        ledger = self.feed.ledger
        expected = len(ledger.records) * self.cfg.problem.n_steps
        return self.batches >= tc.batch_budget * ledger.steps_received / max(expected, 1)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.buffer.sample(self.cfg.trainer.batch_size)
        return b.x, b.y

    def meanwhile(self):
        return self._take if self.cfg.trainer.overlap_intake else None

    def _take(self) -> None:
        """The feed's poll and intake, beside a train step (trainer.overlap_intake): the batch it
        trains on was drawn before, and the next is drawn after this returns, so puts and draws
        keep the order they have between steps."""
        self.feed.poll(timeout=0.0)
        self.feed.intake(self.buffer)
        self._took = True

    def trained(self, all_done: bool) -> None:
        self.extra += all_done
        self.batches += 1

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

    SIGINT or SIGTERM stops it at the next batch: a checkpoint, the ledger and a ``stopped``
    heartbeat are written, the lock released, and :class:`datamove.training.loop.Interrupted` is
    raised (no model.pt: a rerun resumes from the checkpoint).
    """
    dd = init_from_env(cfg.trainer.device)
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    lock = StudyLock(cfg.lock_path)
    if dd.main:
        lock.acquire()
    heartbeat = Heartbeat(cfg.heartbeat_path, cfg.trainer.heartbeat_s)
    try:
        with StopSignals() as stop:
            return _train_online(cfg, members, dd, stop, heartbeat)
    except BaseException as exc:
        if dd.main and not heartbeat.started:
            # Before its first beat (a checkpoint that cannot be read, held-out members that do
            # not load, ...): the gate waits for a beat, and this last one tells it why none comes.
            heartbeat.stop(finished=False, reason=f"could not start: {type(exc).__name__}: {exc}")
        raise
    finally:
        if dd.main:
            lock.release()


def _rank_path(path: Path, dd: Dist) -> Path:
    """Rank 0 keeps the plain name; other ranks of a data-parallel run get their own file."""
    return path if dd.main else path.with_name(f"{path.stem}.rank{dd.rank}{path.suffix}")


class CheckpointDamaged(RuntimeError):
    """A checkpoint that cannot be read: the message names the file and the way out."""


def _train_online(cfg: StudyConfig, members: list[int] | None, dd: Dist, stop: StopSignals,
                  heartbeat: Heartbeat) -> TrainResult:
    tc, problem = cfg.trainer, cfg.problem
    all_members = list(range(cfg.ensemble.n_members)) if members is None else list(members)
    members = dd.share(all_members)  # data-parallel: each rank reads its own share
    study_dir = cfg.study_dir
    run = Training(cfg=cfg, dd=dd, label="train")
    _check_buffer_memory(cfg, run.device)
    spec = SampleSpec.of(cfg)
    buffer = make_buffer(
        cfg.reservoir.policy,
        capacity=cfg.reservoir.capacity,
        watermark=cfg.reservoir.watermark,
        x_dim=spec.x_dim(problem.n_inputs),  # windows: a time per application
        y_shape=spec.stored_shape(problem.sample_shape),  # autoregressive: windows of L steps
        window=spec.window,  # each step stored once, however many windows hold it
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
        # Notes of failed launches and receipts belong to an earlier run of the study: this one
        # starts afresh.
        for member in all_members:
            cfg.member_failure(member).unlink(missing_ok=True)
            cfg.member_receipt(member).unlink(missing_ok=True)
            cfg.member_start(member).unlink(missing_ok=True)
        if cfg.ensemble.adaptive is not None:
            proposals.clear(cfg, all_members)  # draws and proposals of that run too
    dd.barrier()  # rank 0's clean-up is done before any rank writes a receipt
    if resumed is None:
        _orphan_markers(cfg, ledger)
    else:
        _sync_receipts(cfg, ledger)
    # Rank 0 removes stale contact files; no rank reads a stream before the gate opens, after the barrier.
    feed = MemberFeed(cfg=cfg, members=members, ledger=ledger, params=params, clean=dd.main, say=_say).start()
    dd.barrier()  # every rank's ingest pool is up before the gate opens
    heartbeat.status = Heartbeat.counters(ledger=ledger, buffer=buffer, training=run)
    if dd.main:
        heartbeat.start()
    _say(f"ready: reading streams from {cfg.stream_dir} with {feed.n_workers} ingest process(es)")
    source = OnlineSource(cfg=cfg, dd=dd, feed=feed, buffer=buffer, n_members=len(all_members), batch=run.batch)
    # sampler adaptive: rank 0 publishes proposals for the members still to start.
    steering = None
    if cfg.ensemble.adaptive is not None and dd.main:
        steering = Steering(cfg=cfg, buffer=buffer, model=run.model, params=feed.params, ledger=ledger,
                            batch=run.batch, say=_say)
    last_ckpt = [time.monotonic(), 0.0]  # when the last checkpoint was written, and how long it took
    # A receipt tells a member's solver that its steps are safe, so it may write its marker (after
    # which the workflow never reruns it): once a checkpoint holds them. Without checkpoints, or
    # under data-parallel training (ranks checkpoint together, at fixed batches), at once.
    durable = bool(tc.checkpoint_every) and not dd.active

    def receipts() -> None:
        for member in feed.newly_complete:
            write_receipt(cfg, member, steps=ledger[member].steps_received, checkpointed=durable)
        feed.newly_complete.clear()

    def rejections() -> None:
        # At once, not after a checkpoint: they hold nothing, they only end a solver's wait.
        for member, reason, contact in feed.newly_rejected:
            if ledger[member].status != "complete":
                write_receipt(cfg, member, steps=ledger[member].steps_received, checkpointed=False,
                              status=ledger[member].status, reason=reason, contact=contact)
        feed.newly_rejected.clear()

    def checkpoint() -> None:
        t0 = time.monotonic()
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
        if cfg.ensemble.adaptive is not None:
            note_draws(cfg, ledger)
        ledger.write(_rank_path(study_dir / "ledger.csv", dd))  # a readable view of the same moment
        last_ckpt[0] = time.monotonic()
        last_ckpt[1] = last_ckpt[0] - t0
        if durable:
            receipts()

    def idle() -> None:
        # A member's completion is worth a checkpoint soon: its solver waits for the receipt before
        # it writes its marker. Not more often than every 0.5 s, nor than every 4 checkpoint
        # durations (a large reservoir takes seconds to write): training keeps >= 80 % of its time.
        if feed.newly_rejected:
            rejections()
        if steering is not None:
            steering.maybe_publish(run.batch)
        if not feed.newly_complete:
            return
        if not durable:
            receipts()
        elif time.monotonic() - last_ckpt[0] > max(0.5, 4 * last_ckpt[1]):
            checkpoint()

    finished, why = False, "crashed"
    try:
        run.run(source, checkpoint=checkpoint, idle=idle, stop=stop)
        finished = True
        rejections()  # the members ended last (a solver may still be waiting)
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
    except Interrupted as exc:
        why = str(exc)
        if tc.checkpoint_every:
            checkpoint()
            _say(f"{exc}: checkpoint {ckpt_path} written; no model.pt. A rerun resumes from it "
                 "(after an interrupted snakemake: the same command with --rerun-incomplete)")
        else:
            _say(f"{exc}: no checkpoint (trainer.checkpoint_every is 0), no model.pt")
        raise
    except BaseException as exc:
        why = f"crashed: {type(exc).__name__}: {exc}"
        raise
    finally:
        if dd.main and not finished:
            heartbeat.stop(finished=False, reason=why)
            # The gate names this trainer: a rerun must open it anew for the next one (members of
            # a rerun that found this gate would wait for a trainer that is gone).
            cfg.gate_path.unlink(missing_ok=True)
        feed.close()
        if cfg.ensemble.adaptive is not None:
            note_draws(cfg, ledger)
        ledger.write(_rank_path(study_dir / "ledger.csv", dd))

    try:
        _finish(cfg, dd, run, source, ledger, ckpt_path, receipts, durable, checkpoint)
    except BaseException as exc:
        if dd.main:  # the solvers still waiting for receipts learn it at once
            heartbeat.stop(finished=False, reason=f"crashed while finishing: {type(exc).__name__}: {exc}")
        raise
    if dd.active and not dd.main:
        return TrainResult(run.batch, float("nan"), ledger.steps_received, 0, 0, run.wall_s)
    heartbeat.stop(finished=True)
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


def _finish(cfg: StudyConfig, dd: Dist, run: Training, source: OnlineSource, ledger: Ledger, ckpt_path: Path,
            receipts: Callable[[], None], durable: bool, checkpoint: Callable[[], None]) -> None:
    """The last metrics row, the whole ensemble's ledger, model.pt, then the last receipts (the
    model holds those members now). The checkpoint goes only once model.pt is written: a failure
    in between leaves a study that a rerun resumes.

    With members lost, the study is not done: a final checkpoint is kept, and a note
    (``trainer.resume.json``, an input of the workflow's train_online) written after model.pt makes
    the same command, rerun, resume this trainer and send those members again (:func:`_resume`)."""
    study_dir = cfg.study_dir
    run.finish(source)
    if not durable:
        receipts()  # each rank its own members' (only rank 0 goes on to the model)
    # The whole ensemble's ledger, from every rank's share.
    if dd.active:
        for state in dd.gather(ledger.state()):
            for row in state:
                ledger.records[row["member"]] = MemberRecord(**row)
    dd.barrier()
    if dd.active and not dd.main:
        _rank_path(study_dir / "ledger.csv", dd).unlink(missing_ok=True)
    else:
        ledger.write(study_dir / "ledger.csv")
        try:
            cfg.stream_dir.rmdir()
        except OSError:
            pass
        lost = [m for m, rec in ledger.records.items() if rec.status != "complete"]
        resumable = bool(lost) and not dd.active
        if resumable:
            checkpoint()  # this moment, for the rerun to resume from
        run.save(study_dir / "model.pt", extra={"ledger": ledger.state()})
        receipts()
        if resumable:
            # The gate names this trainer: the rerun that resumes it must open the gate anew, or its
            # members would find this run's gate (Snakemake keeps a temp output of a failed run)
            # and fail on a trainer that has finished.
            cfg.gate_path.unlink(missing_ok=True)
            write_json(cfg.resume_path, {"members": lost, "batch": run.batch, "checkpoint": str(ckpt_path),
                                         "time": time.time()})
            _say(f"{len(lost)} member(s) lost (members {lost[:8]}{' ...' if len(lost) > 8 else ''}): the same "
                 f"command, rerun, resumes this trainer from {ckpt_path} and sends them again")
            return
    ckpt_path.unlink(missing_ok=True)  # the study is done: a rerun starts afresh
    _prev_path(ckpt_path).unlink(missing_ok=True)


def _check_buffer_memory(cfg: StudyConfig, device: torch.device) -> None:
    """Refuse, before allocating it, a reservoir larger than the memory left on its device (rather
    than an allocator's error for terabytes in the middle of a study)."""
    res, problem = cfg.reservoir, cfg.problem
    spec = SampleSpec.of(cfg)
    shape = spec.stored_shape(problem.sample_shape)  # windows: h + n K steps a sample
    need = buffer_bytes(capacity=res.capacity, x_dim=spec.x_dim(problem.n_inputs), y_shape=shape)
    free = available_bytes(device)
    if free is not None and need > free:
        raise ConfigError(
            f"key 'reservoir.capacity': {res.capacity} samples of {list(shape)} float32 need "
            f"{need / 2**30:.2f} GiB, but {device} has {free / 2**30:.2f} GiB available: lower reservoir.capacity "
            f"(at most {free * 9 // 10 // (need // res.capacity)} here)"
        )


def _orphan_markers(cfg: StudyConfig, ledger: Ledger) -> None:
    """A trainer that starts afresh holds no member's steps, but the workflow of this run does not
    rerun a member whose marker exists (left by an earlier run whose checkpoint is gone, or forced
    to train again). Such a marker is removed and the member ends lost at once, with the reason,
    instead of waiting for a stream that will not come: the trainer finishes resumable
    (:func:`_finish`), and the same command, rerun, sends the member. (``datamove restart``, the
    way to start afresh on purpose, removes the markers before the run: nothing is lost then.)"""
    orphans = [m for m in ledger.records if cfg.member_marker(m).exists()]
    for member in orphans:
        _unmark(cfg, member)
        ledger.ended(
            member, "lost",
            "its marker said it was sent, to an earlier trainer run that this one does not resume (no "
            "checkpoint); the marker was removed: the same command, rerun, sends it again",
        )
    if orphans:
        _say(
            f"{len(orphans)} member(s) had markers from an earlier run (members {orphans[:8]}"
            f"{' ...' if len(orphans) > 8 else ''}), which this run of the workflow will not send: counted as "
            "lost, markers removed; the same command, rerun, sends them"
        )


def _unmark(cfg: StudyConfig, member: int) -> None:
    """Remove ``member``'s marker, and its job's (ensemble.members_per_job > 1): the workflow's
    next run sends it again."""
    cfg.member_marker(member).unlink(missing_ok=True)
    if cfg.members_per_job > 1:
        cfg.job_marker(member // cfg.members_per_job).unlink(missing_ok=True)


def _sync_receipts(cfg: StudyConfig, ledger: Ledger) -> None:
    """After a resume, the receipts say exactly which members the checkpoint holds complete: a crash
    may have come between a checkpoint and its receipts, or after receipts of a later one."""
    for member, rec in ledger.records.items():
        if rec.status == "complete":
            if not held(read_receipt(cfg, member)):
                write_receipt(cfg, member, steps=rec.steps_received, checkpointed=True)
        else:
            cfg.member_receipt(member).unlink(missing_ok=True)


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
        try:
            ckpt = torch.load(candidate, map_location="cpu", weights_only=False, mmap=True)
        except Exception as exc:  # a truncated or foreign file: torch's message names no file
            raise CheckpointDamaged(
                f"checkpoint {candidate} cannot be read, it is damaged ({exc}). To start the trainer afresh, "
                f"keeping the held-out and test members: `datamove restart --config {cfg.study_dir / 'config.yaml'}` "
                "(it sets the checkpoint aside and removes the members' markers, so that every member is "
                "sent again), then the same snakemake command"
            ) from exc
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
    reopened = []
    for member, rec in ledger.records.items():
        rec.steps_unused = 0  # counted when training ends, from the buffer of that moment
        if rec.status == "complete":
            continue
        if cfg.member_marker(member).exists():
            # Its solver finished after the checkpoint: this run of the workflow will not rerun it.
            _unmark(cfg, member)
            ledger.ended(
                member, "lost", "its solver finished between the last trainer checkpoint and the trainer crash "
                "(its marker was removed: the same command, rerun, sends it again)"
            )
        elif rec.status == "streaming":
            rec.status = "retrying"  # its solver died with the trainer; a rerun resends it
        elif rec.status == "lost":
            # Lost in the run that wrote this checkpoint (a trainer that finished with members lost
            # is resumed for them): the workflow runs its job again, since it has no marker.
            rec.status, rec.reason = "retrying", f"sent again after: {rec.reason}"
            reopened.append(member)
            # Its last failure note (maybe final, from the run that lost it) is not this run's.
            cfg.member_failure(member).unlink(missing_ok=True)
    if reopened:
        _say(f"{len(reopened)} member(s) lost in the earlier run are waited for again "
             f"(members {reopened[:8]}{' ...' if len(reopened) > 8 else ''})")
    done = sum(ledger[m].status == "complete" for m in ledger.records)
    _say(
        f"resumed from {path} at batch {ckpt['step']}: {done} members complete, "
        f"{len(ledger.unfinished())} to come, {len(buffer)} samples in the buffer"
    )
    return ckpt
