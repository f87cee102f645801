"""The consumer side of the stream contract: a pollable reader of one member's stream."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adios2
import numpy as np

from datamove.config import StreamConfig
from datamove.streaming.adios import make_io
from datamove.streaming.contract import (
    MEMBER,
    MEMBERS,
    PARAMS,
    REQUIRED_ATTRIBUTES,
    TIME,
    ContractError,
    Expectation,
    StreamError,
    job_stream_name,
    stream_path,
)

_Status = adios2.bindings.StepStatus
_Mode = adios2.bindings.Mode


class Poll(enum.Enum):
    STEP = "step"  # a step is open: read it, then call end_step()
    NOT_READY = "not_ready"  # nothing yet (timeout)
    END = "end"  # the writer closed the stream


@dataclass(frozen=True)
class MemberInfo:
    """The attributes of a member stream, validated against the contract."""

    member: int
    params: np.ndarray  # float64 [n_params]
    param_names: tuple[str, ...]
    solver: str
    constants: dict[str, Any]


class MemberReader:
    """Reads one member's stream step by step without blocking (``poll(timeout=0)``).

    The trainer runs readers in ingest processes, never in its training process: the ADIOS2 bindings
    hold the GIL inside ``begin_step``.
    """

    def __init__(
        self,
        *,
        stream: StreamConfig,
        stream_dir: str | Path,
        member: int,
        expect: Expectation,
        path: str | Path | None = None,
    ):
        self.stream = stream
        self.member = member
        self.expect = expect
        self.path = Path(path) if path is not None else stream_path(stream_dir, member, stream.engine)
        self.info: MemberInfo | None = None
        self.steps_read = 0
        self.ended = False  # the writer closed the stream (poll saw its end)
        self._adios: adios2.Adios | None = None  # kept alive as long as its stream
        self._stream: adios2.Stream | None = None
        self._in_step = False
        self._time = np.zeros(1, dtype=np.float64)  # read_step's landing place for the time

    def open(self) -> MemberReader:
        self._adios, io = make_io(self.stream)
        try:
            self._stream = adios2.Stream(io, str(self.path), "r")
        except Exception as exc:
            raise self.error(StreamError, f"cannot open reader at {self.path}: {exc}{self._hint()}") from exc
        return self

    def _hint(self) -> str:
        """What to check where the writer may be on another host (SST: the reader connects to the
        address the writer's contact file publishes)."""
        if self.stream.engine.upper() != "SST":
            return ""
        if self.stream.interface is None:
            return (" (a writer on another host publishes 127.0.0.1, which this host cannot reach: set "
                    "stream.interface to the network interface the hosts share)")
        return (f" (the writer publishes the address of its interface {self.stream.interface} "
                f"(stream.interface): check that this host reaches it)")

    def poll(self, timeout: float = 0.0, *, check: bool = True) -> Poll:
        """Try to begin the next step. Raises StreamError if the stream failed (writer died).

        Use ``timeout=0`` (or -1 to block): with SST, a positive timeout intermittently segfaults the
        reader in ADIOS2 2.12 (issue #1862). ``check=False`` checks the step's variables against the
        contract on the first step only: for a caller that reads with :meth:`read_step`, which
        checks what can change from step to step (presence, shape).
        """
        assert self._stream is not None, "open() first"
        if self._in_step:
            raise self.error(StreamError, "poll() while a step is open; call end_step() first")
        try:
            status = self._stream.begin_step(timeout=timeout)
        except Exception as exc:
            raise self.error(StreamError, f"begin_step failed after {self.steps_read} steps: {exc}") from exc
        if status == _Status.OK:
            self._in_step = True
            first = self.info is None
            if first:
                self.info = self._read_info()
            if check or first:
                self._check_step()
            return Poll.STEP
        if status == _Status.NotReady:
            return Poll.NOT_READY
        if status == _Status.EndOfStream:
            self.ended = True
            return Poll.END
        raise self.error(
            StreamError,
            f"stream error after {self.steps_read} steps (the writer died or the connection broke)",
        )

    def read_step(self, out: np.ndarray) -> float:
        """Read the open step's time and every expected field, field i into ``out[i]``
        (float32 [n_fields, ny, nx]); returns the time.

        All gets are deferred and performed together: one exchange with the writer per step instead
        of one per variable, and none of the Python wrappers' per-call work (together ~20 us of CPU
        per step of the ingest's ~130). Each field's presence and shape are checked here, on every step.
        """
        io, engine = self._stream.io, self._stream.engine
        step = self.steps_read + 1
        t = io.inquire_variable(TIME)
        if t is None:
            raise self.error(ContractError, f"step {step} has no variable '{TIME}'")
        variables = []
        for i, (name, shape) in enumerate(self.expect.fields.items()):
            var = io.inquire_variable(name)
            if var is None:
                raise self.error(ContractError, f"step {step} has no variable '{name}'")
            found = tuple(var.shape())
            if found != tuple(shape):
                raise self.error(ContractError, f"step {step}: '{name}' has shape {list(found)}, expected {list(shape)}")
            variables.append((var, out[i]))
        variables.extend(self._more_gets(io, step))
        try:
            for var, into in variables:
                engine.impl.Get(var.impl, into, _Mode.Deferred)
            engine.impl.Get(t.impl, self._time, _Mode.Deferred)
            engine.impl.PerformGets()
        except Exception as exc:
            raise self.error(StreamError, f"reading step {step} failed: {exc}") from exc
        return float(self._time[0])

    def _more_gets(self, io, step: int) -> list:
        """(variable, array) pairs read with a step's fields, in the same exchange: none here."""
        return []

    def end_step(self) -> None:
        try:
            self._stream.end_step()
        except Exception as exc:
            raise self.error(StreamError, f"end_step failed: {exc}") from exc
        self._in_step = False
        self.steps_read += 1

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:
                pass  # a dead writer's stream can fail to close; it is already accounted for
            self._stream = None
            self._adios = None

    def __enter__(self) -> MemberReader:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------- contract
    def _read_info(self) -> MemberInfo:
        attributes = {name: self._stream.read_attribute(name) for name in self._stream.available_attributes()}
        info = member_info(self.member, attributes, prefix="", named_by="the stream name")
        if not np.all(np.isfinite(info.params)):
            raise self.error(ContractError, f"non-finite params {info.params.tolist()}")
        if tuple(info.param_names) != tuple(self.expect.param_names):
            raise self.error(
                ContractError, f"param_names {list(info.param_names)} != expected {list(self.expect.param_names)}"
            )
        if info.solver != self.expect.solver:
            raise self.error(ContractError, f"solver '{info.solver}' != expected '{self.expect.solver}'")
        return info

    def _check_step(self) -> None:
        variables = self._stream.available_variables()
        step = self.steps_read + 1
        if TIME not in variables:
            raise self.error(ContractError, f"step {step} has no variable '{TIME}'")
        for name, expected in self.expect.fields.items():
            if name not in variables:
                raise self.error(ContractError, f"step {step} has no variable '{name}' (fields: {', '.join(self.expect.fields)})")
            var = variables[name]
            if var.get("Type") != "float":
                raise self.error(ContractError, f"step {step}: '{name}' has type {var.get('Type')}, expected float (float32)")
            shape = tuple(int(s) for s in var.get("Shape", "").replace(",", " ").split())
            if shape != tuple(expected):
                raise self.error(
                    ContractError, f"step {step}: '{name}' has shape {list(shape)}, expected {list(expected)}"
                )

    def error(self, kind: type[StreamError], message: str) -> StreamError:
        """A ``kind`` error of this stream, naming its member."""
        return kind(self.member, message)


class JobReader(MemberReader):
    """Reads a job's stream of the many-members form (docs/stream-contract.md): the members listed
    in its ``members`` attribute, one after another in that order, ``n_steps`` steps each, each
    step naming its member (``member``) and a member's first step carrying its ``params``.

    After :meth:`read_step`: ``member`` is the step's member, ``member_steps`` how many of its steps
    this one makes, ``began`` whether it is the member's first (``params`` then holds its float64
    [n_params]). A member id that is not listed, comes again, or comes out of the listed order (or
    before the member before it has all its steps) breaks the contract (:class:`ContractError`).
    Errors name the member being read (None before the first) and the job's stream.
    """

    def __init__(self, *, stream: StreamConfig, stream_dir: str | Path, job: int, expect: Expectation,
                 n_members: int, n_steps: int):
        self.job, self.name = job, job_stream_name(job)
        super().__init__(stream=stream, stream_dir=stream_dir, member=None, expect=expect,
                         path=Path(stream_dir) / self.name)
        self.n_members, self.n_steps = n_members, n_steps
        self.members: tuple[int, ...] = ()  # the members attribute, read with the first step
        self.done: list[int] = []  # members that sent all their steps in this stream
        self.member_steps = 0
        self.began = False
        self.params: np.ndarray | None = None
        self._member_id = np.zeros(1, dtype=np.int64)  # read_step's landing place for the member id

    @property
    def unsent(self) -> tuple[int, ...]:
        """Listed members that have not begun in this stream."""
        started = len(self.done) + (self.member is not None)
        return self.members[started:]

    def error(self, kind: type[StreamError], message: str) -> StreamError:
        return kind(self.member, message, stream=self.name)

    def read_step(self, out: np.ndarray) -> float:
        t = super().read_step(out)
        k = self.steps_read + 1
        found = int(self._member_id[0])
        if found != self.member:
            self._begin(found, k)
        self.began = self.member_steps == 0
        return t

    def end_step(self) -> None:
        super().end_step()
        self.member_steps += 1
        if self.member_steps == self.n_steps:
            self.done.append(self.member)
            self.member, self.member_steps = None, 0

    def _more_gets(self, io, step: int) -> list:
        var = io.inquire_variable(MEMBER)
        if var is None:
            raise self.error(ContractError, f"step {step} has no variable '{MEMBER}' (int64: the step's member)")
        return [(var, self._member_id)]

    def _begin(self, found: int, k: int) -> None:
        """Step ``k`` of the stream names ``found``, another member than the one being read."""
        listed = list(self.members)
        if found not in self.members:
            raise self.error(ContractError, f"step {k} names member {found}, which is not in the stream's "
                                             f"'{MEMBERS}' attribute {listed}")
        if found in self.done:
            raise self.error(ContractError, f"step {k} names member {found} again, after its {self.n_steps} steps "
                                             "(a member comes once in a stream)")
        if self.member is not None:
            raise self.error(ContractError, f"step {k} names member {found} while member {self.member} has sent "
                                             f"{self.member_steps} of its {self.n_steps} steps (members come one "
                                             "after another, each with all its steps)")
        expected = self.members[len(self.done)]
        if found != expected:
            raise self.error(ContractError, f"step {k} names member {found} before member {expected} (members come "
                                             f"in the order of the '{MEMBERS}' attribute, {listed})")
        self.member, self.member_steps = found, 0
        self.params = self._read_params(k)

    def _read_params(self, k: int) -> np.ndarray:
        """The beginning member's ``params`` (float64 [n_params]), from its first step, checked."""
        io, engine = self._stream.io, self._stream.engine
        var = io.inquire_variable(PARAMS)
        n = len(self.expect.param_names)
        if var is None:
            raise self.error(ContractError, f"step {k}, the member's first, has no variable '{PARAMS}' "
                                             f"(float64 [{n}]: {', '.join(self.expect.param_names)})")
        shape = tuple(var.shape())
        if shape != (n,):
            raise self.error(ContractError, f"step {k}: '{PARAMS}' has shape {list(shape)}, expected [{n}]")
        params = np.zeros(n, dtype=np.float64)
        try:
            engine.impl.Get(var.impl, params, _Mode.Sync)
        except Exception as exc:
            raise self.error(StreamError, f"reading step {k}'s params failed: {exc}") from exc
        if not np.all(np.isfinite(params)):
            raise self.error(ContractError, f"non-finite params {params.tolist()}")
        return params

    def _read_info(self) -> MemberInfo:
        attributes = {name: self._stream.read_attribute(name) for name in self._stream.available_attributes()}
        missing = [a for a in (MEMBERS, "param_names", "solver") if a not in attributes]
        if missing:
            raise self.error(ContractError, f"missing attribute(s) {missing} (have {sorted(attributes)})")
        raw = np.asarray(attributes.pop(MEMBERS)).reshape(-1)
        members = [int(m) for m in raw]
        if not members or not np.all(raw == np.round(raw)):
            raise self.error(ContractError, f"attribute '{MEMBERS}' must list member ids (ints), got {raw.tolist()}")
        bad = [m for m in members if not 0 <= m < self.n_members]
        if bad:
            raise self.error(ContractError, f"attribute '{MEMBERS}' lists {bad}, outside the ensemble "
                                             f"[0, {self.n_members})")
        if len(set(members)) != len(members):
            twice = sorted({m for m in members if members.count(m) > 1})
            raise self.error(ContractError, f"attribute '{MEMBERS}' lists {twice} more than once")
        self.members = tuple(members)
        # The rest as a member's, less the per-member attributes (they travel in the steps).
        n_names = len(split_names(attributes["param_names"]))
        info = member_info(members[0], {**attributes, "member": members[0], "params": np.zeros(n_names)},
                           prefix="", named_by="")
        if tuple(info.param_names) != tuple(self.expect.param_names):
            raise self.error(ContractError,
                              f"param_names {list(info.param_names)} != expected {list(self.expect.param_names)}")
        if info.solver != self.expect.solver:
            raise self.error(ContractError, f"solver '{info.solver}' != expected '{self.expect.solver}'")
        return info

    def _check_step(self) -> None:
        super()._check_step()
        var = self._stream.available_variables().get(MEMBER)
        if var is None or var.get("Type") != "int64_t":
            found = "missing" if var is None else f"of type {var.get('Type')}"
            raise self.error(ContractError, f"step {self.steps_read + 1}: '{MEMBER}' is {found}, expected an "
                                             "int64 scalar (the step's member)")


def split_names(names) -> tuple[str, ...]:
    """``param_names`` as read: a comma-separated string by contract (string-array attributes
    arrive empty through SST in ADIOS2 2.12); a string array, as BP5 keeps it, is accepted too."""
    return tuple(n.strip() for n in names.split(",")) if isinstance(names, str) else tuple(names)


def member_info(member: int, attributes: Mapping[str, Any], *, prefix: str, named_by: str) -> MemberInfo:
    """The contract attributes of a member (as read from a stream or a file), checked and parsed.

    ``prefix`` starts each error message (e.g. the file's path); ``named_by`` says what named the
    member (its stream or its file), for a ``member`` attribute that does not match.
    """
    missing = [a for a in REQUIRED_ATTRIBUTES if a not in attributes]
    if missing:
        raise ContractError(member, f"{prefix}missing attribute(s) {missing} (have {sorted(attributes)})")
    attrs = dict(attributes)
    found = int(np.asarray(attrs.pop("member")).reshape(-1)[0])
    if found != member:
        raise ContractError(member, f"{prefix}attribute member={found} does not match {named_by}")
    params = np.asarray(attrs.pop("params"), dtype=np.float64).reshape(-1)
    names = split_names(attrs.pop("param_names"))
    solver = attrs.pop("solver")
    solver = solver[0] if isinstance(solver, list) else solver
    if len(names) != params.size:
        raise ContractError(member, f"{prefix}{params.size} params but {len(names)} param_names")
    constants = {}
    for name, value in attrs.items():  # solver constants (nx, dt, ...): one-element arrays as scalars
        if not isinstance(value, (str, list)) and np.size(value) == 1:
            value = np.asarray(value).reshape(-1)[0].item()
        constants[name] = value
    return MemberInfo(member=member, params=params, param_names=names, solver=solver, constants=constants)
