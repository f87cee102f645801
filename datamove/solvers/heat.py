"""2D heat equation with Dirichlet walls, implicit Euler, solved exactly by sine transforms.

du/dt = D (u_xx + u_yy) on [0, Lx] x [0, Ly]. The unknowns are the ``ny x nx`` interior nodes
``u[j, i] = u(x_i, y_j)`` with ``x_i = (i + 1) hx``, ``y_j = (j + 1) hy``, ``hx = Lx / (nx + 1)``,
``hy = Ly / (ny + 1)`` (row index = y, column index = x; ``u.ravel()`` is x-fastest). One implicit
Euler step solves

    (I - dt D L) u_next = u + dt D b(walls)

with L the 5-point Laplacian with homogeneous Dirichlet conditions and b the wall values moved to the
right-hand side. ``heat_matrix`` and ``heat_rhs`` build exactly that system; ``HeatSolver.step``
solves it with the type-I discrete sine transform, which diagonalises L, so the step is exact to
round-off in O(n log n) instead of an iterative solve.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.sparse as sp

from datamove.solvers.checks import check_int

N_PARAMS = 5


@dataclass(frozen=True, kw_only=True)
class HeatConfig:
    """Grid, physics and time stepping of one heat simulation.

    ``nx``/``ny`` count interior nodes only; the walls sit at x = 0, Lx and y = 0, Ly.
    """

    nx: int
    ny: int
    lx: float = 10.0
    ly: float = 10.0
    diffusivity: float = 1.0
    dt: float = 0.01
    n_steps: int = 100

    def __post_init__(self) -> None:
        # At least 3 nodes so every direction has an interior node touching neither wall.
        for name in ("nx", "ny"):
            check_int("HeatConfig", name, getattr(self, name), minimum=3)
        check_int("HeatConfig", "n_steps", self.n_steps, minimum=1)
        for name in ("lx", "ly", "diffusivity", "dt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"HeatConfig.{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"HeatConfig.{name} must be finite and > 0, got {value!r}")
        # Plain Python types, so constants() publishes the same attribute types whatever the YAML
        # or numpy source was (lx: 10 and lx: 10.0 are the same run).
        for name in ("nx", "ny", "n_steps"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("lx", "ly", "diffusivity", "dt"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def hx(self) -> float:
        return self.lx / (self.nx + 1)

    @property
    def hy(self) -> float:
        return self.ly / (self.ny + 1)


def _check_params(params: Sequence[float]) -> np.ndarray:
    """Validate the 5 member parameters; returns float64 [5]."""
    arr = np.array(params, dtype=np.float64)  # a copy: the caller's array may change later
    if arr.shape != (N_PARAMS,):
        raise ValueError(
            f"params must be {N_PARAMS} floats {HeatSolver.PARAM_NAMES}, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"params must be finite, got {arr.tolist()}")
    return arr


def _laplacian_1d(n: int, h: float) -> sp.csr_matrix:
    """Second difference with homogeneous Dirichlet ends, [n, n]."""
    return sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), dtype=np.float64, format="csr") / h**2


def _eigenvalues_1d(n: int, h: float) -> np.ndarray:
    """Eigenvalues of ``_laplacian_1d(n, h)`` in DST-I mode order k = 1..n, [n]."""
    k = np.arange(1, n + 1)
    return -(4.0 / h**2) * np.sin(k * np.pi / (2 * (n + 1))) ** 2


def heat_matrix(config: HeatConfig) -> sp.csr_matrix:
    """System matrix ``I - dt D L`` of one implicit Euler step, [ny*nx, ny*nx].

    Rows and columns follow ``u.ravel()`` of a [ny, nx] field (x fastest).
    """
    # kron(I_ny, Lx) acts along the fast (x) index, kron(Ly, I_nx) along y.
    lap = sp.kron(sp.identity(config.ny), _laplacian_1d(config.nx, config.hx)) + sp.kron(
        _laplacian_1d(config.ny, config.hy), sp.identity(config.nx)
    )
    n = config.nx * config.ny
    return (sp.identity(n, format="csr") - (config.dt * config.diffusivity) * lap).tocsr()


def heat_rhs(config: HeatConfig, u: np.ndarray, params: Sequence[float]) -> np.ndarray:
    """Right-hand side of one implicit Euler step from field ``u``, float64 [ny, nx].

    ``u``: current interior field [ny, nx]; ``params``: the 5 member parameters (``t_init`` is not
    used here, only the wall temperatures). The step solves
    ``heat_matrix(config) @ u_next.ravel() == heat_rhs(config, u, params).ravel()``.
    This is the one place the wall values enter the system.
    """
    _, t_x0, t_xl, t_y0, t_yl = _check_params(params)
    u = np.asarray(u)
    if u.shape != (config.ny, config.nx):
        raise ValueError(f"u must have shape [ny, nx] = {(config.ny, config.nx)}, got {u.shape}")
    rhs = np.array(u, dtype=np.float64, copy=True)
    cx = config.dt * config.diffusivity / config.hx**2
    cy = config.dt * config.diffusivity / config.hy**2
    # Nodes next to a wall see the wall value as their missing neighbour; corner nodes see two walls.
    rhs[:, 0] += cx * t_x0
    rhs[:, -1] += cx * t_xl
    rhs[0, :] += cy * t_y0
    rhs[-1, :] += cy * t_yl
    return rhs


class HeatSolver:
    """One ensemble member: a heat simulation from a uniform start between four fixed-temperature walls.

    ``params`` = (t_init, t_x0, t_xl, t_y0, t_yl): the uniform initial temperature, then the
    temperatures of the walls x = 0, x = Lx, y = 0, y = Ly.
    """

    PARAM_NAMES = ("t_init", "t_x0", "t_xl", "t_y0", "t_yl")

    def __init__(self, *, config: HeatConfig, params: Sequence[float]) -> None:
        self.config = config
        self.params = _check_params(params)  # float64 [5], read-only
        self.params.flags.writeable = False
        c = config.dt * config.diffusivity
        lam = _eigenvalues_1d(config.ny, config.hy)[:, None] + _eigenvalues_1d(config.nx, config.hx)[None, :]
        # Inverse eigenvalues of I - dt D L, [ny, nx]; all >= 1 since lam < 0, so no division issue.
        self._inv_denominator = 1.0 / (1.0 - c * lam)

    def constants(self) -> dict:
        """Values a stream publishes once as attributes: nx, ny, lx, ly, diffusivity, dt, n_steps."""
        return dataclasses.asdict(self.config)

    def initial_field(self) -> np.ndarray:
        """Uniform initial field ``t_init``, float64 [ny, nx]."""
        return np.full((self.config.ny, self.config.nx), self.params[0], dtype=np.float64)

    def step(self, u: np.ndarray) -> np.ndarray:
        """Advance ``u`` [ny, nx] by one implicit Euler step; returns float64 [ny, nx].

        Exact solve of ``heat_matrix @ u_next.ravel() = heat_rhs(u).ravel()``: DST-I to the
        eigenbasis of L, divide by the eigenvalues of I - dt D L, transform back.
        """
        rhs = heat_rhs(self.config, u, self.params)
        # rhs is a fresh float64 copy, so the transforms may work in place.
        coeffs = scipy.fft.dstn(rhs, type=1, overwrite_x=True, workers=-1)
        coeffs *= self._inv_denominator
        return scipy.fft.idstn(coeffs, type=1, overwrite_x=True, workers=-1)

    def steps(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yield ``(k, t_k, u_k)`` for k = 1..n_steps, t_k = k dt, u_k float32 [ny, nx].

        The state is kept in float64; float32 is only what is published.
        """
        u = self.initial_field()
        for k in range(1, self.config.n_steps + 1):
            u = self.step(u)
            yield k, k * self.config.dt, u.astype(np.float32)
