"""How an interrupt reaches the trainer: of the trainer itself, or of the workflow above it.

Light on purpose (no torch): the workflow's Snakemake process imports it when it starts.

- :class:`StopSignals`: SIGINT and SIGTERM ask a trainer's loop to stop at its next batch
  (:class:`Interrupted`), so that it checkpoints and releases the study instead of dying anywhere.
- :func:`forward_interrupts`: Snakemake interrupted alone (``kill -INT``, or SIGTERM) waits for its
  running jobs and never signals them, so a trainer would wait for members that no longer come.
  The workflow's process passes the signal on as SIGTERM to the ``datamove`` commands below it; the
  trainer then checkpoints and stops (a rerun resumes it) and the members stop.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


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
