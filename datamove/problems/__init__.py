"""Problems by name: ``solver.name`` picks a built-in problem, ``solver.command`` the user's own solver.

    problem = make_problem(config["solver"], config["parameters"]["ranges"])

A new built-in problem is a :class:`Problem` subclass in its own module, registered in ``PROBLEMS``,
with its ``solver`` keys and parameter ranges (and their defaults) in the config schema's ``$defs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from datamove.problems.base import Normalisation, Problem, Solver
from datamove.problems.external import ExternalProblem
from datamove.problems.heat import HeatProblem
from datamove.problems.navier_stokes import NavierStokesProblem

PROBLEMS: dict[str, type[Problem]] = {"heat": HeatProblem, "navier-stokes": NavierStokesProblem}


def make_problem(solver: Mapping[str, Any], ranges: Mapping[str, Sequence[float]]) -> Problem:
    """The problem of a validated config's ``solver`` section and ``parameters.ranges``.

    Raises:
        ValueError: the sections describe no valid problem (the message says why).
    """
    if solver.get("command"):
        return ExternalProblem(solver=solver, ranges=ranges)
    try:
        cls = PROBLEMS[solver["name"]]
    except KeyError:
        raise ValueError(
            f"unknown solver '{solver['name']}' (built in: {', '.join(sorted(PROBLEMS))}; "
            "or give solver.command to launch your own)"
        ) from None
    return cls(solver=solver, ranges=ranges)


__all__ = ["PROBLEMS", "ExternalProblem", "HeatProblem", "NavierStokesProblem", "Normalisation", "Problem",
           "Solver", "make_problem"]
