"""Problems by name: ``solver.name`` picks a built-in problem or a Python problem from outside,
``solver.command`` the user's own solver program.

    problem = make_problem(config["solver"], config["parameters"]["ranges"])

A new built-in problem is a :class:`Problem` subclass in its own module, registered in ``PROBLEMS``,
with its ``solver`` keys and parameter ranges (and their defaults) in the config schema's ``$defs``.
A problem from outside (an installed plug-in of the entry point group ``datamove.problems``, or an
import path ``package.module:ClassName`` in ``solver.name``) is a :class:`Problem` subclass that
declares its solver keys (``SOLVER``: JSON schema of each, with its default) and its parameters
(``RANGES``: name -> default [low, high], in the order its solver takes them); the config's schema
takes them in (:func:`datamove.config.load_schema`), so its keys are checked and filled like a
built-in problem's (docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from datamove.plugins import PROBLEM_GROUP, Found, PluginError, names, resolve
from datamove.problems.base import Normalisation, Problem, Solver
from datamove.problems.external import ExternalProblem
from datamove.problems.heat import HeatProblem
from datamove.problems.navier_stokes import NavierStokesProblem

PROBLEMS: dict[str, type[Problem]] = {"heat": HeatProblem, "navier-stokes": NavierStokesProblem}


def problem_class(name: str, *, key: str = "solver.name") -> Found:
    """The Problem subclass ``name`` names (built in, an installed plug-in, an import path) and
    where it comes from; PluginError naming ``key`` when it is none, or not a problem that declares
    its SOLVER keys and RANGES."""
    found = resolve(name, group=PROBLEM_GROUP, key=key, builtins=PROBLEMS)
    cls = found.obj
    if not (isinstance(cls, type) and issubclass(cls, Problem)):
        raise PluginError(f"key '{key}': {name!r} ({found.origin}) is {cls!r}, not a subclass of "
                          f"datamove.problems.Problem")
    if name not in PROBLEMS:
        for attr, what in (("SOLVER", "its solver keys, name -> JSON schema with a default"),
                           ("RANGES", "its parameters, name -> default [low, high]")):
            if not isinstance(getattr(cls, attr, None), dict):
                raise PluginError(f"key '{key}': problem {name!r} ({found.origin}) declares no {attr} ({what})")
    return found


def problem_names() -> dict[str, str]:
    """Every problem a config can name: built-in and installed plug-ins -> origin."""
    return names(PROBLEM_GROUP, PROBLEMS)


def make_problem(solver: Mapping[str, Any], ranges: Mapping[str, Sequence[float]]) -> Problem:
    """The problem of a validated config's ``solver`` section and ``parameters.ranges``.

    Raises:
        ValueError: the sections describe no valid problem (the message says why).
    """
    if solver.get("command"):
        return ExternalProblem(solver=solver, ranges=ranges)
    name = solver["name"]
    try:
        cls = problem_class(name).obj
    except PluginError as exc:
        raise ValueError(f"{exc} (or give solver.command to launch your own solver program)") from None
    problem = cls(solver=solver, ranges=ranges)
    problem.name = name  # what its streams carry: the name the config gives (a plug-in's, an import path)
    return problem


__all__ = ["PROBLEMS", "ExternalProblem", "problem_class", "problem_names", "HeatProblem", "NavierStokesProblem", "Normalisation", "Problem",
           "Solver", "make_problem"]
