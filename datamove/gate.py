"""The readiness gate: solvers start streaming only once the trainer reads streams.

The trainer rewrites a heartbeat file (results/<study>/trainer.heartbeat.json) every
``trainer.heartbeat_s`` while it is ready, each beat numbered one more than the last (``seq``). A
reader judges the trainer alive by seeing that number advance, timed on its own monotonic clock. The
trainer's time stamps are never compared with the reader's clock: on a cluster the reader may run on
another node, whose clock can be seconds off. A file whose number stands still was left by a trainer
that died; one that says ``finished`` by a trainer that read every stream to its end and wrote its
model; one that says ``stopped`` (with why) by a trainer that was interrupted or failed.

Receipts (``members/member-K.received.json``, :func:`write_receipt`): the trainer writes one once a
member's steps are all received and held by a checkpoint. A member's solver writes its marker
only after its receipt (:func:`await_receipt`), so the workflow never skips a member whose steps a
crashed trainer did not keep; and a rerun of a member that has its receipt sends nothing.
"""

from __future__ import annotations

import json
import os
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


def wait_for_trainer(cfg: StudyConfig, timeout: float, *, expected_pid: int | None = None) -> dict | None:
    """Wait up to ``timeout`` s for a live trainer; its latest beat, or None on timeout.

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
        if expected_pid is not None:
            gone = _gone(watch, expected_pid, stale_after(cfg))
            if gone:
                successor = _successor(cfg, expected_pid)
                if successor is None:
                    raise TrainerLostError(f"the trainer (pid {expected_pid}) {gone}")
                expected_pid = successor  # a rerun's trainer, still starting: wait for it instead
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(0.2, cfg.trainer.heartbeat_s / 2))


def _gone(watch: HeartbeatWatch, pid: int, quiet_s: float) -> str | None:
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


def _successor(cfg: StudyConfig, pid: int, grace_s: float = 5.0) -> int | None:
    """The pid of a live trainer that took the study over from ``pid`` (a rerun's, which holds the
    study's lock before its first beat), waiting up to ``grace_s`` for one; None if none comes.

    Why: after ``kill -9`` the workflow's gate still names the dead trainer, and a rerun's members
    may start before the new trainer's first beat."""
    from datamove.guard import StudyLock

    deadline = time.monotonic() + grace_s
    while True:
        holder = StudyLock(cfg.lock_path).holder()
        if holder is not None and int(holder.get("pid", pid)) != pid:
            return int(holder["pid"])
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


class TrainerCheck:
    """A picklable check of one trainer (for :class:`datamove.streaming.watchdog.Watchdog`, in its
    own process): called now and then, it says why trainer ``pid`` is gone, or None.

    Gone: a final or ``stopped`` beat of ``pid``, a heartbeat that stands still or is absent for
    ``quiet_s``, or a beat of another pid (``pid`` was replaced: its streams are not read any more).
    """

    def __init__(self, path: str | Path, *, pid: int, quiet_s: float):
        self.path, self.pid, self.quiet_s = Path(path), pid, quiet_s
        self._watch: HeartbeatWatch | None = None

    def __call__(self) -> str | None:
        if self._watch is None:
            self._watch = HeartbeatWatch(self.path, stale_s=self.quiet_s)
        self._watch.poll()
        beat = self._watch.beat
        if beat is not None and beat["pid"] != self.pid:
            return f"the trainer (pid {self.pid}) is gone: pid {beat['pid']} trains the study now"
        gone = _gone(self._watch, self.pid, self.quiet_s)
        return None if gone is None else f"the trainer (pid {self.pid}) {gone}"

    def __getstate__(self):
        return {"path": self.path, "pid": self.pid, "quiet_s": self.quiet_s, "_watch": None}


class TrainerLostError(RuntimeError):
    """The trainer died while a member streamed to it: the member's steps may not have arrived."""


class MemberRejected(RuntimeError):
    """The trainer ended a member's stream without all its steps (a contract violation, NaN, a
    silent stream): the member failed. ``final``: the trainer takes no rerun of it (its ledger
    says lost), so the workflow need not retry."""

    def __init__(self, message: str, *, final: bool):
        super().__init__(message)
        self.final = final


def rejection(member: int, receipt: dict | None) -> MemberRejected | None:
    """The trainer's refusal of any further stream of ``member`` (its ledger says lost), or None."""
    if receipt is None or receipt.get("status") != "lost":
        return None
    return MemberRejected(
        f"member {member}: the trainer ended it for good ({receipt.get('steps')} steps received: "
        f"{receipt.get('reason')}) and reads no more of its streams", final=True,
    )


# -- receipts ---------------------------------------------------------------------------------------

def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON so that a reader never sees half a file (a temporary, then a rename;
    no temporary is left when the write fails, on a full disk say)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1))
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def write_receipt(cfg: StudyConfig, member: int, *, steps: int, checkpointed: bool, status: str = "complete",
                  reason: str = "", contact: tuple[int, int] | None = None) -> None:
    """``status`` complete: the trainer holds every step of ``member`` (``checkpointed``: in a
    checkpoint). Otherwise (``lost``, ``retrying``): the stream whose contact file had signature
    ``contact`` ended without all its steps, for ``reason``; its solver, if alive, stops waiting."""
    write_json(cfg.member_receipt(member), {
        "member": member, "status": status, "steps": steps, "trainer_pid": os.getpid(),
        "checkpointed": checkpointed, "time": time.time(),
        **({"reason": reason, "contact": list(contact) if contact else None} if status != "complete" else {}),
    })


