"""One training loop for every trainer: set-up, train step, metrics rows, checkpoints, final save.

Online and offline training differ only in their :class:`Source` of batches (the reservoir fed by
the member feed, or epochs over stored files), so a comparison of the two is fair by construction:
same model, optimiser, schedule, train step, validation and metrics columns.

Under data-parallel training every rank runs this loop in step with the others: the decision to
train or stop is collective, and every rank calls :meth:`Training.log_row` at the same batches.
"""

from __future__ import annotations

import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import torch

from datamove.config import StudyConfig
from datamove.problems.samples import SampleSpec
from datamove.run.signals import Interrupted, StopSignals  # noqa: F401  (the trainers' too)
from datamove.training.distributed import Dist
from datamove.training.heldout import heldout_members, load_heldout, Trajectories
from datamove.training.records import MetricsLog
from datamove.training.rollout import rollout_rel_l2
from datamove.training.step import (
    build_surrogate,
    delta_scale,
    evaluate,
    MixedPrecision,
    make_optimizer,
    pick_device,
    save_checkpoint,
    surrogate_args,
    train_step,
    unroll_now,
)


class Source(ABC):
    """Where a trainer's batches come from."""

    #: True when the source can have no batch now but more later (streams still arriving): the
    #: loop then ends only once every rank is done. False for stored data: no batch is the end.
    waits: ClassVar[bool]

    @abstractmethod
    def poll(self) -> tuple[bool, bool]:
        """``(finished, can_train)`` of this rank now: whether this source is done, and whether it can
        give a batch. May take in new data (and wait briefly when it has nothing to do)."""

    @abstractmethod
    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch, on the training device: x [B, n_inputs], y [B, n_fields, ny, nx]."""

    def meanwhile(self) -> Callable[[], None] | None:
        """Work to run on a second thread while the batch just drawn trains (started after
        :meth:`batch`, joined before :meth:`trained`), or None. It must not touch the model, the
        optimiser or that batch: the online source takes in the steps that arrived."""
        return None

    def trained(self, all_done: bool) -> None:
        """Called after each train step; ``all_done``: every rank's source had finished."""

    @abstractmethod
    def metrics(self) -> dict[str, Any]:
        """This source's columns of a metrics row (every rank calls it at the same batch: may sum over ranks)."""

    def progress(self, row: Mapping[str, Any]) -> str:
        """This source's part of a progress line."""
        return ""


