"""What a problem is: its parameters, its fields, its solver, its checks and its normalisation.

A :class:`Problem` is everything DATAMOVE knows about the PDE a study learns; the rest of the package
asks the problem and never assumes a particular equation, parameter set or field name. Built-in
problems (``heat``, ``navier-stokes``) run their solver in the ``datamove simulate`` process; an
:class:`~datamove.problems.external.ExternalProblem` launches the user's own command.

Samples: a step of a member is a tensor ``[n_fields, ny, nx]`` (the problem's fields in declared
order, all of one shape); the model's input of a *direct* sample is ``(params..., t)``, ``[n_params + 1]``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Solver(Protocol):
    """A built-in solver of one member, as the problem builds it."""

    def constants(self) -> dict[str, Any]:
        """Values a stream publishes once as attributes (grid, time step, ...)."""

    def steps(self) -> Iterator[tuple[int, float, Mapping[str, np.ndarray]]]:
        """Yield ``(k, t_k, {field: float32 [ny, nx]})`` for k = 1..n_steps."""


@dataclass(frozen=True, kw_only=True)
class Normalisation:
    """Affine scales of a surrogate's inputs and fields, saved with the model.

    Attributes:
        x_low, x_high: [n_inputs] bounds of the inputs (parameters, then time).
        y_low, y_high: [n_fields] bounds of each field.
    """

    x_low: tuple[float, ...]
    x_high: tuple[float, ...]
    y_low: tuple[float, ...]
    y_high: tuple[float, ...]


class Problem(ABC):
    """One PDE with its parameters and fields, built from the validated ``solver`` and
    ``parameters.ranges`` sections of a study config (see :func:`datamove.problems.make_problem`).

    Attributes:
        name: the solver name every stream of this problem carries (``solver`` attribute).
        param_names: the member parameters, in the order the solver takes them.
        param_ranges: [n_params] (low, high) of each parameter.
        fields: field name -> shape (ny, nx), in the order of a sample's first axis.
        n_steps: steps each member sends.
        step_delay_s: sleep after each step (a slower solver for demos and tests).
    """

    name: str
    param_names: tuple[str, ...]
    param_ranges: tuple[tuple[float, float], ...]
    fields: Mapping[str, tuple[int, int]]
    n_steps: int
    step_delay_s: float = 0.0
    #: A problem from outside the package: its solver keys (name -> JSON schema, with a default),
    #: which the config's schema takes in. Built-in problems have theirs in the schema's $defs.
    SOLVER: dict[str, dict] | None = None
    #: A problem from outside: its parameters, name -> default [low, high], in the order its
    #: solver takes them (parameters.ranges).
    RANGES: dict[str, list[float]] | None = None
    #: The command that runs a member (an external solver), or None (built in).
    command: str | None = None

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.fields)

    @property
    def field_shape(self) -> tuple[int, int]:
        """(ny, nx), the shape every field of the problem has."""
        return next(iter(self.fields.values()))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """[n_fields, ny, nx]: one step of one member."""
        return (len(self.fields), *self.field_shape)

    @property
    def n_inputs(self) -> int:
        """Inputs of a direct sample: the parameters, then the time."""
        return len(self.param_names) + 1

    @abstractmethod
    def constants(self) -> dict[str, Any]:
        """The solver constants a member file or stream of this config must carry (may be empty)."""

    def solver(self, *, params: Sequence[float], seed: Sequence[int]) -> Solver:
        """The built-in solver of one member; ``seed`` makes any randomness of the member reproducible."""
        raise NotImplementedError(f"problem '{self.name}' has no built-in solver (it runs {self.command!r})")

    def check_constants(self, constants: Mapping[str, Any]) -> list[str]:
        """What in a member's published constants disagrees with this config: one line per key
        (``"dt = 0.02 (config: solver.dt = 0.01)"``); keys the member does not publish are not checked."""
        problems = []
        for key, mine in self.constants().items():
            theirs = constants.get(key)
            if theirs is None or key == "n_steps":  # the step count is checked against the steps found
                continue
            same = (
                math.isclose(float(theirs), float(mine), rel_tol=1e-9)
                if isinstance(mine, (int, float)) and not isinstance(theirs, str)
                else theirs == mine
            )
            if not same:
                problems.append(f"{key} = {theirs} (config: solver.{key} = {mine})")
        return problems

    def normalisation(self, *, times: np.ndarray, fields: np.ndarray) -> Normalisation:
        """Scales of inputs and fields, from the held-out members.

        Args:
            times: float [N] the held-out samples' times.
            fields: float32 [N, n_fields, ny, nx] the held-out samples.

        Parameters are scaled by their declared ranges, time by [0, latest held-out time], each field
        by its lowest and highest held-out value. A problem that knows bounds of its solution (the
        heat equation's maximum principle) overrides this.
        """
        lows = [lo for lo, _ in self.param_ranges]
        highs = [hi for _, hi in self.param_ranges]
        flat = np.asarray(fields, dtype=np.float64).transpose(1, 0, 2, 3).reshape(len(self.fields), -1)
        return Normalisation(
            x_low=(*lows, 0.0),
            x_high=(*highs, float(np.max(times))),
            y_low=tuple(float(v) for v in flat.min(axis=1)),
            y_high=tuple(float(v) for v in flat.max(axis=1)),
        )

    def _take_parameters(self, ranges: Mapping[str, Sequence[float]], solver: Mapping[str, Any]) -> None:
        """A built-in problem's parameters (``PARAM_NAMES``, in that order) and step delay, from the
        validated ``parameters.ranges`` and ``solver`` sections."""
        self.param_names, self.param_ranges = ranges_of(ranges)
        expected = tuple(getattr(self, "PARAM_NAMES", self.param_names))
        if self.param_names != expected:
            raise ValueError(f"{self.name} parameters must be {list(expected)} in that order, got {list(self.param_names)}")
        self.step_delay_s = float(solver.get("step_delay_s", 0.0))

    def describe(self) -> str:
        """One line for progress output: fields, grid and steps."""
        ny, nx = self.field_shape
        return f"{self.name}: {len(self.fields)} field(s) {','.join(self.fields)} of {ny}x{nx}, {self.n_steps} steps"


def ranges_of(section: Mapping[str, Sequence[float]]) -> tuple[tuple[str, ...], tuple[tuple[float, float], ...]]:
    """(names, ranges) of a validated ``parameters.ranges`` mapping, in its order."""
    names = tuple(section)
    return names, tuple((float(lo), float(hi)) for lo, hi in section.values())
