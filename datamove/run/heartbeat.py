"""The trainer's heartbeat: whether the trainer that reads the study's streams is alive.

The trainer rewrites a heartbeat file (results/<study>/trainer.heartbeat.json) every
``trainer.heartbeat_s`` while it is ready, each beat numbered one more than the last (``seq``). A
reader judges the trainer alive by seeing that number advance, timed on its own monotonic clock. The
trainer's time stamps are never compared with the reader's clock: on a cluster the reader may run on
another node, whose clock can be seconds off. A file whose number stands still was left by a trainer
that died; one that says ``finished`` by a trainer that read every stream to its end and wrote its
model; one that says ``stopped`` (with why) by a trainer that was interrupted or failed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from datamove.config import StudyConfig

_ABSENT = ("absent",)  # the key of a heartbeat file that does not exist (yet, or any more)


def ended(beat: dict) -> str | None:
    """Why the trainer that wrote ``beat`` reads no more streams, or None while it runs."""
    if beat.get("finished"):
        return "has finished (it read every stream to its end and wrote its model)"
    if beat.get("stopped"):
        return f"has stopped ({beat['stopped']})"
    return None


def read_heartbeat(path: str | Path) -> dict | None:
    """The heartbeat's content (``pid``, ``seq``, ``time``, maybe ``finished``), or None when the file
    is absent or unreadable (caught mid-replace on a file system without atomic renames)."""
    try:
        beat = json.loads(Path(path).read_text())
        int(beat["pid"]), int(beat["seq"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return beat


def clear_final_beat(cfg: StudyConfig) -> None:
    """Remove a last beat (``finished`` or ``stopped``) that an earlier run's trainer left, before a
    workflow starts its own: its gate then reads any last beat as its own trainer's (a trainer that
    could not start says so in one) and fails at once (:func:`datamove.run.gate.wait_for_trainer`).
    A live trainer's beats are no last beat, and the workflow refused to start beside one."""
    beat = read_heartbeat(cfg.heartbeat_path)
    if beat is not None and ended(beat):
        cfg.heartbeat_path.unlink(missing_ok=True)


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
        self._first: float | None = None  # monotonic time of the first look

    def quiet_for(self) -> float:
        """Seconds since the file last changed (or since the first look, if it never did)."""
        since = self._changed_at if self._changed_at is not None else self._first
        return 0.0 if since is None else time.monotonic() - since

    def poll(self) -> dict | None:
        """Read the file once; the latest beat if the trainer is alive, else None."""
        now = time.monotonic()
        if self._first is None:
            self._first = now
        beat = read_heartbeat(self.path)
        if beat is None and self.path.exists():
            key = self._key  # unreadable for a moment: no news either way
        else:
            key = _ABSENT if beat is None else (beat["pid"], beat["seq"])
            self.beat = beat
        if self._key is not None and key != self._key:
            self._changed_at = now
        self._key = key
        if self.beat is None or ended(self.beat) or self._changed_at is None:
            return None
        return self.beat if now - self._changed_at < self.stale_s else None


def trainer_gone(watch: HeartbeatWatch, pid: int, quiet_s: float) -> str | None:
    """Why trainer ``pid`` is gone, from what ``watch`` saw last; None while it may be alive."""
    beat = watch.beat
    if beat is None:
        return "is gone: its heartbeat file was removed" if watch.quiet_for() > quiet_s else None
    if beat["pid"] != pid:
        return None  # another trainer's file: for the caller to judge
    if ended(beat):
        return ended(beat)
    if watch.quiet_for() > quiet_s:
        return f"is not running: its heartbeat has not advanced for {watch.quiet_for():.0f} s"
    return None


class TrainerCheck:
    """A picklable check of one trainer (for :class:`datamove.streaming.watchdog.Watchdog`, in its
    own process): called now and then, it says why trainer ``pid`` is gone, or None.

    Gone: a final or ``stopped`` beat of ``pid``, a heartbeat that stands still or is absent for
    ``quiet_s``, or a beat of another pid (``pid`` was replaced: its streams are not read any more).

    ``streaming``: the check of a member whose stream is open (:meth:`streaming_check`). A trainer that
    ends closes its streams, and its writers fail by themselves; what keeps a writer waiting
    forever is a trainer that is alive but does not read (frozen, hung, stopped by SIGSTOP), whose
    connection stays open. So only a heartbeat that stands still (or is absent) for ``quiet_s``,
    final beat or not, or another pid's beat, counts; a final beat alone does not: the trainer may
    have finished the moment it read this stream's last step, while the writer closes.
    """

    def __init__(self, path: str | Path, *, pid: int, quiet_s: float, streaming: bool = False):
        self.path, self.pid, self.quiet_s, self.streaming = Path(path), pid, quiet_s, streaming
        self._watch: HeartbeatWatch | None = None

    def streaming_check(self) -> TrainerCheck:
        """The same trainer's check for a member that streams to it (see the class docstring)."""
        return TrainerCheck(self.path, pid=self.pid, quiet_s=self.quiet_s, streaming=True)

    def __call__(self) -> str | None:
        if self._watch is None:
            self._watch = HeartbeatWatch(self.path, stale_s=self.quiet_s)
        self._watch.poll()
        beat = self._watch.beat
        if beat is not None and beat["pid"] != self.pid:
            return f"the trainer (pid {self.pid}) is gone: pid {beat['pid']} trains the study now"
        if self.streaming:
            quiet = self._watch.quiet_for()
            if quiet <= self.quiet_s:
                return None
            if beat is None:
                return f"the trainer (pid {self.pid}) is gone: its heartbeat file was removed"
            return f"the trainer (pid {self.pid}) is not running: its heartbeat has not advanced for {quiet:.0f} s"
        gone = trainer_gone(self._watch, self.pid, self.quiet_s)
        return None if gone is None else f"the trainer (pid {self.pid}) {gone}"

    def __getstate__(self):
        return {"path": self.path, "pid": self.pid, "quiet_s": self.quiet_s, "streaming": self.streaming,
                "_watch": None}


class TrainerLostError(RuntimeError):
    """The trainer died while a member streamed to it: the member's steps may not have arrived."""
