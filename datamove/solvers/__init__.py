"""The numerical solvers of the built-in problems (:mod:`datamove.problems` picks one by name)."""

from __future__ import annotations

from datamove.solvers.heat import HeatConfig, HeatSolver, heat_matrix, heat_rhs

__all__ = ["HeatConfig", "HeatSolver", "heat_matrix", "heat_rhs"]
