"""The readiness gate: solvers start streaming only once the trainer reads streams (its heartbeat,
:mod:`datamove.run.heartbeat`)."""

from __future__ import annotations

import time

from datamove.config import StudyConfig
from datamove.run.heartbeat import HeartbeatWatch, TrainerLostError, ended, stale_after, trainer_gone
from datamove.run.lock import StudyLock


def wait_for_trainer(cfg: StudyConfig, timeout: float, *, expected_pid: int | None = None,
                     this_run: bool = False) -> dict | None:
    """Wait up to ``timeout`` s for a live trainer; its latest beat, or None on timeout.

    ``this_run``: the workflow's gate, opened after the workflow cleared an earlier run's last beat
    (:func:`datamove.run.heartbeat.clear_final_beat`), so a final beat is this run's trainer's. A
    ``stopped`` one (it could not start, or stopped before the gate looked) raises
    :class:`TrainerLostError` with its reason at once, not after ``timeout``; a ``finished`` one is
    returned (its members learn from their receipts whether it holds their steps).

    ``expected_pid``: the trainer that opened the workflow's gate. Its end (a final or ``stopped``
    beat, a heartbeat that stands still for :func:`stale_after`, a file removed) raises
    :class:`TrainerLostError` at once instead of waiting out ``timeout``: a workflow's members must
    fail within seconds of their trainer. A beat of another pid is a new trainer: waited for.
    """
    watch = HeartbeatWatch(cfg.heartbeat_path, stale_s=stale_after(cfg))
    deadline = time.monotonic() + timeout
    while True:
        beat = watch.poll()
        if beat is not None:
            return beat
        if this_run and watch.beat is not None and watch.beat.get("stopped"):
            raise TrainerLostError(f"the trainer (pid {watch.beat['pid']}) {ended(watch.beat)}")
        if this_run and watch.beat is not None and watch.beat.get("finished"):
            return watch.beat
        if expected_pid is not None:
            gone = trainer_gone(watch, expected_pid, stale_after(cfg))
            if gone:
                successor = _successor(cfg, expected_pid)
                if successor is None:
                    raise TrainerLostError(f"the trainer (pid {expected_pid}) {gone}")
                expected_pid = successor  # a rerun's trainer, still starting: wait for it instead
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(0.2, cfg.trainer.heartbeat_s / 2))


def _successor(cfg: StudyConfig, pid: int, grace_s: float = 5.0) -> int | None:
    """The pid of a live trainer that took the study over from ``pid`` (a rerun's, which holds the
    study's lock before its first beat), waiting up to ``grace_s`` for one; None if none comes.

    Why: after ``kill -9`` the workflow's gate still names the dead trainer, and a rerun's members
    may start before the new trainer's first beat."""
    deadline = time.monotonic() + grace_s
    while True:
        holder = StudyLock(cfg.lock_path).holder()
        if holder is not None and int(holder.get("pid", pid)) != pid:
            return int(holder["pid"])
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)
