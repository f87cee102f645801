"""Who may touch a study folder: one trainer per study, and one workflow run.

Light on purpose (no torch): the workflow's Snakemake process imports it when it starts.

- :class:`StudyLock`: one trainer per study. A second trainer refuses, naming the first; and a
  second *workflow* run of the study refuses too (:func:`refuse_if_trained`, from the Snakefile's
  ``onstart``), before its scheduler deletes outputs of jobs it is about to rerun: those outputs are
  the live run's metrics, model, ledger and member markers.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from datamove.run.heartbeat import HeartbeatWatch, stale_after


class StudyBusyError(RuntimeError):
    """Another trainer holds this study."""


class StudyLock:
    """One trainer per study: a second one refuses, naming the first (pid, host, start time).

    A lock whose process is gone (a crash, kill -9) is taken over.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def holder(self) -> dict | None:
        """The live process that holds the lock (pid, host, started), or None."""
        try:
            other = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(other, dict) or other.get("pid") == os.getpid() or not lock_alive(other):
            return None
        return other

    def acquire(self) -> None:
        other = self.holder()
        if other is not None:
            raise StudyBusyError(
                f"study {self.path.parent.name} is already being trained by pid {other['pid']} on "
                f"{other['host']} (started {other['started']}; lock file {self.path})"
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.path.write_text(json.dumps(me))

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def lock_alive(lock: dict) -> bool:
    """Whether the process a lock names may still run: on this host, whether it exists; a lock
    taken on another host cannot be checked from here and counts as alive."""
    if lock.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(lock["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def refuse_if_trained(cfg) -> None:
    """Raise StudyBusyError when a live trainer holds ``cfg``'s study: another workflow run uses
    the study folder. A lock taken on another host counts as live while its heartbeat advances
    (watched for up to :func:`datamove.run.heartbeat.stale_after` seconds)."""
    holder = StudyLock(cfg.lock_path).holder()
    if holder is None:
        return
    if holder.get("host") != socket.gethostname():
        watch = HeartbeatWatch(cfg.heartbeat_path, stale_s=stale_after(cfg))
        deadline = time.monotonic() + stale_after(cfg) + 1.0
        while watch.poll() is None:
            if time.monotonic() > deadline:
                return  # a lock left by a trainer that died on another node
            time.sleep(0.2)
    raise StudyBusyError(
        f"study '{cfg.study}' ({cfg.study_dir}) is in use: its trainer runs as pid {holder['pid']} on "
        f"{holder['host']} (started {holder['started']}; lock file {cfg.lock_path}). A second run would "
        "delete that run's outputs before rerunning them: wait for it to end, stop it, or give this "
        "run another `study:` name"
    )
