"""The heat equation (the first reference paper's use case): five temperatures -> field ``u``.

du/dt = D (u_xx + u_yy) on [0, Lx] x [0, Ly] between four fixed-temperature walls; the parameters
are the uniform initial temperature and the four wall temperatures. Solver: datamove.solvers.heat.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from datamove.problems.base import Normalisation, Problem
from datamove.solvers.heat import HeatConfig, HeatSolver


class _FieldsOf:
    """A HeatSolver whose steps carry their one field by name."""

    def __init__(self, solver: HeatSolver):
        self._solver = solver

    def constants(self) -> dict[str, Any]:
        return self._solver.constants()

    def steps(self) -> Iterator[tuple[int, float, Mapping[str, np.ndarray]]]:
        for k, t, u in self._solver.steps():
            yield k, t, {"u": u}


class HeatProblem(Problem):
    """``solver.name: heat``; parameters ``t_init, t_x0, t_xl, t_y0, t_yl``; one field ``u`` [ny, nx]."""

    name = "heat"
    PARAM_NAMES = HeatSolver.PARAM_NAMES

    def __init__(self, *, solver: Mapping[str, Any], ranges: Mapping[str, Sequence[float]]):
        self.config = HeatConfig(
            nx=solver["nx"], ny=solver["ny"], lx=solver["lx"], ly=solver["ly"],
            diffusivity=solver["diffusivity"], dt=solver["dt"], n_steps=solver["n_steps"],
        )
        self._take_parameters(ranges, solver)
        self.fields = {"u": (self.config.ny, self.config.nx)}
        self.n_steps = self.config.n_steps

    def constants(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def solver(self, *, params: Sequence[float], seed: Sequence[int]) -> _FieldsOf:
        return _FieldsOf(HeatSolver(config=self.config, params=params))  # deterministic: no seed

    def normalisation(self, *, times: np.ndarray, fields: np.ndarray) -> Normalisation:
        """Temperatures scaled by the lowest and highest temperature any parameter can take, which
        bound the solution (maximum principle); time by [0, n_steps dt]."""
        lows = [lo for lo, _ in self.param_ranges]
        highs = [hi for _, hi in self.param_ranges]
        return Normalisation(
            x_low=(*lows, 0.0),
            x_high=(*highs, self.n_steps * self.config.dt),
            y_low=(min(lows),),
            y_high=(max(highs),),
        )
