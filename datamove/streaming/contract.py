"""The stream contract: what any solver writes so that the trainer can read it.

One ADIOS2 stream per ensemble member, named ``member-{id:06d}`` inside the study's stream folder.
Attributes (written before the first step): ``member`` (int), ``params`` (float64 [n_params]),
``param_names`` (one comma-separated string), ``solver`` (string), plus the solver's constants. Each
step: one float32 variable per field the problem declares (global shape [ny, nx]) and ``time``
(float64 scalar). See docs/stream-contract.md.

The many-members form (:class:`JobReader <datamove.streaming.reader.JobReader>`): one SST stream
per simulation job, ``job-{J:06d}``, carrying the members listed in its ``members`` attribute (int64
[k]) one after another, each ``n_steps`` steps; each step names its member (``member``, int64
scalar) and a member's first step carries its ``params`` (float64 [n_params]) as a variable. It
saves a member the open and the close of a stream of its own (the close alone sleeps 100 ms in
ADIOS2).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TIME = "time"
MEMBER = "member"  # the many-members form: each step's member, and the list of the job's (MEMBERS)
MEMBERS = "members"
PARAMS = "params"
REQUIRED_ATTRIBUTES: tuple[str, ...] = ("member", "params", "param_names", "solver")


class StreamError(RuntimeError):
    """An ADIOS2 failure on one member's stream; the message names the member (and the job's
    stream, ``stream``, for a member of the many-members form; ``member`` None: the job's stream
    failed before any member)."""

    def __init__(self, member: int | None, message: str, *, stream: str | None = None):
        where = stream or stream_name(member)
        super().__init__(f"{where}: {message}" if member is None else f"member {member} ({where}): {message}")
        self.member = member
        self.reason = message


class ContractError(StreamError):
    """A stream that does not follow the contract (missing attribute, wrong shape or dtype, ...)."""


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """What the trainer expects of every member stream or file of a study.

    Attributes:
        fields: field name -> (ny, nx), in the order of a sample's first axis.
        param_names: the parameters, in order.
        solver: the ``solver`` attribute.
    """

    fields: Mapping[str, tuple[int, int]]
    param_names: Sequence[str]
    solver: str

    @classmethod
    def of(cls, problem) -> Expectation:
        """The expectation of a :class:`datamove.problems.Problem`."""
        return cls(fields=dict(problem.fields), param_names=tuple(problem.param_names), solver=problem.name)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """[n_fields, ny, nx]."""
        return (len(self.fields), *next(iter(self.fields.values())))


def stream_name(member: int) -> str:
    return f"member-{member:06d}"


def job_stream_name(job: int) -> str:
    """The stream of simulation job ``job`` in the many-members form."""
    return f"job-{job:06d}"


def stream_path(stream_dir: str | Path, member: int, engine: str) -> Path:
    """The path given to ADIOS2 ``Open``: SST adds ``.sst`` to it for the contact file."""
    base = Path(stream_dir) / stream_name(member)
    return base.with_name(base.name + ".bp") if engine.upper() == "BP5" else base


def contact_file(stream_dir: str | Path, member: int | str) -> Path:
    """The SST contact file that appears once the writer has opened the stream of ``member`` (or
    the stream named ``member``, a job's)."""
    name = member if isinstance(member, str) else stream_name(member)
    return Path(stream_dir) / f"{name}.sst"


def remove_contact_files(stream_dir: str | Path, members: Iterable[int] | None = None, *, label: str = "") -> int:
    """Remove SST contact files left by killed writers (they survive kill -9): of ``members``, or
    every one in ``stream_dir``. A reader would otherwise try to connect to a dead writer's address.
    Says each removal on stderr when ``label`` is given; returns how many were removed."""
    stream_dir = Path(stream_dir)
    stale = stream_dir.glob("*.sst") if members is None else (contact_file(stream_dir, m) for m in members)
    removed = 0
    for path in stale:
        if path.exists():
            if label:
                print(f"[{label}] removing stale contact file {path}", file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def join_names(names) -> str:
    """``param_names`` travels as one comma-separated string: string-array attributes arrive empty
    through SST in ADIOS2 2.12 (measured), plain strings do not."""
    names = list(names)
    bad = [n for n in names if "," in n or not n.strip()]
    if bad:
        raise ValueError(f"parameter names must be non-empty and contain no comma: {bad}")
    return ",".join(names)
