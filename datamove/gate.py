"""The readiness gate: solvers start streaming only once the trainer reads streams.

The trainer refreshes a heartbeat file (results/<study>/trainer.heartbeat.json) while it is ready; a fresh
one means a live trainer. A stale one is left by a trainer that crashed.
"""

from __future__ import annotations

import json
import time

from datamove.config import StudyConfig


def trainer_heartbeat(cfg: StudyConfig) -> dict | None:
    """The heartbeat's content if it is fresh, else None."""
    fresh = max(3 * cfg.trainer.heartbeat_s, 2.0)
    try:
        beat = json.loads(cfg.heartbeat_path.read_text())
        if time.time() - float(beat["time"]) < fresh and not beat.get("finished"):
            return beat
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        pass  # not written yet, or caught mid-replace
    return None


def wait_for_trainer(cfg: StudyConfig, timeout: float) -> dict | None:
    """Wait up to ``timeout`` s for a fresh heartbeat; its content, or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        beat = trainer_heartbeat(cfg)
        if beat is not None or time.monotonic() >= deadline:
            return beat
        time.sleep(0.2)


class TrainerLostError(RuntimeError):
    """The trainer died while a member streamed to it: the member's steps may not have arrived."""


def confirm_trainer(cfg: StudyConfig, *, pid: int, since: float, member: int) -> None:
    """Check that trainer ``pid`` was still alive at ``since`` (time.time()): a heartbeat as new.

    Why: an SST writer whose reader dies gets no error (ADIOS2 only prints "unexpected connection
    close"), so a member would look sent, its marker would be written and the workflow would not
    rerun it. Waits up to 10 s (or ten heartbeat periods): a busy trainer on a loaded machine can
    beat late, and waiting only costs time when the trainer really is gone.
    """
    deadline = time.monotonic() + max(10 * cfg.trainer.heartbeat_s, 10.0)
    while time.monotonic() < deadline:
        try:
            beat = json.loads(cfg.heartbeat_path.read_text())
            if beat["pid"] == pid and float(beat["time"]) >= since:
                return
            if beat["pid"] != pid:
                break  # another trainer: ours has gone
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.05)
    raise TrainerLostError(
        f"member {member}: the trainer (pid {pid}) stopped while the member streamed; its steps may "
        f"not have arrived, so the member is not marked done (a rerun sends it again)"
    )
