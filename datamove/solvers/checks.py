"""Argument checks shared by the solvers' configs: clear errors that name the field at fault."""

from __future__ import annotations

import numpy as np


def check_int(owner: str, name: str, value: object, *, minimum: int) -> None:
    """``owner.name`` must be an integer >= ``minimum`` (bool is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{owner}.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value!r}")
