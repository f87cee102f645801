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


CHECK_S = 0.2  # between two calls of an armed check


def _watch(conn, parent_end, parent: int) -> None:
    # Close the parent's end inherited through fork: otherwise the pipe never reports EOF when the
    # parent dies, and this process would outlive it.
    parent_end.close()
    deadline, message, check = None, "", None
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if check is not None:
            timeout = CHECK_S if timeout is None else min(timeout, CHECK_S)
        try:
            if conn.poll(timeout):
                cmd = conn.recv()
                if cmd is None:
                    return
                deadline, message, check = cmd  # (None, "", None): disarmed
                continue
        except (EOFError, OSError):
            return  # the parent has gone: nothing to guard
        if check is not None and (deadline is None or time.monotonic() < deadline):
            why = check()
            if why is None:
                continue
            message = why
        sys.stderr.write(f"datamove watchdog: {message}\n")
        sys.stderr.flush()
        os.kill(parent, signal.SIGTERM)
        time.sleep(2.0)
        try:
            os.kill(parent, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


class Explained:
    """A check for :meth:`Watchdog.arm` whose reason goes into a sentence (``template`` with
    ``{why}``): the watchdog's message names what was guarded, not only what failed."""

    def __init__(self, check, template: str):
        self.check, self.template = check, template

    def __call__(self) -> str | None:
        why = self.check()
        return None if why is None else self.template.format(why=why)


class Watchdog:
    """Arm before a call (or a phase of calls) that may block forever, disarm after it.

    Create it before any ADIOS2 object exists (it forks).
    """

    def __init__(self) -> None:
        self._conn, child = mp.Pipe()
        self._proc = mp.get_context("fork").Process(
            target=_watch, args=(child, self._conn, os.getpid()), daemon=True, name="datamove-watchdog"
        )
        self._proc.start()
        child.close()

    def arm(self, seconds: float | None, message: str = "", check=None) -> None:
        """End this process with ``message`` unless disarmed within ``seconds`` (None: no deadline);
        and sooner, with the message it returns, as soon as ``check()`` (picklable, called every
        CHECK_S in the watchdog's process) returns one.

        One message through a pipe per call: arm once around a long phase (a whole stream), never
        once per step."""
        if seconds is None and check is None:
            raise ValueError("a watchdog armed with no deadline needs a check")
        self._conn.send((None if seconds is None else time.monotonic() + seconds, message, check))

    def disarm(self) -> None:
        self._conn.send((None, "", None))

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
