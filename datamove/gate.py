"""The readiness gate: solvers start streaming only once the trainer reads streams.

The trainer rewrites a heartbeat file (results/<study>/trainer.heartbeat.json) every
``trainer.heartbeat_s`` while it is ready, each beat numbered one more than the last (``seq``). A
reader judges the trainer alive by seeing that number advance, timed on its own monotonic clock. The
trainer's time stamps are never compared with the reader's clock: on a cluster the reader may run on
another node, whose clock can be seconds off. A file whose number stands still was left by a trainer
that died; one that says ``finished`` by a trainer that read every stream to its end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from datamove.config import StudyConfig

_ABSENT = ("absent",)  # the key of a heartbeat file that does not exist (yet, or any more)


def read_heartbeat(path: str | Path) -> dict | None:
    """The heartbeat's content (``pid``, ``seq``, ``time``, maybe ``finished``), or None when the file
    is absent or unreadable (caught mid-replace on a file system without atomic renames)."""
    try:
        beat = json.loads(Path(path).read_text())
        int(beat["pid"]), int(beat["seq"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return beat


def stale_after(cfg: StudyConfig) -> float:
    """Seconds without a new beat after which the trainer counts as gone: max(3 x heartbeat_s, 2 s)."""
    return max(3 * cfg.trainer.heartbeat_s, 2.0)


def lost_after(cfg: StudyConfig) -> float:
    """Seconds a solver waits for a new beat before it takes its trainer as gone: max(10 x heartbeat_s,
    10 s). Generous: a busy trainer on a loaded machine can beat late, and waiting only costs time
    when the trainer really is gone."""
    return max(10 * cfg.trainer.heartbeat_s, 10.0)


class HeartbeatWatch:
    """Follows a heartbeat file and says whether the trainer that writes it is alive.

    Alive: the file changed (a new ``seq``, or another trainer's ``pid``, or the file appeared) less
    than ``stale_s`` ago by this process's monotonic clock, and the latest beat is not the final one.
    The first look only sets the baseline: a single read cannot tell a live trainer from the file a
    dead one left behind, so a reader needs up to one heartbeat period to decide.
    """

    def __init__(self, path: str | Path, *, stale_s: float):
        self.path, self.stale_s = Path(path), stale_s
        self.beat: dict | None = None  # the latest beat read
        self._key = None  # what identifies that beat; None before the first look
        self._changed_at: float | None = None  # monotonic time the file was last seen to change

    def poll(self) -> dict | None:
        """Read the file once; the latest beat if the trainer is alive, else None."""
        now = time.monotonic()
        beat = read_heartbeat(self.path)
        if beat is None and self.path.exists():
            key = self._key  # unreadable for a moment: no news either way
        else:
            key = _ABSENT if beat is None else (beat["pid"], beat["seq"])
            self.beat = beat
        if self._key is not None and key != self._key:
            self._changed_at = now
        self._key = key
        if self.beat is None or self.beat.get("finished") or self._changed_at is None:
            return None
        return self.beat if now - self._changed_at < self.stale_s else None


def wait_for_trainer(cfg: StudyConfig, timeout: float) -> dict | None:
    """Wait up to ``timeout`` s for a live trainer; its latest beat, or None on timeout."""
    watch = HeartbeatWatch(cfg.heartbeat_path, stale_s=stale_after(cfg))
    deadline = time.monotonic() + timeout
    while True:
        beat = watch.poll()
        if beat is not None or time.monotonic() >= deadline:
            return beat
        time.sleep(min(0.2, cfg.trainer.heartbeat_s / 2))


class TrainerLostError(RuntimeError):
    """The trainer died while a member streamed to it: the member's steps may not have arrived."""


def confirm_trainer(cfg: StudyConfig, *, pid: int, member: int) -> None:
    """Check, once a member's stream has closed, that trainer ``pid`` outlived it.

    The proof is a beat of ``pid`` numbered after the one read here (written after the stream
    closed), or its final beat (written once every stream had ended). Why: an SST writer whose reader
    dies gets no error (ADIOS2 only prints "unexpected connection close"), so a member would look
    sent, its marker would be written and the workflow would not rerun it. Waits up to
    :func:`lost_after`.
    """
    deadline = time.monotonic() + lost_after(cfg)
    baseline = None  # the seq of pid's beat when the stream had closed
    while time.monotonic() < deadline:
        beat = read_heartbeat(cfg.heartbeat_path)
        if beat is not None:
            if beat["pid"] != pid:
                break  # another trainer: ours has gone
            if beat.get("finished") or (baseline is not None and beat["seq"] > baseline):
                return
            if baseline is None:
                baseline = beat["seq"]
        time.sleep(0.05)
    raise TrainerLostError(
        f"member {member}: the trainer (pid {pid}) stopped while the member streamed; its steps may "
        f"not have arrived, so the member is not marked done (a rerun sends it again)"
    )
