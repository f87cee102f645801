"""Simulation solvers that feed the ensemble, and the sampling of their member parameters.

``SOLVERS`` maps the config's ``solver:`` name to a solver class, so adding a solver is one entry
here rather than an if-chain in the callers.
"""

from __future__ import annotations

from datamove.solvers.heat import HeatConfig, HeatSolver, heat_matrix, heat_rhs
from datamove.solvers.sampling import SAMPLERS, ensemble_params, member_params

SOLVERS: dict[str, type] = {"heat": HeatSolver}


def get_solver(name: str) -> type:
    """Solver class registered under ``name``; KeyError listing the known names otherwise."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise KeyError(f"unknown solver {name!r}; known solvers: {', '.join(sorted(SOLVERS))}") from None


__all__ = [
    "SAMPLERS",
    "SOLVERS",
    "HeatConfig",
    "HeatSolver",
    "ensemble_params",
    "get_solver",
    "heat_matrix",
    "heat_rhs",
    "member_params",
]
