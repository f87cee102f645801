"""What ingest workers tell the trainer, and how it travels: typed events, and the bytes of a message.

A worker's events go to the trainer in messages (``encode``/``decode``), several events a message:
    b"S" + records of STEP_RECORD      a run of Step events only: 32 bytes a step, no pickle (most
                                       messages: a worker reading a stream sends nothing else)
    b"P" + pickle of a list of events  anything else (Opened, Info, Ended, ...), Steps among them,
                                       in order
The trainer's messages to a worker (``encode_command``/``decode_command``):
    b"R" + int64 slot ids              slots free again
    b"P" + pickle                      ("member", m): read member m; None: stop
Why not pickled lists throughout: a pickled Step is rebuilt by calling its class, and the trainer
unpickled every step between two train steps (measured in the trainer of bench_isolation.py:
~20 us a message, 15 % of its intake; a record array decodes in one call).
"""

from __future__ import annotations

import pickle
from array import array
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


class Fatal(NamedTuple):
    """A bug in the worker, not a stream failure: the trainer stops with this traceback."""

    worker: int
    traceback: str


class Done(NamedTuple):
    """The worker left its loop and exits."""

    worker: int


Event = Opened | Info | Step | Ended | Fatal | Done


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


def encode_command(command) -> bytes:
    """A message to a worker: ("slots", ids) as int64 ids, anything else (("member", m), None) pickled."""
    if type(command) is tuple and command[0] == "slots":
        return _SLOTS + array("q", command[1]).tobytes()
    return _PICKLED + pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL)


def decode_command(message: bytes):
    """The command of one message of ``encode_command``; slot ids as a list of ints."""
    kind = message[:1]
    if kind == _SLOTS:
        ids = array("q")
        ids.frombytes(message[1:])
        return ("slots", ids.tolist())
    if kind == _PICKLED:
        return pickle.loads(message[1:])
    raise ValueError(f"not a command message: kind {kind!r}")
