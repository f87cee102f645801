"""The offline trainer: epochs over member files stored with BP5, the baseline of online training.

It shares everything with the online trainer except where samples come from: the same model
(``build_surrogate``), train step, optimiser and schedule (``train_step``, ``make_optimizer``),
validation (``evaluate`` on the same held-out members) and metrics columns. Samples come from a
PyTorch ``DataLoader`` over :class:`MemberDataset`, shuffled anew every epoch.

Under data-parallel training (``trainer.world_size > 1``, ranks started by torchrun) each rank
reads its own shard of every epoch's permutation (``DistributedSampler``) and gradients are
averaged in the shared train step, as online; a batch is then one optimisation step over
``world_size x batch_size`` samples.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamove.config import StudyConfig
from datamove.simulate import params_of
from datamove.streaming.contract import StreamError, stream_path
from datamove.streaming.files import MemberFile
from datamove.training.distributed import init_from_env
from datamove.training.heldout import load_heldout
from datamove.training.records import Ledger, MetricsLog
from datamove.training.step import (
    build_surrogate,
    evaluate,
    make_optimizer,
    pick_device,
    save_checkpoint,
    surrogate_args,
    train_step,
)


class DatasetError(ValueError):
    """A stored dataset that cannot be trained on with this config; the message names the file."""


def _say(msg: str) -> None:
    print(f"[offline] {msg}", flush=True)


# --------------------------------------------------------------------------- the dataset


def check_member_file(mf: MemberFile, cfg: StudyConfig, *, sampling=None) -> None:
    """Refuse a member file (opened) that was not written for this config.

    Checks solver, parameter names, grid (field shape and the solver's grid constants), step count
    (fewer steps: a truncated file) and, when ``sampling`` is given, the member's parameters.
    """
    info, where = mf.info, mf.path
    problems = []
    if info.solver != cfg.solver_name:
        problems.append(f"solver '{info.solver}' (config: solver.name '{cfg.solver_name}')")
    if tuple(info.param_names) != tuple(cfg.ensemble.names):
        problems.append(f"param_names {list(info.param_names)} (config: {list(cfg.ensemble.names)})")
    expected_shape = (cfg.solver.ny, cfg.solver.nx)
    if tuple(mf.field_shape) != expected_shape:
        problems.append(
            f"grid ny x nx = {' x '.join(map(str, mf.field_shape))} (config: solver.ny x solver.nx = "
            f"{expected_shape[0]} x {expected_shape[1]})"
        )
    for key in ("nx", "ny", "lx", "ly", "dt", "diffusivity"):
        mine = getattr(cfg.solver, key)
        theirs = info.constants.get(key)
        if theirs is not None and not math.isclose(float(theirs), float(mine), rel_tol=1e-9):
            problems.append(f"{key} = {theirs} (config: solver.{key} = {mine})")
    if problems:
        raise DatasetError(f"{where} does not match the config: " + "; ".join(problems))
    if mf.n_steps != cfg.solver.n_steps:
        kind = "truncated" if mf.n_steps < cfg.solver.n_steps else "longer than expected"
        raise DatasetError(f"{where} is {kind}: {mf.n_steps} steps, the config expects solver.n_steps = {cfg.solver.n_steps}")
    if sampling is not None:
        expected = params_of(sampling, mf.member)
        if info.params.shape != expected.shape or not np.allclose(info.params, expected, rtol=1e-9, atol=0.0):
            raise DatasetError(
                f"{where} was written with params {info.params.tolist()}, but member {mf.member} of this "
                f"config has {expected.tolist()} (parameter ranges, sampler or ensemble.seed changed?): "
                "rerun its simulation"
            )
    try:
        mf.read_step(mf.n_steps - 1)  # a data file cut short fails here, not mid-training
    except StreamError as exc:
        raise DatasetError(f"{where} is truncated or corrupt: {exc.reason}") from exc


class MemberDataset(Dataset):
    """Samples of BP5 member files, indexed ``i = position * n_steps + step``.

    Each item is ``(x [in_dim], y [ny, nx], i)``; a batch fetched by a ``DataLoader`` (through
    ``__getitems__``) is ``(x [B, in_dim], y [B, ny, nx], i [B])``.

    ``reader="memory"`` reads each member file once, whole, in each process that serves samples
    (a DataLoader worker keeps its own copy); ``reader="file"`` reads every sample with an ADIOS2
    step selection from files kept open per process. Files are opened lazily in the process that
    reads them: ADIOS2 objects are never pickled or inherited.

    Use :meth:`from_config`, which refuses files that do not match the config.
    """

    def __init__(self, *, files: Sequence[MemberFile], x: torch.Tensor, n_steps: int, field_shape, reader: str):
        if reader not in ("memory", "file"):
            raise ValueError(f"reader must be 'memory' or 'file', got {reader!r}")
        self.files = list(files)
        self.x = x  # [n_members * n_steps, in_dim]
        self.n_steps = n_steps
        self.field_shape = tuple(field_shape)
        self.reader = reader
        # memory reader: every field in one tensor [len, ny, nx], filled member by member as they are
        # first touched, so that a batch is one gather (as from the online reservoir).
        self._fields: torch.Tensor | None = None
        self._loaded = torch.zeros(len(self.files), dtype=torch.bool)

    @classmethod
    def from_config(cls, cfg: StudyConfig, *, members: Sequence[int] | None = None) -> MemberDataset:
        """The training ensemble's files in ``cfg.stream_dir``, checked against the config.

        Raises DatasetError naming the file for a missing, truncated, corrupt or mismatched member.
        """
        members = range(cfg.ensemble.n_members) if members is None else members
        files, xs = [], []
        for member in members:
            mf = MemberFile(stream_path(cfg.stream_dir, member, "BP5"), member)
            if not mf.path.exists():
                raise DatasetError(
                    f"member file {mf.path} not found (member {member} of {cfg.ensemble.n_members}): run its "
                    f"simulation with stream.engine BP5 (`datamove simulate --config ... --member {member}`)"
                )
            try:
                with mf:
                    check_member_file(mf, cfg, sampling=cfg.ensemble)
                    t = torch.as_tensor(mf.times, dtype=torch.float32).reshape(-1, 1)
                    p = torch.as_tensor(mf.info.params, dtype=torch.float32).reshape(1, -1).expand(len(t), -1)
                    xs.append(torch.cat([p, t], dim=1))
            except StreamError as exc:  # unreadable, or not the stream contract
                raise DatasetError(f"member file {mf.path}: {exc.reason}") from exc
            files.append(mf)
        if not files:
            raise DatasetError("no member files to train on")
        return cls(
            files=files, x=torch.cat(xs), n_steps=cfg.solver.n_steps,
            field_shape=(cfg.solver.ny, cfg.solver.nx), reader=cfg.offline.reader,
        )

    def __len__(self) -> int:
        return len(self.files) * self.n_steps

    def _load(self, positions: torch.Tensor) -> None:
        """Memory reader: read the members at ``positions`` that this process has not read yet."""
        if self._fields is None:
            self._fields = torch.empty((len(self), *self.field_shape), dtype=torch.float32)
        for pos in positions[~self._loaded[positions]].unique().tolist():
            mf = self._file(pos)
            self._fields[pos * self.n_steps : (pos + 1) * self.n_steps] = torch.from_numpy(mf.read_all())
            mf.close()  # read once: the file is not needed any more
            self._loaded[pos] = True

    def _field(self, i: int) -> torch.Tensor:
        pos, step = divmod(i, self.n_steps)
        if self.reader == "memory":
            self._load(torch.tensor([pos]))
            return self._fields[i]
        return torch.from_numpy(self._file(pos).read_step(step))

    def _file(self, pos: int) -> MemberFile:
        mf = self.files[pos]
        if mf._reader is None and not (self.reader == "memory" and self._loaded[pos]):
            try:
                mf.open()
            except StreamError as exc:
                raise DatasetError(f"member file {mf.path}: {exc.reason}") from exc
        return mf

    def __getitem__(self, i: int):
        i = int(i)
        return self.x[i], self._field(i), i

    def __getitems__(self, indices: Sequence[int]):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if self.reader == "memory":
            self._load(idx // self.n_steps)
            return self.x[idx], self._fields[idx], idx
        y = torch.stack([self._field(int(i)) for i in indices])
        return self.x[idx], y, idx

    def close(self) -> None:
        for mf in self.files:
            mf.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fields"] = None  # each worker reads its own copy
        state["_loaded"] = torch.zeros(len(self.files), dtype=torch.bool)
        return state


def _as_batch(batch):
    """The dataset's ``__getitems__`` returns a whole batch already."""
    return batch


def make_loader(
    dataset: MemberDataset,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """Shuffled every epoch, whole batches only (as the online trainer draws).

    ``world > 1``: this ``rank``'s shard of each epoch's permutation (a ``DistributedSampler`` with
    ``seed``; call ``loader.sampler.set_epoch(epoch)`` before each epoch). Shards are disjoint and of
    equal size (up to ``world - 1`` samples of a permutation are left out), so every rank runs the
    same number of batches per epoch and no rank waits in a gradient all-reduce for another.
    """
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        order = {"sampler": sampler}
        shard = len(sampler)
    else:
        order = {"shuffle": True, "generator": torch.Generator().manual_seed(seed)}
        shard = len(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=shard >= batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,  # keeps each worker's open files and memory across epochs
        collate_fn=_as_batch,
        pin_memory=pin_memory,
        **order,
    )


# --------------------------------------------------------------------------- the trainer


@dataclass(frozen=True)
class OfflineResult:
    batches: int
    epochs: float
    val_loss: float
    samples: int
    wall_s: float
    stopped_by: str


def online_budget(metrics_csv: str | Path, kind: str) -> float:
    """What the online arm trained: its number of batches, or its seconds (last metrics row)."""
    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{metrics_csv} has no rows: the online arm did not train")
    if kind == "batches":
        return int(rows[-1]["batch"])
    if kind == "seconds":
        return float(rows[-1]["wall_s"])
    raise ValueError(f"budget kind must be 'batches' or 'seconds', got {kind!r}")


def write_seen_histogram(seen: torch.Tensor, path: str | Path) -> None:
    """seen.csv: how many samples were drawn k times, for every k (the reservoir figure)."""
    counts = torch.bincount(seen.to(torch.int64))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["times_seen", "samples"])
        for k, n in enumerate(counts.tolist()):
            if n:
                writer.writerow([k, n])


def train_offline(
    cfg: StudyConfig,
    *,
    budget_batches: int | None = None,
    budget_seconds: float | None = None,
) -> OfflineResult:
    """Train the surrogate for epochs over the stored members in ``cfg.stream_dir``.

    Without a budget, trains ``offline.epochs`` epochs (stopping earlier at ``offline.max_batches``
    or ``offline.max_seconds``). With ``budget_batches`` or ``budget_seconds`` (the online arm's, in
    a comparison study) it trains exactly that, however many epochs it takes.

    Writes ``model.pt``, ``metrics.csv``, ``ledger.csv`` and ``seen.csv`` to ``cfg.study_dir``.

    Under torchrun (``trainer.world_size > 1``) every rank calls this; each trains on its own shard
    of every epoch, all stop at the same batch (the budget is decided collectively), and rank 0
    alone writes the outputs. Other ranks return a result whose ``val_loss`` is NaN.
    """
    tc, oc = cfg.trainer, cfg.offline
    dd = init_from_env(tc.device)
    study_dir = cfg.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)  # the same initial model on every rank
    device = pick_device(tc.device)
    if dd.active and device.type == "cuda":
        device = torch.device("cuda", dd.local_rank)

    dataset = MemberDataset.from_config(cfg)
    val_x, val_y = load_heldout(cfg)
    val_x, val_y = val_x.to(device), val_y.to(device)
    margs = surrogate_args(cfg)
    model = build_surrogate(margs).to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    loader = make_loader(
        dataset, batch_size=tc.batch_size, workers=oc.loader_workers, seed=tc.seed,
        pin_memory=device.type == "cuda", rank=dd.rank, world=dd.world,
    )
    sync = dd.average_gradients if dd.active else None
    if budget_batches is not None or budget_seconds is not None:
        max_epochs, max_batches, max_seconds = math.inf, budget_batches, budget_seconds
    else:
        max_epochs, max_batches, max_seconds = oc.epochs, oc.max_batches, oc.max_seconds
    members = [mf.member for mf in dataset.files]
    ledger = Ledger(members=members, steps_expected=cfg.solver.n_steps)
    for member in members:
        ledger[member].steps_received = cfg.solver.n_steps
        ledger.ended(member, "complete")
    seen = torch.zeros(len(dataset), dtype=torch.int64)  # this rank's draws; summed over ranks when logged
    metrics = MetricsLog(study_dir / "metrics.csv" if dd.main else os.devnull)
    if dd.active:
        _say(
            f"rank {dd.rank} of {dd.world}: a shard of {len(loader.sampler)} of {len(dataset)} samples "
            f"({len(loader)} batches) per epoch"
        )
    _say(
        f"study '{cfg.study}'{f' ({cfg.arm} arm)' if cfg.arm else ''}: {len(members)} stored members x "
        f"{dataset.n_steps} steps of {dataset.field_shape[0]}x{dataset.field_shape[1]} ({len(dataset)} samples, "
        f"{oc.reader} reader, {oc.loader_workers} loader worker(s)), model {tc.model} on {device}; budget: "
        + ", ".join(
            f"{name} {value:g}" for name, value in
            (("epochs", max_epochs), ("batches", max_batches), ("seconds", max_seconds))
            if value is not None and value != math.inf
        )
    )

    batch, epoch = 0, 0
    loss_sum, loss_n = torch.zeros((), device=device), 0
    t_start = time.perf_counter()
    last_log = (t_start, 0)

    def log_row(final: bool = False) -> None:
        """Every rank calls it at the same batch (collectives inside); rank 0 writes the row."""
        nonlocal loss_sum, loss_n, last_log
        now = time.perf_counter()
        rate = (batch - last_log[1]) / max(now - last_log[0], 1e-9)
        # One sync per log row, not per batch; sums over ranks under data-parallel training.
        loss_total, n_total = dd.all_sum(float(loss_sum), loss_n)
        seen_f = dd.sum_tensor(seen).double()
        val = evaluate(model, val_x, val_y) if dd.main else float("nan")
        row = {
            "batch": batch,
            "wall_s": round(now - t_start, 4),
            "train_loss": loss_total / max(n_total, 1),
            "val_loss": val,
            "samples_received": len(dataset),  # the whole dataset is on disk from the start
            "occupancy": 1.0,
            "batches_per_s": rate,
            "samples_per_s": rate * tc.batch_size * dd.world,  # every rank's batch
            "lr": optimizer.param_groups[0]["lr"],
            "members_done": len(members),
            "n_evicted": 0,
            "seen_mean": float(seen_f.mean()),
            "seen_max": float(seen_f.max()),
        }
        metrics.log(row)
        loss_sum, loss_n, last_log = torch.zeros((), device=device), 0, (now, batch)
        if not dd.main:
            return  # one progress line per row, from rank 0
        _say(
            f"batch {batch:6d} | {row['wall_s']:7.1f} s | epoch {seen_f.mean().item():6.2f} | train "
            f"{row['train_loss']:.3e} | val {val:.3e} | {rate:6.1f} batch/s" + (" | final" if final else "")
        )

    stopped_by = "epochs"
    try:
        while epoch < max_epochs:
            if dd.active:
                loader.sampler.set_epoch(epoch)  # a new permutation, the same on every rank
            for x, y, idx in loader:
                loss = train_step(
                    model, optimizer, x.to(device, non_blocking=True), y.to(device, non_blocking=True),
                    sync_gradients=sync,
                )
                scheduler.step()
                seen.index_add_(0, idx, torch.ones_like(idx))
                loss_sum += loss
                loss_n += 1
                batch += 1
                if batch % tc.log_every == 0:
                    log_row()
                if max_batches is not None and batch >= max_batches:  # the same batch on every rank
                    stopped_by = "batches"
                    break
                if max_seconds is not None:
                    # Clocks and speeds differ between ranks: all stop as soon as one is out of time,
                    # or the others would wait forever in the next gradient all-reduce.
                    (in_time,) = dd.all_min(time.perf_counter() - t_start < max_seconds)
                    if not in_time:
                        stopped_by = "seconds"
                        break
            else:
                epoch += 1
                continue
            break
    finally:
        dataset.close()
        del loader  # ends the persistent workers
    if not metrics.rows or metrics.rows[-1]["batch"] != batch:
        log_row(final=True)
    metrics.close()
    seen = dd.sum_tensor(seen)  # every rank's draws
    epochs_done = float(seen.double().mean())
    if not dd.main:
        return OfflineResult(
            batches=batch, epochs=epochs_done, val_loss=float("nan"), samples=len(dataset),
            wall_s=time.perf_counter() - t_start, stopped_by=stopped_by,
        )
    ledger.write(study_dir / "ledger.csv")
    write_seen_histogram(seen, study_dir / "seen.csv")
    save_checkpoint(
        study_dir / "model.pt",
        model=model,
        optimizer=optimizer,
        model_args=margs,
        config=cfg.raw,
        step=batch,
        extra={
            "trainer": "offline",
            "epochs": epochs_done,
            "ledger": [vars(r) for r in ledger.records.values()],
            "scheduler": scheduler.state_dict(),
        },
    )
    result = OfflineResult(
        batches=batch,
        epochs=epochs_done,
        val_loss=metrics.rows[-1]["val_loss"],
        samples=len(dataset),
        wall_s=time.perf_counter() - t_start,
        stopped_by=stopped_by,
    )
    _say(
        f"done: {result.batches} batches ({result.epochs:.2f} epochs over {result.samples} samples, stopped by "
        f"{stopped_by}) in {result.wall_s:.1f} s, val loss {result.val_loss:.3e}; wrote {study_dir}/model.pt, "
        "metrics.csv, ledger.csv, seen.csv"
    )
    sys.stdout.flush()
    return result
