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
from datamove.streaming.contract import (
    MEMBER,
    MEMBERS,
    PARAMS,
    TIME,
    StreamError,
    job_stream_name,
    remove_contact_files,
    stream_name,
    stream_path,
)
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
        # What messages call it (a job's writer: its own).
        self.name, self.label, self.noun = stream_name(member), f"member {member}", "member"

    def _path(self, engine: str) -> Path:
        return stream_path(self.stream_dir, self.member, engine)

    def _dropped(self) -> StreamDropped:
        """The watchdog's check that the trainer reads this stream no more."""
        return StreamDropped(self.receipt, self.stream_dir, self.member)

    def _error(self, message: str) -> StreamError:
        return StreamError(self.member, message)

    def open(self) -> MemberWriter:
        self.stream_dir.mkdir(parents=True, exist_ok=True)
        engine = self.stream.engine.upper()
        if engine == "SST":
            remove_contact_files(self.stream_dir, [self.name], label="simulate")  # a killed retry's
        _, io = make_io(self.stream)
        path = self._path(engine)
        if self.watchdog is not None:
            self.watchdog.arm(
                self.stream.open_timeout_s,
                f"{self.label}: no trainer connected to stream {path} within "
                f"{self.stream.open_timeout_s:g} s (stream.open_timeout_s). Is the trainer running "
                f"and reading {self.stream_dir}?",
                check=None if self.trainer is None else Explained(
                    _Either(self.trainer, self._dropped()),
                    f"{self.label}: {{why}} while the {self.noun} waited to open stream {path}"),
            )
        try:
            self._stream = adios2.Stream(io, str(path), "w")
        except Exception as exc:  # ADIOS2 raises plain RuntimeError/ValueError
            raise self._error(f"cannot open writer at {path}: {exc}") from exc
        finally:
            if self.watchdog is not None:
                self.watchdog.disarm()
        for name, value in self.attributes.items():
            self._stream.write_attribute(name, _attribute_value(value))
        if engine == "SST":
            disable_nagle()  # the reader's connection exists now (Open waited for it)
        if self.watchdog is not None and self.trainer is not None:
            self.watchdog.arm(None, check=Explained(
                _Either(self.trainer.streaming_check(), self._dropped()),
                f"{self.label}: {{why}} while the {self.noun} streamed to it ({path}); the solver is "
                f"stopped (a streaming member fails once its trainer's heartbeat stands still for "
                f"{self.trainer.quiet_s:g} s: max(10 x trainer.heartbeat_s, 10 s))",
            ))
        return self

    def write_step(self, *, time: float, fields: Mapping[str, np.ndarray]) -> None:
        """Write one step: ``time`` and each field by name (float32 [ny, nx]); published at end_step."""
        if self._stream is None:
            raise self._error("write_step before open")
        try:
            self._stream.begin_step()
            self._stream.write(TIME, np.float64(time))
            for name, array in fields.items():
                self._stream.write(name, np.ascontiguousarray(array, dtype=np.float32))
            self._more(self._stream)
            self._stream.end_step()
        except Exception as exc:
            raise self._error(f"step {self.steps_written + 1} failed: {exc}") from exc
        self.steps_written += 1
        if self.steps_written == 1 and self.stream.engine.upper() == "SST":
            disable_nagle()  # and any connection the first step's data opened

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()  # SST: may wait for the reader (steps still queued)
            except Exception as exc:
                raise self._error(f"close failed: {exc}") from exc
            finally:
                self._stream = None
                if self.watchdog is not None and self.trainer is not None:
                    self.watchdog.disarm()  # armed since open

    def _more(self, stream: adios2.Stream) -> None:
        """What a step carries besides the time and the fields: nothing here."""

    def __enter__(self) -> MemberWriter:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, engine={self.stream.engine})"


class JobWriter(MemberWriter):
    """Writes a job's stream in the many-members form (SST; docs/stream-contract.md): ``members``
    (listed in the ``members`` attribute) one after another, each step naming its member, a
    member's first step carrying its ``params``. One open and one close for the whole job.

    Args (besides MemberWriter's, less ``member`` and ``receipt``):
        job: the job's id (its stream is ``job-{job:06d}``).
        members: the members it will send, in order.
        attributes: the job's attributes (param_names, solver, constants), ``members`` added here.
        receipts: member -> its receipt file: the watchdog ends the solver once the trainer says,
            in the receipt of any of ``members``, that it dropped this stream.

    Use: ``begin(member, params)`` before a member's first step, then ``write_step`` as for one
    member.
    """

    def __init__(self, *, stream: StreamConfig, stream_dir: str | Path, job: int, members, attributes,
                 watchdog: Watchdog | None = None, trainer=None, receipts=None):
        members = [int(m) for m in members]
        super().__init__(stream=stream, stream_dir=stream_dir, member=members[0],
                         attributes={**attributes, MEMBERS: np.asarray(members, dtype=np.int64)},
                         watchdog=watchdog, trainer=trainer)
        self.job, self.members, self.receipts = job, members, receipts
        self.name, self.label, self.noun = job_stream_name(job), f"job {job} (members {members[0]}..{members[-1]})", "job"
        self.member: int | None = None  # the member being sent
        self._params: np.ndarray | None = None  # the member's, until its first step carries them
        self.member_steps = 0

    def _path(self, engine: str) -> Path:
        return self.stream_dir / self.name

    def _dropped(self) -> JobDropped:
        return JobDropped([(m, Path(self.receipts(m))) for m in self.members] if self.receipts else [],
                          self.stream_dir, self.name)

    def _error(self, message: str) -> StreamError:
        return StreamError(self.member, message, stream=self.name)

    def begin(self, member: int, params) -> None:
        """``member``'s steps come next; its first carries ``params`` (float64 [n_params])."""
        self.member, self.member_steps = int(member), 0
        self._params = np.asarray(params, dtype=np.float64).reshape(-1)

    def write_step(self, *, time: float, fields: Mapping[str, np.ndarray]) -> None:
        if self.member is None:
            raise self._error("write_step before begin(member, params)")
        super().write_step(time=time, fields=fields)
        self.member_steps += 1

    def _more(self, stream: adios2.Stream) -> None:
        stream.write(MEMBER, int(self.member))  # a Python int: an int64 scalar (np.int64 is refused)
        if self._params is not None:
            stream.write(PARAMS, self._params)
            self._params = None


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


class JobDropped:
    """The watchdog's check for a job's stream: the trainer dropped it if it says so in the receipt
    of any member of the job (each ``(member, receipt)`` of ``receipts``): a receipt that is not
    ``complete`` and names the stream of the contact file there now (its signature). Why, or None."""

    def __init__(self, receipts: list[tuple[int, Path]], stream_dir: Path, name: str):
        self.receipts, self.stream_dir, self.name = receipts, stream_dir, name
        self.held: set[int] = set()  # members whose receipt said complete: not read again

    def __call__(self) -> str | None:
        contact = None
        for member, path in self.receipts:
            if member in self.held:
                continue
            try:
                word = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                continue
            if isinstance(word, dict) and word.get("status", "complete") == "complete":
                self.held.add(member)
                continue
            if not isinstance(word, dict) or not word.get("contact"):
                continue
            if contact is None:
                contact = list(contact_signature(self.stream_dir, self.name) or ())
            if word["contact"] == contact:
                return f"the trainer dropped this stream (member {member}: {word.get('reason')})"
        return None


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
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return value.astype(np.int64)  # the job's members
    return np.asarray(value, dtype=np.float64)
