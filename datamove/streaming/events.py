"""What ingest workers and the trainer tell each other, and how it travels: typed events and
commands, and the bytes of a message.

A worker's events go to the trainer in messages (``encode``/``decode``), several events a message:
    b"S" + records of STEP_RECORD      a run of Step events only: 32 bytes a step, no pickle (most
                                       messages: a worker reading a stream sends nothing else)
    b"P" + pickle of a list of events  anything else (Opened, Info, Ended, ...), Steps among them,
                                       in order
The trainer's commands to a worker (``encode_command``/``decode_command``), one a message:
    b"R" + int64 slot ids              FreeSlots: slots free again
    b"P" + pickle                      ReadMember(m): read member m; ReadJob(j): read job j's
                                       stream; Stop: leave the loop
Why not pickled lists throughout: a pickled Step is rebuilt by calling its class, and the trainer
unpickled every step between two train steps (measured in the trainer of bench_isolation.py:
~20 us a message, 15 % of its intake; a record array decodes in one call).
"""

from __future__ import annotations

import pickle
from array import array
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Opened(NamedTuple):
    """The worker's reader connected to ``member``'s stream."""

    member: int
    worker: int


class Info(NamedTuple):
    """The member's attributes passed the contract; ``params`` float64 [n_params]."""

    member: int
    params: np.ndarray


class Step(NamedTuple):
    """Step ``step`` (1-based) of ``member``, at ``time``, is in shared-memory slot ``slot``
    ([n_fields, ny, nx]); the trainer copies it and returns the slot."""

    member: int
    step: int
    time: float
    slot: int


class Ended(NamedTuple):
    """The worker is done with ``member``: ``status`` "complete" or "lost" (with ``reason``), after
    ``steps`` steps; the worker is idle again. ``final``: a loss that a rerun cannot mend (the
    stream broke the contract), so the member is not waited for again."""

    member: int
    status: str
    reason: str
    steps: int
    worker: int
    final: bool = False


class JobOpened(NamedTuple):
    """The worker's reader connected to job ``job``'s stream (the many-members form), which lists
    ``members`` (ints, in the order they will come); each then has its own Opened .. Ended."""

    job: int
    members: tuple[int, ...]
    worker: int


class JobEnded(NamedTuple):
    """The worker is done with job ``job``'s stream: ``unsent``, listed members that never began
    in it (they wait for a rerun, no attempt counted), ``reason`` why, if the stream broke (the
    member it was reading, if any, has its own Ended first); the worker is idle again."""

    job: int
    unsent: tuple[int, ...]
    reason: str
    worker: int


class Fatal(NamedTuple):
    """A bug in the worker, not a stream failure: the trainer stops with this traceback."""

    worker: int
    traceback: str


class Done(NamedTuple):
    """The worker left its loop and exits."""

    worker: int


Event = Opened | Info | Step | Ended | JobOpened | JobEnded | Fatal | Done


# Commands are dataclasses, not NamedTuples like the events: a command is matched by its type, and two
# NamedTuples of equal fields are equal whatever their types; dataclasses of two types never are.
@dataclass(frozen=True, slots=True)
class ReadMember:
    """Read ``member``'s stream (the worker is idle)."""

    member: int


@dataclass(frozen=True, slots=True)
class ReadJob:
    """Read job ``job``'s stream, its members one after another (the worker is idle)."""

    job: int


@dataclass(frozen=True, slots=True)
class FreeSlots:
    """The trainer has copied the steps in ``slots`` (slot ids, all the worker's own): free again."""

    slots: list[int]


@dataclass(frozen=True, slots=True)
class Stop:
    """Leave the loop and exit (mid-member if need be)."""


Command = ReadMember | ReadJob | FreeSlots | Stop


# One Step as it travels: little-endian, fixed size.
STEP_RECORD = np.dtype([("member", "<i8"), ("step", "<i8"), ("time", "<f8"), ("slot", "<i8")])
_STEPS, _PICKLED, _SLOTS = b"S", b"P", b"R"


def encode(events: list[Event]) -> bytes:
    """One message of ``events`` (in order): a record array if they are all Steps, else a pickle."""
    if all(type(ev) is Step for ev in events):
        return _STEPS + np.array(events, dtype=STEP_RECORD).tobytes()
    return _PICKLED + pickle.dumps(events, protocol=pickle.HIGHEST_PROTOCOL)


def decode(message: bytes | memoryview) -> list[Event]:
    """The events of one message of ``encode``, in order."""
    kind = bytes(message[:1])
    if kind == _STEPS:
        records = np.frombuffer(message, dtype=STEP_RECORD, offset=1)
        return list(map(Step._make, records.tolist()))  # tuples of Python ints and a float
    if kind == _PICKLED:
        return pickle.loads(message[1:])
    raise ValueError(f"not an event message: kind {kind!r}")


def encode_command(command: Command) -> bytes:
    """A message to a worker: FreeSlots as int64 ids, the others (ReadMember, ReadJob, Stop) pickled."""
    if type(command) is FreeSlots:
        return _SLOTS + array("q", command.slots).tobytes()
    return _PICKLED + pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL)


def decode_command(message: bytes) -> Command:
    """The command of one message of ``encode_command``; FreeSlots' ids as a list of ints."""
    kind = message[:1]
    if kind == _SLOTS:
        ids = array("q")
        ids.frombytes(message[1:])
        return FreeSlots(ids.tolist())
    if kind == _PICKLED:
        return pickle.loads(message[1:])
    raise ValueError(f"not a command message: kind {kind!r}")
