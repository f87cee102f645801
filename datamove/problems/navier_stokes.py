"""2D incompressible Navier-Stokes, vorticity form, periodic square (the FNO paper's benchmark).

Parameters: viscosity, forcing amplitude and the RMS of the random initial vorticity, which is drawn
from the member's seed (so a member is reproducible, and each member of an ensemble differs). Fields:
the vorticity ``w`` and, on request (``solver.outputs``), the velocity ``ux``, ``uy``, each [n, n].
Solver: datamove.solvers.navier_stokes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from datamove.problems.base import Problem
from datamove.solvers.navier_stokes import NavierStokesConfig, NavierStokesSolver, velocity


class _Outputs:
    """A NavierStokesSolver whose steps carry the requested fields by name."""

    def __init__(self, solver: NavierStokesSolver, outputs: Sequence[str]):
        self._solver, self._outputs = solver, tuple(outputs)

    def constants(self) -> dict[str, Any]:
        return self._solver.constants()

    def steps(self) -> Iterator[tuple[int, float, Mapping[str, np.ndarray]]]:
        length = self._solver.config.length
        for k, t, w in self._solver.steps():
            fields = {"w": w}
            if "ux" in self._outputs or "uy" in self._outputs:
                ux, uy = velocity(w.astype(np.float64), length)
                fields.update(ux=ux.astype(np.float32), uy=uy.astype(np.float32))
            yield k, t, {name: fields[name] for name in self._outputs}


class NavierStokesProblem(Problem):
    """``solver.name: navier-stokes``; parameters ``viscosity, forcing_amplitude, ic_amplitude``."""

    name = "navier-stokes"
    PARAM_NAMES = NavierStokesSolver.PARAM_NAMES

    def __init__(self, *, solver: Mapping[str, Any], ranges: Mapping[str, Sequence[float]]):
        self.config = NavierStokesConfig(
            n=solver["n"], length=solver["length"], dt=solver["dt"], substeps=solver["substeps"],
            n_steps=solver["n_steps"],
        )
        self._take_parameters(ranges, solver)
        low_nu = self.param_ranges[0][0]
        if low_nu <= 0:
            raise ValueError(f"parameters.ranges.viscosity must be > 0, got low {low_nu}")
        self.outputs = tuple(solver["outputs"])
        self.fields = {name: (self.config.n, self.config.n) for name in self.outputs}
        self.n_steps = self.config.n_steps

    def constants(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def solver(self, *, params: Sequence[float], seed: Sequence[int]) -> _Outputs:
        return _Outputs(NavierStokesSolver(config=self.config, params=params, seed=list(seed)), self.outputs)
