"""What a study records: the per-member ledger and the metrics table."""

from __future__ import annotations

import csv
import numbers
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from datamove.config import ConfigError


@dataclass
class MemberRecord:
    """One row of ledger.csv: every step a solver sent is trained on or accounted for here.

    ``steps_received`` counts distinct steps (1..n in order); a rerun of a lost member sends its
    steps again, and those already received are counted in ``steps_duplicate`` and not used twice.
    A lost member's missing steps are ``steps_expected - steps_received``, with the ``reason``.

    Received steps that no batch ever used, by why: ``steps_dropped`` (discarded by the lossy
    ``reservoir.on_full: drop_oldest``), ``steps_evicted`` (replaced by a replacing policy before
    any batch drew them: evicted by ``reservoir``/``balanced``, or turned away by ``balanced``),
    ``steps_unused`` (still in the buffer, never drawn, when training ended). So a member's steps
    trained on at least once are ``steps_received - steps_dropped - steps_evicted - steps_unused
    - steps_unpaired`` (`steps_trained`).

    Autoregressive samples (``trainer.sample``) are windows of L steps s apart of one attempt of a
    member (:class:`datamove.problems.samples.SampleSpec`), and a window counts at its last step:
    the steps that end no window, the member's first (L - 1) s (and, streamed, any whose earlier
    steps are missing from its attempt), are counted in ``steps_unpaired`` (they are earlier steps
    of the windows that follow, never the last).

    Under ``parameters.sampler: adaptive`` the row also says how the member's parameters were drawn
    (``draw``, ``proposal_version``, ``draw_seed``) and its last loss statistic (``loss``,
    ``loss_batch``).
    """

    member: int
    steps_expected: int
    steps_received: int = 0
    status: str = "pending"  # pending -> streaming -> complete | lost; retrying after a loss
    reason: str = ""
    attempts: int = 0  # streams opened for this member (reruns included)
    steps_duplicate: int = 0
    steps_dropped: int = 0  # received, then discarded untrained by reservoir.on_full=drop_oldest
    steps_evicted: int = 0  # received, then replaced untrained by reservoir/balanced
    steps_unused: int = 0  # received, never drawn: still in the buffer when training ended
    steps_unpaired: int = 0  # autoregressive: received, the last step of no window (a member's first steps)
    # parameters.sampler adaptive (datamove.sampling.proposals): how the member's parameters were drawn ...
    draw: str = ""  # base | proposal | fallback ("": another sampler, or no draw recorded)
    proposal_version: int = 0  # the proposal drawn from (0: none)
    draw_seed: int = 0  # the seed of the draw
    # ... and the trainer's last loss statistic of the member (mean normalised MSE of its reservoir
    # samples, at batch loss_batch; nan: never measured).
    loss: float = float("nan")
    loss_batch: int = 0

    @property
    def steps_trained(self) -> int:
        """Received steps that at least one batch used."""
        return self.steps_received - self.steps_dropped - self.steps_evicted - self.steps_unused - self.steps_unpaired


UNFINISHED = ("pending", "streaming", "retrying")


