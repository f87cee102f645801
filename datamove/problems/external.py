"""The user's own solver: a command the workflow launches once per member, declared in the config.

    solver:
      name: my-solver            # the `solver` attribute its streams carry
      command: "./my_solver --out {stream} --id {member} --engine {engine} --params {params} --steps {n_steps}"
      fields: {u: [64, 64]}      # name -> [ny, nx] of every field it writes each step
      n_steps: 100
    parameters:
      ranges: {alpha: [0.1, 1.0], beta: [0, 5]}   # any names, in the order the solver takes them

The command gets (see :meth:`ExternalProblem.command_line`): ``{stream}`` the stream path without
suffix (SST makes ``{stream}.sst``; a BP5 writer writes ``{stream}.bp``), ``{member}``, ``{engine}``
(SST or BP5), ``{params}`` (comma-separated, in the order of ``parameters.ranges``), ``{n_steps}``,
``{param_names}`` (comma-separated) and ``{solver}`` (``solver.name``). Fields are normalised from the
held-out members (:meth:`Problem.normalisation`).
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datamove.problems.base import Problem

#: The placeholders a command may use.
PLACEHOLDERS = ("stream", "member", "engine", "params", "n_steps", "param_names", "solver")


def check_command(command: str) -> list[str]:
    """Problems of a command template: unknown placeholders, format errors, an empty command."""
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(command) if field is not None}
        words = shlex.split(command)
    except ValueError as exc:
        return [f"cannot parse the command: {exc}"]
    problems = [f"unknown placeholder {{{n}}} (known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
                for n in sorted(names - set(PLACEHOLDERS))]
    if not words:
        problems.append("the command is empty")
    if "stream" not in names:
        problems.append("the command must take {stream}: where it writes the member")
    return problems


class ExternalProblem(Problem):
    """A solver outside DATAMOVE, launched by ``solver.command``; fields as declared in ``solver.fields``."""

    def __init__(self, *, solver: Mapping[str, Any], ranges: Mapping[str, Sequence[float]]):
        self.name = solver["name"]
        self.command = solver["command"]
        problems = check_command(self.command)
        if problems:
            raise ValueError("; ".join(problems))
        self.fields = {name: (int(shape[0]), int(shape[1])) for name, shape in solver["fields"].items()}
        if len(set(self.fields.values())) > 1:
            raise ValueError(f"every field must have one shape [ny, nx], got {self.fields}")
        self._take_parameters(ranges, solver)
        self.n_steps = int(solver["n_steps"])

    def constants(self) -> dict[str, Any]:
        return {}  # the command's own business: nothing to check beyond the fields

    def command_line(self, *, stream: Path, member: int, engine: str, params: Sequence[float]) -> list[str]:
        """The argv of one member's run: the template's words with the placeholders filled in.

        Split before filling, so that a path or value with spaces stays one argument.
        """
        values = {
            "stream": str(stream),
            "member": str(member),
            "engine": engine.upper(),
            "params": ",".join(repr(float(p)) for p in params),  # repr: every digit of a float64
            "n_steps": str(self.n_steps),
            "param_names": ",".join(self.param_names),
            "solver": self.name,
        }
        return [word.format(**values) for word in shlex.split(self.command)]
