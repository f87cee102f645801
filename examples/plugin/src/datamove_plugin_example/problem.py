"""A Python problem for DATAMOVE: 2D advection-diffusion of a tracer on a periodic square.

dc/dt + v . grad c = kappa laplacian c, with a uniform velocity v = (vx, vy) and diffusivity kappa,
the member's three parameters; the initial tracer is a Gaussian blob at the centre. Solved exactly in
Fourier space (each mode is advected and damped: c_k(t) = c_k(0) exp(-(i k . v + kappa |k|^2) t)),
so a step costs two FFTs. One field, ``c`` [n, n].

DATAMOVE's problem interface (its docs/plugins.md): a subclass of
``datamove.problems.Problem`` that declares ``SOLVER`` (its solver keys, each a JSON schema with a
default) and ``RANGES`` (its parameters, in the order its solver takes them, with default ranges),
is built from the validated ``solver`` section and ``parameters.ranges``, and gives each member a
solver whose ``steps()`` yields ``(k, t_k, {field: float32 [ny, nx]})``; DATAMOVE streams them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from datamove.problems import Problem


class _Solver:
    def __init__(self, *, n: int, length: float, dt: float, n_steps: int, params: Sequence[float]):
        self.n, self.length, self.dt, self.n_steps = n, length, dt, n_steps
        vx, vy, kappa = (float(p) for p in params)
        k = 2.0 * np.pi * np.fft.fftfreq(n, d=length / n)
        ky, kx = np.meshgrid(k, k, indexing="ij")
        # One step's factor for every mode: advection turns its phase, diffusion damps it.
        self.factor = np.exp(-(1j * (kx * vx + ky * vy) + kappa * (kx**2 + ky**2)) * dt)
        xs = (np.arange(n) + 0.5) * length / n
        yy, xx = np.meshgrid(xs, xs, indexing="ij")
        blob = np.exp(-((xx - length / 2) ** 2 + (yy - length / 2) ** 2) / (2 * (0.1 * length) ** 2))
        self.c_hat = np.fft.fft2(blob)

    def constants(self) -> dict[str, Any]:
        return {"n": self.n, "length": self.length, "dt": self.dt, "n_steps": self.n_steps}

    def steps(self) -> Iterator[tuple[int, float, Mapping[str, np.ndarray]]]:
        c_hat = self.c_hat
        for k in range(1, self.n_steps + 1):
            c_hat = c_hat * self.factor
            yield k, k * self.dt, {"c": np.fft.ifft2(c_hat).real.astype(np.float32)}


class AdvectionDiffusion(Problem):
    """2D advection-diffusion of a Gaussian blob on a periodic square; field c [n, n]."""

    name = "advection-diffusion"
    SOLVER = {
        "n": {"type": "integer", "minimum": 4, "description": "Grid points per side.", "default": 32},
        "length": {"type": "number", "exclusiveMinimum": 0, "description": "Side of the square.", "default": 1.0},
        "dt": {"type": "number", "exclusiveMinimum": 0, "description": "Time step.", "default": 0.01},
    }
    RANGES = {"vx": [-1.0, 1.0], "vy": [-1.0, 1.0], "kappa": [0.001, 0.01]}

    def __init__(self, *, solver: Mapping[str, Any], ranges: Mapping[str, Sequence[float]]):
        self.n, self.length, self.dt = int(solver["n"]), float(solver["length"]), float(solver["dt"])
        self.n_steps = int(solver["n_steps"])
        self._take_parameters(ranges, solver)  # param_names, param_ranges, step_delay_s
        if self.param_names != tuple(self.RANGES):
            raise ValueError(f"parameters must be {list(self.RANGES)} in that order, got {list(self.param_names)}")
        if self.param_ranges[2][0] < 0:
            raise ValueError(f"parameters.ranges.kappa must be >= 0, got low {self.param_ranges[2][0]}")
        self.fields = {"c": (self.n, self.n)}

    def constants(self) -> dict[str, Any]:
        return {"n": self.n, "length": self.length, "dt": self.dt, "n_steps": self.n_steps}

    def solver(self, *, params: Sequence[float], seed: Sequence[int]) -> _Solver:
        return _Solver(n=self.n, length=self.length, dt=self.dt, n_steps=self.n_steps, params=params)  # no randomness
