"""The producer side of the stream contract (used by ``datamove simulate``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import adios2
import numpy as np

from datamove.config import StreamConfig
from datamove.streaming.adios import disable_nagle, make_io
from datamove.streaming.contract import TIME, StreamError, remove_contact_files, stream_name, stream_path
from datamove.streaming.ingest import contact_signature
from datamove.streaming.watchdog import Explained, Watchdog


class MemberWriter:
    """Writes one member's stream: attributes first, then one ADIOS2 step per time step.

    Args:
        stream: engine settings.
        stream_dir: the study's stream folder (created if missing: an SST writer whose folder is
            missing crashes later with exit 139).
        member: member id.
        attributes: contract attributes (member, params, param_names, solver) and solver constants.
        watchdog: guards ``Open``, which for SST waits for the trainer without any timeout, and,
            given ``trainer``, the whole stream after it (every step and ``close``).
        receipt: the member's receipt file (:func:`datamove.run.receipts.write_receipt`): a
            trainer that dropped this very stream (its reader stopped after
            ``stream.member_timeout_s``: the solver was frozen, in ``Open`` or between steps) says
            so there, and the watchdog ends the solver at once, instead of leaving it in ``Open``
            until ``stream.open_timeout_s`` or blocked in a step for good.
        trainer: a check of the trainer (:class:`datamove.run.heartbeat.TrainerCheck`, returns why it is gone
            or None) that the watchdog calls while ``Open`` waits: a member fails within seconds
            of its trainer, not after ``stream.open_timeout_s``. Once open, the watchdog keeps
            calling its streaming form (``trainer.streaming_check()``) until ``close`` returns: a
            trainer that stops reading without ending (frozen, hung) blocks a lossless SST
            writer in ``end_step`` or ``close`` forever, holding the GIL, so the watchdog ends
            the solver (SIGTERM, then SIGKILL) once the trainer's heartbeat has stood still for
            ``trainer.quiet_s``; the job fails and the workflow reruns it. Armed once per
            stream: nothing per step.
    """

    def __init__(
        self,
        *,
        stream: StreamConfig,
        stream_dir: str | Path,
        member: int,
        attributes: Mapping[str, Any],
        watchdog: Watchdog | None = None,
        trainer=None,
        receipt: str | Path | None = None,
    ):
        self.stream = stream
        self.trainer = trainer
        self.receipt = None if receipt is None else Path(receipt)
        self.stream_dir = Path(stream_dir)
        self.member = member
        self.attributes = dict(attributes)
        self.watchdog = watchdog
        self._stream: adios2.Stream | None = None
        self.steps_written = 0

    def open(self) -> MemberWriter:
        self.stream_dir.mkdir(parents=True, exist_ok=True)
        engine = self.stream.engine.upper()
        if engine == "SST":
            remove_contact_files(self.stream_dir, [self.member], label="simulate")  # a killed retry's
        _, io = make_io(self.stream)
        path = stream_path(self.stream_dir, self.member, engine)
        if self.watchdog is not None:
            self.watchdog.arm(
                self.stream.open_timeout_s,
                f"member {self.member}: no trainer connected to stream {path} within "
                f"{self.stream.open_timeout_s:g} s (stream.open_timeout_s). Is the trainer running "
                f"and reading {self.stream_dir}?",
                check=None if self.trainer is None else Explained(
                    _Either(self.trainer, StreamDropped(self.receipt, self.stream_dir, self.member)),
                    f"member {self.member}: {{why}} while the member waited to open stream {path}"),
            )
        try:
            self._stream = adios2.Stream(io, str(path), "w")
        except Exception as exc:  # ADIOS2 raises plain RuntimeError/ValueError
            raise StreamError(self.member, f"cannot open writer at {path}: {exc}") from exc
        finally:
            if self.watchdog is not None:
                self.watchdog.disarm()
        for name, value in self.attributes.items():
            self._stream.write_attribute(name, _attribute_value(value))
        if engine == "SST":
            disable_nagle()  # the reader's connection exists now (Open waited for it)
        if self.watchdog is not None and self.trainer is not None:
            self.watchdog.arm(None, check=Explained(
                _Either(self.trainer.streaming_check(), StreamDropped(self.receipt, self.stream_dir, self.member)),
                f"member {self.member}: {{why}} while the member streamed to it ({path}); the solver is "
                f"stopped (a streaming member fails once its trainer's heartbeat stands still for "
                f"{self.trainer.quiet_s:g} s: max(10 x trainer.heartbeat_s, 10 s))",
            ))
        return self

    def write_step(self, *, time: float, fields: Mapping[str, np.ndarray]) -> None:
        """Write one step: ``time`` and each field by name (float32 [ny, nx]); published at end_step."""
        if self._stream is None:
            raise StreamError(self.member, "write_step before open")
        try:
            self._stream.begin_step()
            self._stream.write(TIME, np.float64(time))
            for name, array in fields.items():
                self._stream.write(name, np.ascontiguousarray(array, dtype=np.float32))
            self._stream.end_step()
        except Exception as exc:
            raise StreamError(self.member, f"step {self.steps_written + 1} failed: {exc}") from exc
        self.steps_written += 1
        if self.steps_written == 1 and self.stream.engine.upper() == "SST":
            disable_nagle()  # and any connection the first step's data opened

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()  # SST: may wait for the reader (steps still queued)
            except Exception as exc:
                raise StreamError(self.member, f"close failed: {exc}") from exc
            finally:
                self._stream = None
                if self.watchdog is not None and self.trainer is not None:
                    self.watchdog.disarm()  # armed since open

    def __enter__(self) -> MemberWriter:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemberWriter({stream_name(self.member)}, engine={self.stream.engine})"


class StreamDropped:
    """A picklable check (for the watchdog, in its own process) of whether the trainer reads this
    stream no more: the member's receipt (``receipt``) says the member is lost for good, or that
    the stream of the contact file there now (its signature, ``contact``) ended without all its
    steps. Why, or None. (Receipts of an earlier trainer run are gone: a trainer that starts or
    resumes removes those of the members it does not hold.)"""

    def __init__(self, receipt: Path | None, stream_dir: Path, member: int):
        self.receipt, self.stream_dir, self.member = receipt, stream_dir, member

    def __call__(self) -> str | None:
        if self.receipt is None:
            return None
        try:
            word = json.loads(self.receipt.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(word, dict):
            return None
        if word.get("status") == "lost":  # for good: no stream of the member is read any more
            return f"the trainer ended the member for good ({word.get('reason')})"
        if word.get("status") != "retrying" or not word.get("contact"):
            return None
        if list(contact_signature(self.stream_dir, self.member) or ()) != word["contact"]:
            return None  # an earlier stream's word
        return f"the trainer dropped this stream ({word.get('reason')})"


class _Either:
    """The watchdog's check while a stream is open or opening: the trainer gone, or this stream
    dropped by it (the trainer reads no more of it; an SST writer would wait for it forever)."""

    def __init__(self, trainer, dropped: StreamDropped):
        self.trainer, self.dropped = trainer, dropped

    def __call__(self) -> str | None:
        return self.trainer() or self.dropped()


def _attribute_value(value: Any):
    """ADIOS2 attributes take numpy arrays, numbers, strings and lists of strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, (bool, np.bool_)):
        return np.int64(value)
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    return np.asarray(value, dtype=np.float64)
