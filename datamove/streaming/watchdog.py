"""A watchdog process that ends this process with a clear message when a call blocks too long.

Why a process: the ADIOS2 Python bindings hold the GIL inside blocking calls (an SST writer's
``Open`` waits for its reader forever), so neither a Python thread nor a signal handler of this
process can run until the call returns. A forked child that waits on a pipe can.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time


def _watch(conn, parent_end, parent: int) -> None:
    # Close the parent's end inherited through fork: otherwise the pipe never reports EOF when the
    # parent dies, and this process would outlive it.
    parent_end.close()
    deadline, message = None, ""
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            if conn.poll(timeout):
                cmd = conn.recv()
                if cmd is None:
                    return
                deadline, message = cmd if cmd[0] is not None else (None, "")
                continue
        except (EOFError, OSError):
            return  # the parent has gone: nothing to guard
        sys.stderr.write(f"datamove watchdog: {message}\n")
        sys.stderr.flush()
        os.kill(parent, signal.SIGTERM)
        time.sleep(2.0)
        try:
            os.kill(parent, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


class Watchdog:
    """Arm before a call that may block forever, disarm after it.

    Create it before any ADIOS2 object exists (it forks).
    """

    def __init__(self) -> None:
        self._conn, child = mp.Pipe()
        self._proc = mp.get_context("fork").Process(
            target=_watch, args=(child, self._conn, os.getpid()), daemon=True, name="datamove-watchdog"
        )
        self._proc.start()
        child.close()

    def arm(self, seconds: float, message: str) -> None:
        self._conn.send((time.monotonic() + seconds, message))

    def disarm(self) -> None:
        self._conn.send((None, ""))

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(timeout=5)

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
