"""Who may touch a study folder, and how an interrupt of the workflow reaches the trainer.

Light on purpose (no torch): the workflow's Snakemake process imports it when it starts.

- :class:`StudyLock`: one trainer per study. A second trainer refuses, naming the first; and a
  second *workflow* run of the study refuses too (:func:`refuse_if_trained`, from the Snakefile's
  ``onstart``), before its scheduler deletes outputs of jobs it is about to rerun: those outputs are
  the live run's metrics, model, ledger and member markers.
- :class:`StopSignals`: SIGINT and SIGTERM ask a trainer's loop to stop at its next batch
  (:class:`Interrupted`), so that it checkpoints and releases the study instead of dying anywhere.
- :func:`forward_interrupts`: Snakemake interrupted alone (``kill -INT``, or SIGTERM) waits for its
  running jobs and never signals them, so a trainer would wait for members that no longer come.
  The workflow's process passes the signal on as SIGTERM to the ``datamove`` commands below it; the
  trainer then checkpoints and stops (a rerun resumes it) and the members stop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any


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
    (watched for up to :func:`datamove.gate.stale_after` seconds)."""
    from datamove.gate import HeartbeatWatch, stale_after

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


def datamove_descendants(root: int | None = None) -> list[int]:
    """Pids of the ``datamove`` commands (``python -m datamove ...`` or the ``datamove`` script)
    started, directly or not, by process ``root`` (default: this one)."""
    import psutil

    found = []
    try:
        children = psutil.Process(root or os.getpid()).children(recursive=True)
    except psutil.Error:
        return found
    for child in children:
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        words = [Path(a).name for a in argv[:3]]
        if "datamove" in words or any(a == "-m" and b == "datamove" for a, b in zip(argv, argv[1:])):
            found.append(child.pid)
    return found


def forward_interrupts(signals=(signal.SIGINT, signal.SIGTERM)) -> None:
    """From now on, SIGINT or SIGTERM of this process is first passed on as SIGTERM to its
    ``datamove`` descendants, then handled as before (Snakemake: KeyboardInterrupt, or its graceful
    exit). Only in the main thread (elsewhere signal handlers cannot be set: nothing is done)."""
    for signum in signals:
        previous = signal.getsignal(signum)

        def handler(sig, frame, previous=previous):
            for pid in datamove_descendants():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if callable(previous):
                previous(sig, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
                os.kill(os.getpid(), sig)

        try:
            signal.signal(signum, handler)
        except ValueError:
            return  # not the main thread


class Interrupted(Exception):
    """Training stopped on SIGINT or SIGTERM before its end (see :class:`StopSignals`)."""

    def __init__(self, signum: int, batch: int):
        self.signum, self.batch = signum, batch
        super().__init__(f"interrupted by {signal.Signals(signum).name} at batch {batch}")


class StopSignals:
    """While active, SIGINT and SIGTERM ask the training loop to stop at its next iteration
    (:class:`Interrupted`), so that a trainer can checkpoint and release what it holds instead of
    dying wherever the signal found it. A second signal interrupts at once (KeyboardInterrupt).

    Only in the main thread (signal handlers can be set nowhere else): elsewhere it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum  # no print here: one in the main thread may be under way (reentrant write)

    def __enter__(self) -> StopSignals:
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:
            pass  # not the main thread
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
