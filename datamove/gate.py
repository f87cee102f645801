"""The readiness gate: solvers start streaming only once the trainer reads streams.

The trainer refreshes a heartbeat file (results/<study>/trainer.heartbeat) while it is ready; a fresh
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
        if time.time() - float(beat["time"]) < fresh:
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