class Training:
    """The model, its optimiser and schedule, the validation set, the metrics and the batch count.

    Args:
        cfg: the study.
        dd: this process's place in a data-parallel run.
        label: prefix of progress lines ("train", "offline").
    """

    def __init__(self, *, cfg: StudyConfig, dd: Dist, label: str):
        self.cfg, self.dd, self.label = cfg, dd, label
        tc = cfg.trainer
        torch.manual_seed(tc.seed)  # the same initial model on every rank
        device = pick_device(tc.device)
        if dd.active and device.type == "cuda":
            device = torch.device("cuda", dd.local_rank)
        self.device = device
        members = heldout_members(cfg)  # read once: the validation samples and the trajectories
        val_x, val_y = load_heldout(cfg, members)
        spec = SampleSpec.of(cfg, unroll=1)  # validation: the first application of each window
        steps = val_y.reshape(-1, spec.n_fields, *val_y.shape[2:])  # a window's steps, each a sample's fields
        norm = cfg.problem.normalisation(times=val_x[:, -1].numpy(), fields=steps.numpy())
        # Delta targets: their scale from the held-out pairs too, as the normalisation.
        delta = delta_scale(val_y, spec, norm) if tc.target == "delta" else None
        self.val_x, self.val_y = val_x.to(device), val_y.to(device)
        # trainer.val_rollout_every: the members whole, for rollouts (rank 0 validates alone)
        self.val_traj = Trajectories.of(members, device) if tc.val_rollout_every and dd.main else None
        #: (batch, rollout relative L2 at the horizon, over the trajectory) of the last rollout validation
        self.last_rollout: tuple[int, float, float] | None = None
        self.margs = surrogate_args(cfg, norm, delta=delta)
        self.model = build_surrogate(self.margs).to(device)
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg)
        self.precision = MixedPrecision(tc.precision, device)
        self.sync = dd.average_gradients if dd.active else None
        # trainer.input_noise draws from its own generator, seeded from trainer.seed (and the rank):
        # the runs without noise draw nothing and stay as they were.
        self.noise_gen = None
        if tc.input_noise > 0:
            self.noise_gen = torch.Generator(device=device).manual_seed(tc.seed * 1_000_003 + 101 + dd.rank)
        self.batch = 0
        self.metrics: MetricsLog | None = None
        self._loss_sum = torch.zeros((), device=device)
        self._loss_n = 0
        self._t0 = time.perf_counter()  # reset when training starts (run)
        self._wall0 = 0.0  # wall_s already spent by the run this one resumes
        self._last = (self._t0, 0)
        self._beside: ThreadPoolExecutor | None = None  # the thread of source.meanwhile(), made on first use

    def unroll_now(self) -> int | None:
        """The applications the next batch trains (trainer.unroll, grown over trainer.unroll_warmup
        batches); None: direct samples."""
        tc = self.cfg.trainer
        if tc.sample != "autoregressive":
            return None
        return unroll_now(self.batch, unroll=tc.unroll, warmup=tc.unroll_warmup)

    def say(self, msg: str) -> None:
        print(f"[{self.label}] {msg}", flush=True)

    @property
    def wall_s(self) -> float:
        """Training time of the study: this process's, plus that of a run it resumed."""
        return self._wall0 + time.perf_counter() - self._t0

    def open_metrics(self, path: Path, rows: list[dict] | None = None) -> None:
        """metrics.csv (rank 0; other ranks log nowhere), and TensorBoard's event files with
        ``trainer.tensorboard``; ``rows``: those of a resumed run."""
        tensorboard = self.cfg.tensorboard_dir if self.cfg.trainer.tensorboard and self.dd.main else None
        self.metrics = MetricsLog(path if self.dd.main else None, rows=rows, tensorboard=tensorboard)
        if rows:
            self._wall0 = float(rows[-1]["wall_s"])

    def resume(self, ckpt: Mapping[str, Any]) -> None:
        """Model, optimiser, schedule and batch count of a checkpoint."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.noise_gen is not None and "noise_rng" in ckpt:
            self.noise_gen.set_state(ckpt["noise_rng"].cpu())
        self.batch = int(ckpt["step"])

    def run(self, source: Source, *, checkpoint: Callable[[], None] | None = None,
            idle: Callable[[], None] | None = None, stop: StopSignals | None = None) -> None:
        """Train from ``source`` until it is done; ``checkpoint()`` every ``trainer.checkpoint_every``
        batches, ``idle()`` after every iteration (a source's own checkpoint triggers).

        Raises:
            Interrupted: ``stop`` caught a signal (on any rank: the decision is collective, so that
                every rank of a data-parallel run leaves at the same batch).
        """
        last_ckpt = self.batch
        self._t0 = time.perf_counter()  # training time starts here, after the set-up
        self._last = (self._t0, self.batch)
        try:
            self._run(source, checkpoint=checkpoint, idle=idle, stop=stop, last_ckpt=last_ckpt)
        finally:
            if self._beside is not None:
                self._beside.shutdown(wait=True)
                self._beside = None

    def _run(self, source: Source, *, checkpoint, idle, stop, last_ckpt: int) -> None:
        tc = self.cfg.trainer
        while True:
            finished, can_train = source.poll()
            go_on = stop is None or stop.signum is None
            all_done, can_train, go_on = self.dd.all_min(finished, can_train, go_on)
            if not go_on:
                raise Interrupted(stop.signum if stop is not None and stop.signum else signal.SIGTERM, self.batch)
            if can_train:
                x, y = source.batch()
                work = source.meanwhile()
                if work is not None and self._beside is None:
                    self._beside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake")
                # The train step's torch ops release the GIL, so the work runs beside them on a
                # free core; joined before anything else reads what it changes (ledger, buffer).
                job = self._beside.submit(work) if work is not None else None
                try:
                    self._loss_sum += train_step(self.model, self.optimizer, x, y, sync_gradients=self.sync,
                                                 precision=self.precision, input_noise=tc.input_noise,
                                                 generator=self.noise_gen, pushforward=tc.pushforward,
                                                 unroll=self.unroll_now())
                finally:
                    if job is not None:
                        job.result()  # its exception, if any, is the loop's
                self._loss_n += 1
                self.scheduler.step()
                self.batch += 1
                source.trained(all_done)
                if self.batch % tc.log_every == 0:
                    self.log_row(source)
                if checkpoint is not None and tc.checkpoint_every and self.batch - last_ckpt >= tc.checkpoint_every:
                    checkpoint()
                    last_ckpt = self.batch
            elif all_done or not source.waits:
                return
            if idle is not None:
                idle()

    def log_row(self, source: Source, *, final: bool = False) -> None:
        """A metrics row and a progress line; every rank calls it at the same batch (collectives inside)."""
        now = time.perf_counter()
        rate = (self.batch - self._last[1]) / max(now - self._last[0], 1e-9)
        # One sync per row, not per batch; sums over ranks under data-parallel training.
        loss_total, n_total = self.dd.all_sum(float(self._loss_sum), self._loss_n)
        extra = source.metrics()
        val = evaluate(self.model, self.val_x, self.val_y) if self.dd.main else float("nan")
        every = self.cfg.trainer.val_rollout_every
        rolled = self.rollout_columns() if every and (final or self.batch % every == 0) else {}
        row = {
            "batch": self.batch,
            "wall_s": round(self.wall_s, 4),
            "train_loss": loss_total / max(n_total, 1),
            "val_loss": val,
            "batches_per_s": rate,
            "samples_per_s": rate * self.cfg.trainer.batch_size * self.dd.world,  # every rank's batch
            "lr": self.optimizer.param_groups[0]["lr"],
            **rolled,
            **extra,
        }
        self.metrics.log(row)
        self._loss_sum, self._loss_n, self._last = torch.zeros((), device=self.device), 0, (now, self.batch)
        if self.dd.main:
            part = source.progress(row)
            self.say(
                f"batch {self.batch:6d} | {row['wall_s']:7.1f} s | train {row['train_loss']:.3e} | val {val:.3e} | "
                + (f"rollout {rolled['val_rollout_rel_l2']:.3e} | " if rolled else "")
                + (f"{part} | " if part else "") + f"{rate:6.1f} batch/s" + (" | final" if final else "")
            )

    def rollout_columns(self) -> dict[str, float]:
        """Rollout validation (``trainer.val_rollout_every``): every held-out member rolled out from
        its first s true steps to its last, all members in one batch, without gradients; the
        relative L2 at the last step and over every predicted step. Rank 0 only (the others: {})."""
        if self.val_traj is None:
            return {}
        training = self.model.training
        self.model.eval()
        try:
            horizon, whole = rollout_rel_l2(self.model, self.val_traj.x, self.val_traj.fields)
        finally:
            self.model.train(training)
        self.last_rollout = (self.batch, horizon, whole)
        return {"val_rollout_rel_l2": horizon, "val_rollout_rel_l2_traj": whole}

    def finish(self, source: Source) -> None:
        """The final metrics row. When the last batch logged one already, that row is brought up to
        date instead (samples may have arrived after it) and keeps its loss and rates: no second row
        of the same batch with nothing trained in it."""
        rows = self.metrics.rows
        if rows and rows[-1]["batch"] == self.batch:
            extra = source.metrics()  # every rank calls it: it may sum over ranks
            if self.cfg.trainer.val_rollout_every and "val_rollout_rel_l2" not in rows[-1]:
                extra.update(self.rollout_columns())  # the final model's rollout, always
            self.metrics.replace_last({**rows[-1], **extra})
        else:
            self.log_row(source, final=True)
        self.metrics.close()

    def save(self, path: Path, *, extra: Mapping[str, Any] | None = None) -> None:
        """A self-describing checkpoint of the model (see :func:`datamove.training.step.save_checkpoint`)."""
        save_checkpoint(
            path, model=self.model, optimizer=self.optimizer, model_args=self.margs, config=self.cfg.raw,
            step=self.batch, extra={
                "scheduler": self.scheduler.state_dict(),
                **({"noise_rng": self.noise_gen.get_state()} if self.noise_gen is not None else {}),
                **(extra or {}),
            },
        )

    @property
    def val_loss(self) -> float:
        return self.metrics.rows[-1]["val_loss"] if self.metrics and self.metrics.rows else float("nan")
