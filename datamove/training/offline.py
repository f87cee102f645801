"""The offline trainer: epochs over member files stored with BP5, the baseline of online training.

It shares everything with the online trainer except where samples come from: the training loop
(:mod:`datamove.training.loop`: model, train step, optimiser and schedule, validation on the same
held-out members, metrics columns). Samples come from a PyTorch ``DataLoader`` over
:class:`datamove.data.dataset.MemberDataset`, shuffled anew every epoch.

Under data-parallel training (``trainer.world_size > 1``, ranks started by torchrun) each rank
reads its own shard of every epoch's permutation (``DistributedSampler``) and gradients are
averaged in the shared train step, as online; a batch is then one optimisation step over
``world_size x batch_size`` samples.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from datamove.config import StudyConfig
from datamove.data.dataset import MemberDataset, make_loader
from datamove.training.distributed import Dist, init_from_env
from datamove.training.loop import Interrupted, Source, StopSignals, Training
from datamove.training.records import Ledger


def _say(msg: str) -> None:
    print(f"[offline] {msg}", flush=True)


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


class OfflineSource(Source):
    """Batches of a DataLoader over the stored members, epoch after epoch, within a budget.

    Finished (and so the loop ends: a stored dataset never waits) when the epochs are done or the
    budget in batches or seconds is spent; a seconds budget is decided collectively, so that every
    rank stops at the same batch.
    """

    waits = False

    def __init__(self, *, run: Training, dataset: MemberDataset, loader, dd: Dist,
                 max_epochs: float, max_batches: int | None, max_seconds: float | None):
        self.run, self.dataset, self.loader, self.dd = run, dataset, loader, dd
        self.max_epochs, self.max_batches, self.max_seconds = max_epochs, max_batches, max_seconds
        self.epoch = 0
        self.stopped_by = "epochs"
        self.seen = torch.zeros(len(dataset), dtype=torch.int64)  # this rank's draws; summed over ranks when logged
        self._it = None
        self._next = None
        self._t0 = time.perf_counter()

    def _fetch(self):
        """The next batch of the epochs, starting new ones as needed; None once they are done."""
        while self.epoch < self.max_epochs:
            if self._it is None:
                if self.dd.active:
                    self.loader.sampler.set_epoch(self.epoch)  # a new permutation, the same on every rank
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
        return None

    def poll(self) -> tuple[bool, bool]:
        if self.max_batches is not None and self.run.batch >= self.max_batches:  # the same batch on every rank
            self.stopped_by = "batches"
            return True, False
        if self.max_seconds is not None:
            # Clocks and speeds differ between ranks: all stop as soon as one is out of time, or
            # the others would wait forever in the next gradient all-reduce.
            (in_time,) = self.dd.all_min(time.perf_counter() - self._t0 < self.max_seconds)
            if not in_time:
                self.stopped_by = "seconds"
                return True, False
        if self._next is None:
            self._next = self._fetch()
        return self._next is None, self._next is not None

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, idx = self._next
        self._next = None
        self.seen.index_add_(0, idx, torch.ones_like(idx))
        device = self.run.device
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def metrics(self) -> dict[str, Any]:
        seen = self.dd.sum_tensor(self.seen).double()
        self._seen_mean = float(seen.mean())
        return {
            "samples_received": len(self.dataset),  # the whole dataset is on disk from the start
            "occupancy": 1.0,
            "members_done": len(self.dataset.files),
            "n_evicted": 0,
            "seen_mean": self._seen_mean,
            "seen_max": float(seen.max()),
        }

    def progress(self, row) -> str:
        return f"epoch {row['seen_mean']:6.2f}"

    def close(self) -> None:
        self._it = self._next = None
        self.dataset.close()
        self.loader = None  # ends the persistent workers


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
    dataset = MemberDataset.from_config(cfg)
    run = Training(cfg=cfg, dd=dd, label="offline")
    loader = make_loader(
        dataset, batch_size=tc.batch_size, workers=oc.loader_workers, seed=tc.seed,
        pin_memory=run.device.type == "cuda", rank=dd.rank, world=dd.world,
    )
    if budget_batches is not None or budget_seconds is not None:
        max_epochs, max_batches, max_seconds = math.inf, budget_batches, budget_seconds
    else:
        max_epochs, max_batches, max_seconds = oc.epochs, oc.max_batches, oc.max_seconds
    members = [mf.member for mf in dataset.files]
    ledger = Ledger(members=members, steps_expected=cfg.problem.n_steps)
    for member in members:
        ledger[member].steps_received = cfg.problem.n_steps
        ledger[member].steps_unpaired = dataset.spec.span  # autoregressive: the first steps end no window
        ledger.ended(member, "complete")
    run.open_metrics(study_dir / "metrics.csv")
    if dd.active:
        _say(
            f"rank {dd.rank} of {dd.world}: a shard of {len(loader.sampler)} of {len(dataset)} samples "
            f"({len(loader)} batches) per epoch"
        )
    _say(
        f"study '{cfg.study}'{f' ({cfg.arm} arm)' if cfg.arm else ''}: {len(members)} stored members of "
        f"{cfg.problem.describe()} ({len(dataset)} samples, {oc.reader} reader, {oc.loader_workers} loader "
        f"worker(s)), model {tc.model} on {run.device}; budget: "
        + ", ".join(
            f"{name} {value:g}" for name, value in
            (("epochs", max_epochs), ("batches", max_batches), ("seconds", max_seconds))
            if value is not None and value != math.inf
        )
    )
    source = OfflineSource(run=run, dataset=dataset, loader=loader, dd=dd, max_epochs=max_epochs,
                           max_batches=max_batches, max_seconds=max_seconds)
    del loader
    try:
        with StopSignals() as stop:
            run.run(source, stop=stop)
    except Interrupted as exc:
        # No model.pt: an interrupted baseline is not a finished one (nothing to resume: it reruns).
        _say(f"{exc}: stopped without writing model.pt")
        raise
    finally:
        source.close()
    run.finish(source)
    seen = dd.sum_tensor(source.seen)  # every rank's draws
    epochs_done = float(seen.double().mean())
    if not dd.main:
        return OfflineResult(
            batches=run.batch, epochs=epochs_done, val_loss=float("nan"), samples=len(dataset),
            wall_s=run.wall_s, stopped_by=source.stopped_by,
        )
    ledger.write(study_dir / "ledger.csv")
    write_seen_histogram(seen, study_dir / "seen.csv")
    run.save(study_dir / "model.pt", extra={
        "trainer": "offline",
        "epochs": epochs_done,
        "ledger": ledger.state(),
    })
    result = OfflineResult(
        batches=run.batch,
        epochs=epochs_done,
        val_loss=run.val_loss,
        samples=len(dataset),
        wall_s=run.wall_s,
        stopped_by=source.stopped_by,
    )
    _say(
        f"done: {result.batches} batches ({result.epochs:.2f} epochs over {result.samples} samples, stopped by "
        f"{source.stopped_by}) in {result.wall_s:.1f} s, val loss {result.val_loss:.3e}; wrote {study_dir}/model.pt, "
        "metrics.csv, ledger.csv, seen.csv"
    )
    sys.stdout.flush()
    return result
