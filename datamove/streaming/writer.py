"""The producer side of the stream contract (used by ``datamove simulate``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import adios2
import numpy as np

from datamove.config import StreamConfig
from datamove.streaming.adios import disable_nagle, make_io
from datamove.streaming.contract import TIME, StreamError, remove_contact_files, stream_name, stream_path
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
    ):
        self.stream = stream
        self.trainer = trainer
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
                    self.trainer, f"member {self.member}: {{why}} while the member waited to open stream {path}"),
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
                self.trainer.streaming_check(),
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
