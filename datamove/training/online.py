"""The online trainer: member streams -> ingest processes -> shared memory -> reservoir -> train loop."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from datamove.config import StudyConfig
from datamove.reservoir import make_buffer
from datamove.streaming.ingest import contact_signature, streams_present
from datamove.streaming.pool import IngestPool
from datamove.streaming.reader import Expectation
from datamove.training.distributed import Dist, init_from_env
from datamove.training.heldout import load_heldout
from datamove.training.records import Ledger, MemberRecord, MetricsLog
from datamove.training.step import (
    build_surrogate,
    evaluate,
    make_optimizer,
    pick_device,
    save_checkpoint,
    surrogate_args,
    train_step,
)


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


def clean_stream_dir(stream_dir: Path) -> None:
    """Remove contact files left by killed writers of an earlier run (they survive kill -9)."""
    stream_dir.mkdir(parents=True, exist_ok=True)
    for stale in stream_dir.glob("*.sst"):
        _say(f"removing stale contact file {stale}")
        stale.unlink(missing_ok=True)


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
    tc = cfg.trainer
    all_members = list(range(cfg.ensemble.n_members)) if members is None else list(members)
    members = dd.share(all_members)  # data-parallel: each rank reads its own share
    study_dir = cfg.study_dir
    torch.manual_seed(tc.seed)  # the same initial model on every rank
    device = pick_device(tc.device)
    if dd.active and device.type == "cuda":
        device = torch.device("cuda", dd.local_rank)
    ny, nx = cfg.solver.ny, cfg.solver.nx
    n_steps = cfg.solver.n_steps

    val_x, val_y = load_heldout(cfg)
    val_x, val_y = val_x.to(device), val_y.to(device)
    margs = surrogate_args(cfg)
    model = build_surrogate(margs).to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    buffer = make_buffer(
        cfg.reservoir.policy,
        capacity=cfg.reservoir.capacity,
        watermark=cfg.reservoir.watermark,
        x_dim=margs["in_dim"],
        y_shape=(ny, nx),
        seed=tc.seed + dd.rank,
        device=device,
        on_full=cfg.reservoir.on_full,
    )
    ledger = Ledger(members=members, steps_expected=n_steps)
    params: dict[int, torch.Tensor] = {}
    ckpt_path = _rank_path(cfg.checkpoint_path, dd)
    resumed = _resume(cfg, ckpt_path, model, optimizer, scheduler, buffer, ledger, params, dd)
    batch = resumed["step"] if resumed else 0
    metrics = MetricsLog(
        study_dir / "metrics.csv" if dd.main else os.devnull, rows=resumed["metrics_rows"] if resumed else None
    )
    sync = dd.average_gradients if dd.active else None
    if dd.active:
        _say(f"rank {dd.rank} of {dd.world}: members {members[:8]}{' ...' if len(members) > 8 else ''}")
    _say(
        f"study '{cfg.study}': {len(all_members)} members x {n_steps} steps of {ny}x{nx}, engine "
        f"{cfg.stream.engine}, model {tc.model} on {device}, {cfg.reservoir.policy} buffer "
        f"{cfg.reservoir.capacity} (watermark {cfg.reservoir.watermark}), {len(val_x)} validation samples"
    )

    if dd.main:
        clean_stream_dir(cfg.stream_dir)
    dd.barrier()  # no rank reads before the stale contact files are gone
    expect = Expectation(field_shape=(ny, nx), param_names=cfg.ensemble.names, solver=cfg.solver_name)
    unassigned = ledger.unfinished()  # members not yet handed to an ingest worker
    n_workers = max(1, min(tc.ingest_workers, len(unassigned)))
    pool = IngestPool(
        stream=cfg.stream,
        stream_dir=cfg.stream_dir,
        expect=expect,
        n_steps=n_steps,
        n_workers=n_workers,
        n_slots=tc.slots,  # >= ingest_workers >= n_workers (checked with the config)
        nice=tc.ingest_nice,
        say=_say,
    ).start()
    slots = pool.slots
    dd.barrier()  # every rank's ingest pool is up before the gate opens
    heartbeat = Heartbeat(cfg.heartbeat_path, tc.heartbeat_s)
    if dd.main:
        heartbeat.start()
    _say(f"ready: reading streams from {cfg.stream_dir} with {n_workers} ingest process(es)")

    waiting: deque[tuple[int, int, float, int]] = deque()  # steps handed over, not yet in the buffer
    dead_contact: dict[int, tuple[int, int]] = {}  # member -> contact file of its dead writer
    next_scan = 0.0
    t_start = time.perf_counter()
    last_activity = time.monotonic()
    last_ckpt = (time.monotonic(), batch)
    extra = 0
    streams_done = not unassigned  # this rank's members
    all_done = False  # every rank's members
    loss_sum = torch.zeros((), device=device)
    loss_n = 0
    last_log = (t_start, batch)
    fatal: list[str] = []
    completed_since_ckpt = False

    def handle(ev) -> None:
        nonlocal completed_since_ckpt
        kind = ev[0]
        if kind == "step":
            _, member, step, t, slot = ev
            if ledger.received(member, step):
                waiting.append((member, step, t, slot))
            else:
                pool.release(slot)  # a rerun resending a step already received: not used twice
        elif kind == "info":
            params[ev[1]] = torch.as_tensor(ev[2], dtype=torch.float32)
        elif kind == "open":
            ledger.opened(ev[1])
        elif kind == "end":
            _, member, status, reason, _steps, _worker = ev
            rec = ledger[member]
            if status == "complete" or rec.steps_received == rec.steps_expected:
                ledger.ended(member, "complete")
                completed_since_ckpt = True
            elif rec.attempts <= cfg.retries:
                ledger.ended(member, "retrying", reason)
                unassigned.append(member)
                sig = contact_signature(cfg.stream_dir, member)
                if sig is not None:
                    dead_contact[member] = sig
                _say(f"member {member} lost after {rec.steps_received} steps: {reason}; waiting for a rerun")
            else:
                ledger.ended(member, "lost", reason)
                _say(f"member {member} lost after {rec.steps_received} steps: {reason}")
        elif kind == "fatal":
            fatal.append(ev[2])
        elif kind == "done" and not streams_done:
            fatal.append(f"ingest worker {ev[1]} exited early")

    def dispatch() -> None:
        for member in streams_present(cfg.stream, cfg.stream_dir, unassigned):
            if not pool.idle:
                return
            if member in dead_contact:
                if contact_signature(cfg.stream_dir, member) == dead_contact[member]:
                    continue  # still the dead writer's file: wait for the rerun's
                del dead_contact[member]
            unassigned.remove(member)
            pool.assign(member)

    def checkpoint() -> None:
        nonlocal last_ckpt, completed_since_ckpt
        if dd.active and ckpt_path.exists():
            # Ranks write theirs moments apart: keep the previous one, so that after a crash in
            # between every rank still has a checkpoint of the same batch (see _resume).
            ckpt_path.replace(_prev_path(ckpt_path))
        save_checkpoint(
            ckpt_path,
            model=model,
            optimizer=optimizer,
            model_args=margs,
            config=cfg.raw,
            step=batch,
            extra={
                "scheduler": scheduler.state_dict(),
                "buffer": buffer.state_dict(),
                "ledger": ledger.state(),
                "params": {m: p.tolist() for m, p in params.items()},
                "metrics_rows": metrics.rows,
            },
        )
        ledger.write(_rank_path(study_dir / "ledger.csv", dd))  # a readable view of the same moment
        last_ckpt, completed_since_ckpt = (time.monotonic(), batch), False

    def log_row(final: bool = False) -> None:
        """Every rank calls it at the same batch (collectives inside); rank 0 writes the row."""
        nonlocal loss_sum, loss_n, last_log
        now = time.perf_counter()
        dt = max(now - last_log[0], 1e-9)
        rate = (batch - last_log[1]) / dt
        # One sync per log row, not per batch; sums over ranks under data-parallel training.
        loss_total, n_total, received, done = dd.all_sum(
            float(loss_sum), loss_n, ledger.steps_received, len(members) - len(ledger.unfinished())
        )
        val = evaluate(model, val_x, val_y) if dd.main else float("nan")
        stats = buffer.stats()  # this rank's reservoir (rank 0's in metrics.csv)
        row = {
            "batch": batch,
            "wall_s": round(now - t_start, 4),
            "train_loss": loss_total / max(n_total, 1),
            "val_loss": val,
            "samples_received": int(received),
            "occupancy": stats["occupancy"],
            "batches_per_s": rate,
            "samples_per_s": rate * tc.batch_size * dd.world,
            "lr": optimizer.param_groups[0]["lr"],
            "members_done": int(done),
            **stats,
        }
        metrics.log(row)
        loss_sum, loss_n, last_log = torch.zeros((), device=device), 0, (now, batch)
        if not dd.main:
            return  # one progress line per batch, from rank 0
        _say(
            f"batch {batch:6d} | {row['wall_s']:7.1f} s | train {row['train_loss']:.3e} | val {val:.3e} | "
            f"received {row['samples_received']}/{len(all_members) * n_steps} | members done "
            f"{row['members_done']}/{len(all_members)} | buffer {len(buffer)}/{cfg.reservoir.capacity} | "
            f"{rate:6.1f} batch/s" + (" | final" if final else "")
        )

    try:
        while True:
            idle = not waiting and not buffer.ready(final=streams_done)
            # A dead ingest worker (ADIOS2 has crashed readers: SIGSEGV) is replaced inside poll(),
            # and its member ends as lost with the reason.
            for ev in pool.poll(timeout=0.05 if idle else 0.0):
                handle(ev)
                last_activity = time.monotonic()
            if fatal:
                raise RuntimeError("ingest process failed:\n" + fatal[0])
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + 0.02  # a directory scan, not on every batch
                if unassigned:
                    dispatch()
            while waiting and buffer.can_put():
                member, step, t, slot = waiting.popleft()
                x = torch.cat([params[member], torch.tensor([t], dtype=torch.float32)])
                displaced = buffer.put(x, torch.from_numpy(slots[slot]), member=member, step=step)
                pool.release(slot)  # the buffer holds its own copy now
                if displaced is not None and displaced.seen == 0:
                    # Left without being trained on (a lossy drop, an eviction, a turn-away): counted.
                    ledger.untrained(displaced.member, displaced.reason)

            if not streams_done:
                busy = pool.busy
                if unassigned and not busy and time.monotonic() - last_activity > cfg.stream.member_timeout_s:
                    for m in unassigned:
                        rec = ledger[m]
                        if rec.status == "retrying":
                            reason = f"{rec.reason}; no rerun within {cfg.stream.member_timeout_s:g} s"
                        else:
                            reason = f"never connected ({cfg.stream.member_timeout_s:g} s without stream activity)"
                        ledger.ended(m, "lost", reason)
                        _say(f"member {m} lost: {reason}")
                    unassigned.clear()
                if not ledger.unfinished() and not waiting and not busy:
                    streams_done = True
                    pool.finish()
                    _say(
                        f"all members ended ({ledger.count('complete')} complete, {ledger.count('lost')} "
                        f"lost); training {tc.extra_batches} more batches"
                        + (f" (rank {dd.rank}; waiting for the other ranks)" if dd.active else "")
                    )

            # Under data-parallel training every rank takes the same decision (collective below).
            # final=streams_done (this rank's streams, known now): with the previous iteration's all_done a
            # consuming buffer below its watermark at the end was never drained.
            can_train = buffer.ready(final=streams_done) and not (streams_done and extra >= tc.extra_batches)
            all_done, can_train = dd.all_min(streams_done, can_train)
            if can_train:
                b = buffer.sample(tc.batch_size)
                loss = train_step(model, optimizer, b.x, b.y, sync_gradients=sync)
                scheduler.step()
                loss_sum += loss
                loss_n += 1
                batch += 1
                extra += all_done
                if batch % tc.log_every == 0:
                    log_row()
                if tc.checkpoint_every and batch - last_ckpt[1] >= tc.checkpoint_every:
                    checkpoint()
            elif all_done:
                break  # extra batches done, or a fifo buffer drained
            # A member's completion is worth a checkpoint soon: its job's marker now exists, and a
            # resumed trainer would otherwise wait for a member Snakemake will not rerun. (Not
            # under data-parallel training: ranks checkpoint together, at fixed batches.)
            if tc.checkpoint_every and completed_since_ckpt and not dd.active and time.monotonic() - last_ckpt[0] > 2.0:
                checkpoint()
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
            heartbeat.stop(finished=all_done)
        del slots
        pool.close()
        if dd.main:
            for stale in cfg.stream_dir.glob("*.sst"):  # killed writers leave their contact file
                stale.unlink(missing_ok=True)
        ledger.write(_rank_path(study_dir / "ledger.csv", dd))

    log_row(final=True)
    metrics.close()
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
        return TrainResult(batch, float("nan"), ledger.steps_received, 0, 0, time.perf_counter() - t_start)
    ledger.write(study_dir / "ledger.csv")
    try:
        cfg.stream_dir.rmdir()
    except OSError:
        pass
    save_checkpoint(
        study_dir / "model.pt",
        model=model,
        optimizer=optimizer,
        model_args=margs,
        config=cfg.raw,
        step=batch,
        extra={"ledger": ledger.state()},
    )
    result = TrainResult(
        batches=batch,
        val_loss=metrics.rows[-1]["val_loss"],
        samples_received=ledger.steps_received,
        members_complete=ledger.count("complete"),
        members_lost=ledger.count("lost"),
        wall_s=time.perf_counter() - t_start,
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


def _prev_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _resume(
    cfg: StudyConfig, path: Path, model, optimizer, scheduler, buffer, ledger: Ledger, params: dict, dd: Dist
) -> dict | None:
    """Restore the state of a crashed run from its checkpoint ``path``; the checkpoint, or None.

    Under data-parallel training every rank must restart from the same batch (replicas and
    collectives in step), and ranks write their checkpoints moments apart: each keeps its previous
    one too, and all take the newest batch that every rank has. Checkpoints are memory-mapped, not
    read whole: one holds the reservoir (capacity x field).
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
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    buffer.load_state_dict(ckpt["buffer"])
    ledger.load_state(ckpt["ledger"])
    params.update({m: torch.tensor(p, dtype=torch.float32) for m, p in ckpt["params"].items()})
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