def held(receipt: dict | None) -> bool:
    """Whether a receipt says the trainer holds the member."""
    return receipt is not None and receipt.get("status", "complete") == "complete"


def read_receipt(cfg: StudyConfig, member: int) -> dict | None:
    """The member's receipt, or None (absent, or caught mid-write)."""
    try:
        return json.loads(cfg.member_receipt(member).read_text())
    except (FileNotFoundError, ValueError):
        return None


def await_receipt(cfg: StudyConfig, *, pid: int, member: int, contact: tuple[int, int] | None = None) -> dict:
    """Wait, once a member's stream has closed, until trainer ``pid`` holds its steps (its receipt).

    Why: an SST writer whose reader dies gets no error (ADIOS2 only prints "unexpected connection
    close"), so a member would look sent; and a trainer that dies before its next checkpoint loses
    what it received since. The member's marker, after which the workflow never reruns it, waits
    for the receipt; the wait ends with :class:`TrainerLostError` as soon as the trainer is gone
    (no beat for :func:`lost_after`, a ``stopped`` beat, or a final beat without this receipt), or
    with :class:`MemberRejected` when the trainer says this stream (its contact file's signature
    ``contact``) ended without all its steps.
    """
    check = TrainerCheck(cfg.heartbeat_path, pid=pid, quiet_s=lost_after(cfg))
    # A live trainer answers within a checkpoint's time; one that keeps silent longer than it
    # waits for a silent stream has not read this one (a bound, so that no solver waits forever).
    deadline = time.monotonic() + cfg.stream.member_timeout_s
    while True:
        receipt = read_receipt(cfg, member)
        if held(receipt):
            return receipt
        if time.monotonic() > deadline:
            raise TrainerLostError(
                f"member {member}: the trainer (pid {pid}) gave no receipt within {cfg.stream.member_timeout_s:g} s "
                f"(stream.member_timeout_s) after the stream closed"
                + (f"; its last word on the member: {receipt.get('status')}, {receipt.get('reason')}" if receipt else "")
            )
        if receipt is not None and contact is not None and receipt.get("contact") == list(contact):
            raise MemberRejected(
                f"member {member}: the trainer did not get all its steps ({receipt.get('steps')} received, "
                f"{receipt.get('status')}): {receipt.get('reason')}", final=receipt.get("status") == "lost",
            )
        gone = check()
        if gone is not None and not held(read_receipt(cfg, member)):
            raise TrainerLostError(
                f"member {member}: {gone} before it held the member's steps (no receipt "
                f"{cfg.member_receipt(member)}); the member is not marked done, so a rerun sends it again"
            )
        time.sleep(0.05)
