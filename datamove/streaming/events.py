"""What ingest workers tell the trainer: typed events, sent through each worker's pipe in lists.

NamedTuples, not dataclasses: they pickle as small tuples (a step event is sent for every step).
"""

from __future__ import annotations

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