class Ledger:
    """Per-member accounting of the ensemble."""

    def __init__(self, *, members, steps_expected: int):
        self.records = {m: MemberRecord(member=m, steps_expected=steps_expected) for m in members}

    def __getitem__(self, member: int) -> MemberRecord:
        return self.records[member]

    def opened(self, member: int) -> None:
        rec = self.records[member]
        rec.status = "streaming"
        rec.attempts += 1

    def received(self, member: int, step: int) -> bool:
        """Count step ``step`` (1-based) of ``member``; False if it was already received."""
        rec = self.records[member]
        if step <= rec.steps_received:
            rec.steps_duplicate += 1
            return False
        rec.steps_received += 1
        return True

    def untrained(self, member: int, reason: str) -> None:
        """Count a received step of ``member`` that left the buffer before any batch used it, by the
        buffer's `Displaced.reason`: ``"dropped"``, or ``"evicted"``/``"rejected"`` (steps_evicted)."""
        rec = self.records[member]
        if reason == "dropped":
            rec.steps_dropped += 1
        elif reason in ("evicted", "rejected"):
            rec.steps_evicted += 1
        else:
            raise ValueError(f"unknown reason {reason!r} for an untrained step of member {member}")

    def unpaired(self, member: int) -> None:
        """Count a received step of ``member`` that ends no autoregressive window (an earlier step only)."""
        self.records[member].steps_unpaired += 1

    def unused(self, members) -> None:
        """Count the steps still in the buffer, never drawn, at the end of training: one entry of
        ``members`` (an iterable of member ids) per step."""
        for member in members:
            self.records[int(member)].steps_unused += 1

    def ended(self, member: int, status: str, reason: str = "") -> None:
        rec = self.records[member]
        rec.status, rec.reason = status, reason

    def unfinished(self) -> list[int]:
        return [m for m, r in self.records.items() if r.status in UNFINISHED]

    def state(self) -> list[dict]:
        return [asdict(r) for r in self.records.values()]

    def load_state(self, state: list[dict]) -> None:
        for row in state:
            if row["member"] in self.records:
                self.records[row["member"]] = MemberRecord(**row)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records.values())

    @property
    def steps_received(self) -> int:
        return sum(r.steps_received for r in self.records.values())

    @property
    def steps_trained(self) -> int:
        return sum(r.steps_trained for r in self.records.values())

    def write(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with tmp.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(MemberRecord)])
                writer.writeheader()
                for member in sorted(self.records):
                    writer.writerow(asdict(self.records[member]))
            tmp.replace(path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written ledger behind
            raise


METRIC_COLUMNS = (
    "batch",
    "wall_s",
    "train_loss",
    "val_loss",
    "samples_received",
    "occupancy",
    "batches_per_s",
    "samples_per_s",
    "lr",
    "members_done",
    "n_evicted",
    "seen_mean",
    "seen_max",
    # Buffer statistics (Buffer.stats(), docs/reservoir.md): samples put, drawn (summed over
    # batches), dropped by a lossy on_full, evicted before ever being drawn; distinct members and
    # mean time-step index of the held samples (how far the buffer is from the streaming order).
    "n_put",
    "n_sampled",
    "n_dropped",
    "evicted_unseen",
    "members_held",
    "step_mean",
    # trainer.val_rollout_every (autoregressive): relative L2 of the held-out members' rollouts from
    # their first steps, at their last step and over every predicted step; empty in rows without one.
    "val_rollout_rel_l2",
    "val_rollout_rel_l2_traj",
)


class MetricsLog:
    """metrics.csv, one row every ``log_every`` batches, flushed as it goes (readable mid-study).

    ``path`` None keeps the rows in memory only (the other ranks of a data-parallel run).
    ``tensorboard``: a folder where every row also goes, as TensorBoard scalars (see
    :class:`TensorBoardLog`).
    """

    def __init__(self, path: str | Path | None, *, rows: list[dict] | None = None,
                 tensorboard: str | Path | None = None):
        """``rows``: those of a resumed run (from its checkpoint), written first."""
        self.path = None if path is None else Path(path)
        self.rows: list[dict] = list(rows or [])
        # Before metrics.csv is opened (truncated): a missing package stops the trainer without
        # touching the study's records.
        self._tb = None if tensorboard is None else TensorBoardLog(
            tensorboard, resume_after=int(self.rows[-1]["batch"]) if self.rows else None
        )
        self._fh = None if path is None else self.path.open("w", newline="")
        self._writer = None if path is None else csv.DictWriter(self._fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        self._write_all()

    def _write_all(self) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
            self._writer.writeheader()
            self._writer.writerows(self.rows)
            self._fh.flush()

    def log(self, row: dict) -> None:
        self.rows.append(row)
        if self._fh is not None:
            self._writer.writerow(row)
            self._fh.flush()
        if self._tb is not None:
            self._tb.log(row)

    def replace_last(self, row: dict) -> None:
        """Rewrite the last row (the final one, when no batch came after it): the file is written
        again whole, once, at the end of training."""
        old, self.rows[-1] = self.rows[-1], row
        self._write_all()
        if self._tb is not None:
            # Only what changed, at the same batch: TensorBoard shows the later value.
            self._tb.log({"batch": row["batch"], **{k: v for k, v in row.items() if old.get(k) != v}})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._tb is not None:
            self._tb.close()


class TensorBoardLog:
    """The metrics rows as TensorBoard scalars: one tag per numeric column of a row (the names of
    metrics.csv: ``train_loss``, ``val_loss``, ``samples_per_s``, ...), at step ``batch``.

    Written with ``torch.utils.tensorboard`` (the optional extra ``datamove[tensorboard]``) and
    flushed at every row, like metrics.csv, so that a running study can be watched.

    Args:
        log_dir: the event files' folder (results/<study>/tensorboard/).
        resume_after: the last batch logged before a crash, for a run resumed from a checkpoint:
            the events an earlier process wrote after it are hidden (TensorBoard's ``purge_step``),
            as those batches are trained again. None: a fresh run, whose folder is emptied of
            earlier runs' event files (metrics.csv starts afresh too).
    """

    def __init__(self, log_dir: str | Path, *, resume_after: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                f"key 'trainer.tensorboard': true needs TensorBoard, which does not import here ({exc}): "
                "pip install 'datamove[tensorboard]' (or set trainer.tensorboard: false)"
            ) from None
        log_dir = Path(log_dir)
        if resume_after is None and log_dir.is_dir():
            for old in log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(
            log_dir=str(log_dir), purge_step=None if resume_after is None else resume_after + 1
        )

    def log(self, row: dict[str, Any]) -> None:
        step = int(row["batch"])
        for key, value in row.items():
            if key != "batch" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(key, float(value), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
