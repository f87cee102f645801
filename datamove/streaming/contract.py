"""The stream contract: what any solver writes so that the trainer can read it.

One ADIOS2 stream per ensemble member, named ``member-{id:06d}`` inside the study's stream folder.
Attributes (written before the first step): ``member`` (int), ``params`` (float64 [n_params]),
``param_names`` (one comma-separated string), ``solver`` (string), plus the solver's constants. Each step: one variable
per field (``u``: float32 [ny, nx]) and ``time`` (float64 scalar). See docs/stream-contract.md.
"""

from __future__ import annotations

from pathlib import Path

FIELDS: tuple[str, ...] = ("u",)
TIME = "time"
REQUIRED_ATTRIBUTES: tuple[str, ...] = ("member", "params", "param_names", "solver")


class StreamError(RuntimeError):
    """An ADIOS2 failure on one member's stream; the message names the member."""

    def __init__(self, member: int, message: str):
        super().__init__(f"member {member} ({stream_name(member)}): {message}")
        self.member = member
        self.reason = message


class ContractError(StreamError):
    """A stream that does not follow the contract (missing attribute, wrong shape or dtype, ...)."""


def stream_name(member: int) -> str:
    return f"member-{member:06d}"


def stream_path(stream_dir: str | Path, member: int, engine: str) -> Path:
    """The path given to ADIOS2 ``Open``: SST adds ``.sst`` to it for the contact file."""
    base = Path(stream_dir) / stream_name(member)
    return base.with_name(base.name + ".bp") if engine.upper() == "BP5" else base


def contact_file(stream_dir: str | Path, member: int) -> Path:
    """The SST contact file that appears once the writer has opened the stream."""
    return Path(stream_dir) / f"{stream_name(member)}.sst"


def join_names(names) -> str:
    """``param_names`` travels as one comma-separated string: string-array attributes arrive empty
    through SST in ADIOS2 2.12 (measured), plain strings do not."""
    names = list(names)
    bad = [n for n in names if "," in n or not n.strip()]
    if bad:
        raise ValueError(f"parameter names must be non-empty and contain no comma: {bad}")
    return ",".join(names)
