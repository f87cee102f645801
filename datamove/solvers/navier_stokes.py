"""2D incompressible Navier-Stokes in vorticity form on a periodic square, pseudo-spectral.

    dw/dt + u . grad w = nu lap w + f,    u = (ux, uy) = (d psi/dy, -d psi/dx),    lap psi = -w

on [0, L)^2, so that w = d uy/dx - d ux/dy is the vorticity of u and u is divergence-free. The
unknowns are the ``n x n`` nodal values ``w[j, i] = w(x_i, y_j)``, ``x_i = i L / n``,
``y_j = j L / n`` (row index = y, column index = x). The forcing is the FNO benchmark's
``f = A (sin(2 pi (x + y) / L) + cos(2 pi (x + y) / L))``.

Discretisation:

- Fourier pseudo-spectral in space with ``scipy.fft.rfft2`` coefficients ``w_hat`` [n, n // 2 + 1]
  (axis 0 = ky, axis 1 = kx >= 0). The nonlinear term is de-aliased by the 2/3 rule: only modes
  with ``3 |m| < n`` in both directions (m the integer mode number) enter it, and only those modes
  of it are kept, so no product ever aliases onto a kept mode (which makes it Fourier-Galerkin).
- The nonlinear term is evaluated in Basdevant's form
  ``u . grad w = (d_xx - d_yy)(ux uy) + d_x d_y (uy^2 - ux^2)``, an identity for divergence-free
  u: two inverse FFTs (ux, uy) and two forward FFTs (the two products), instead of the five of the
  advective form ``ux w_x + uy w_y``.
- Time stepping: Heun's method (explicit RK2) for the nonlinear term and the forcing in the frame
  of the integrating factor (Lawson's IF-RK2) ``E = exp(-nu |k|^2 h)``, so diffusion is integrated exactly (no
  stability limit from it, and a pure decaying mode such as the Taylor-Green vortex decays by
  exactly ``E`` per step). One internal step of size ``h = dt / substeps`` costs two nonlinear
  evaluations, i.e. 4 inverse + 4 forward ``rfft2``.

The zero mode of w (the mean vorticity, conserved on a periodic domain) is never changed by a step:
the nonlinear term and the forcing have none and ``E = 1`` there. The initial field and the forcing
have it set to exactly zero, so in ``steps()`` it stays exactly zero and the published fields have
zero mean to round-off.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft

from datamove.solvers.checks import check_int

N_PARAMS = 3
# The FNO benchmark's Gaussian random field for the initial vorticity: coefficient amplitudes
# (4 pi^2 |m|^2 + tau^2)^(-alpha / 2), m the integer mode number.
GRF_ALPHA = 2.5
GRF_TAU = 7.0


@dataclass(frozen=True, kw_only=True)
class NavierStokesConfig:
    """Grid and time stepping of one Navier-Stokes member on the periodic square [0, length)^2.

    The defaults (dt 0.05 in 10 substeps: internal step h = 0.005) keep the advective CFL number
    ``max(|ux| + |uy|) h n / length`` below about 0.25 over 50 published steps for the default
    parameter ranges (viscosity in [1e-3, 1e-2], forcing amplitude in [0, 0.2], initial RMS
    vorticity in [0.5, 2]) at n = 64. The worst corner of those ranges still runs stably with
    substeps = 2 and blows up with substeps = 1, so h has a margin of about 5x.
    """

    n: int = 64  # grid points per side; row index = y, column = x
    length: float = 1.0  # side of the periodic square
    dt: float = 0.05  # time between two published steps
    substeps: int = 10  # internal time steps per published step
    n_steps: int = 50  # published steps per member

    def __post_init__(self) -> None:
        # Even, so the rfft2 layout has a Nyquist row/column that the 2/3 rule drops; at least 8 so
        # the de-aliased band holds more than the mean and the forcing's mode.
        check_int("NavierStokesConfig", "n", self.n, minimum=8)
        if self.n % 2:
            raise ValueError(f"NavierStokesConfig.n must be even, got {self.n!r}")
        check_int("NavierStokesConfig", "substeps", self.substeps, minimum=1)
        check_int("NavierStokesConfig", "n_steps", self.n_steps, minimum=1)
        for name in ("length", "dt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"NavierStokesConfig.{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"NavierStokesConfig.{name} must be finite and > 0, got {value!r}")
        # Plain Python types, so constants() publishes the same attribute types whatever the YAML
        # or numpy source was.
        for name in ("n", "substeps", "n_steps"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("length", "dt"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def internal_dt(self) -> float:
        """Size h of one internal time step, dt / substeps."""
        return self.dt / self.substeps


def _check_params(params: Sequence[float]) -> np.ndarray:
    """Validate (viscosity, forcing_amplitude, ic_amplitude); returns float64 [3]."""
    arr = np.array(params, dtype=np.float64)  # a copy: the caller's array may change later
    names = NavierStokesSolver.PARAM_NAMES
    if arr.shape != (N_PARAMS,):
        raise ValueError(f"params must be {N_PARAMS} floats {names}, got shape {arr.shape}")
    for name, value in zip(names, arr):
        if not math.isfinite(value):
            raise ValueError(f"params: {name} must be finite, got {value!r}")
    viscosity, _, ic_amplitude = arr
    if viscosity <= 0:
        raise ValueError(f"params: viscosity must be > 0, got {viscosity!r}")
    if ic_amplitude < 0:
        raise ValueError(f"params: ic_amplitude must be >= 0 (an RMS), got {ic_amplitude!r}")
    return arr


def _check_field(w: np.ndarray, name: str = "w") -> np.ndarray:
    """``w`` as a float64 [n, n] array with n even; ValueError otherwise."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] % 2:
        raise ValueError(f"{name} must be a square [n, n] field with n even, got shape {w.shape}")
    return w


def _mode_numbers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer mode numbers of the rfft2 layout of an [n, n] field: my [n, 1], mx [1, n // 2 + 1] (float64, exact)."""
    my = np.concatenate([np.arange(0, n // 2), np.arange(-(n // 2), 0)]).astype(np.float64)[:, None]
    mx = np.arange(n // 2 + 1, dtype=np.float64)[None, :]
    return my, mx


def wavenumbers(n: int, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Angular wavenumbers 2 pi m / length of the rfft2 layout of an [n, n] field: ky [n, 1], kx [1, n // 2 + 1]."""
    my, mx = _mode_numbers(n)
    return my * (2.0 * np.pi / length), mx * (2.0 * np.pi / length)


def dealias_mask(n: int) -> np.ndarray:
    """2/3-rule mask of the rfft2 layout, bool [n, n // 2 + 1]: True where ``3 |m| < n`` in both directions."""
    my, mx = _mode_numbers(n)
    return (3 * np.abs(my) < n) & (3 * mx < n)


def _streamfunction_to_velocity(n: int, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Multipliers taking w_hat to ux_hat and uy_hat, complex128 [n, n // 2 + 1] each.

    psi_hat = w_hat / |k|^2 (from lap psi = -w), ux = d psi/dy, uy = -d psi/dx. The zero mode maps
    to zero velocity (no mean flow) and the Nyquist modes, whose odd derivative is not real, to zero.
    """
    my, mx = _mode_numbers(n)
    ky, kx = wavenumbers(n, length)
    k2 = kx**2 + ky**2
    inv_k2 = np.divide(1.0, k2, out=np.zeros_like(k2), where=k2 > 0)
    ky_odd = np.where(np.abs(my) == n // 2, 0.0, ky)
    kx_odd = np.where(mx == n // 2, 0.0, kx)
    return 1j * ky_odd * inv_k2, -1j * kx_odd * inv_k2


def velocity(w: np.ndarray, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Velocity (ux, uy) of the vorticity ``w`` [n, n] on the square of side ``length``, float64 [n, n] each.

    Exact spectral inversion (no de-aliasing: the map is linear). The mean of ``w`` is ignored,
    as no periodic velocity field has a mean vorticity.
    """
    w = _check_field(w)
    n = w.shape[0]
    to_ux, to_uy = _streamfunction_to_velocity(n, length)
    w_hat = scipy.fft.rfft2(w, workers=-1)
    return (
        scipy.fft.irfft2(to_ux * w_hat, s=(n, n), workers=-1),
        scipy.fft.irfft2(to_uy * w_hat, s=(n, n), workers=-1),
    )


def energy(w: np.ndarray, length: float) -> float:
    """Kinetic energy ``1/2 integral |u|^2 dx dy`` of the flow with vorticity ``w`` [n, n]."""
    ux, uy = velocity(w, length)
    return 0.5 * float(np.mean(ux**2 + uy**2)) * length**2


def enstrophy(w: np.ndarray, length: float) -> float:
    """Enstrophy ``1/2 integral w^2 dx dy`` of the vorticity ``w`` [n, n]."""
    w = _check_field(w)
    return 0.5 * float(np.mean(w**2)) * length**2


def taylor_green_vorticity(n: int, length: float, amplitude: float = 1.0, k: int = 1) -> np.ndarray:
    """Taylor-Green vortex ``w = 2 A kappa sin(kappa x) sin(kappa y)``, kappa = 2 pi k / length, float64 [n, n].

    Its velocity is ``ux = A sin(kappa x) cos(kappa y)``, ``uy = -A cos(kappa x) sin(kappa y)``.
    w is proportional to psi, so u . grad w = 0 and, unforced, the vortex keeps its shape and decays
    as ``exp(-2 nu kappa^2 t)``.
    """
    kappa = 2.0 * np.pi * k / length
    x = np.arange(n) * (length / n)
    return 2.0 * amplitude * kappa * np.outer(np.sin(kappa * x), np.sin(kappa * x))


class NavierStokesSolver:
    """One ensemble member: decaying or forced 2D turbulence from a random initial vorticity.

    ``params`` = (viscosity, forcing_amplitude, ic_amplitude): nu > 0, the amplitude A of the
    forcing (any finite value; 0 means unforced), and the RMS of the initial vorticity (>= 0).
    ``seed`` seeds ``np.random.default_rng`` for the initial field's Gaussian random field.
    """

    PARAM_NAMES = ("viscosity", "forcing_amplitude", "ic_amplitude")

    def __init__(self, *, config: NavierStokesConfig, params: Sequence[float], seed: int | Sequence[int] = 0) -> None:
        self.config = config
        self.params = _check_params(params)  # float64 [3], read-only
        self.params.flags.writeable = False
        try:
            np.random.SeedSequence(seed)
        except (TypeError, ValueError) as err:
            raise ValueError(f"seed must be a non-negative integer or a sequence of them, got {seed!r}") from err
        # A copy: the caller's list may change later, and the initial field is drawn on demand.
        self.seed = seed if isinstance(seed, (int, np.integer)) else tuple(seed)
        viscosity, forcing_amplitude, _ = self.params
        n, length, h = config.n, config.length, config.internal_dt
        ky, kx = wavenumbers(n, length)
        mask = dealias_mask(n)
        to_ux, to_uy = _streamfunction_to_velocity(n, length)
        # The mask is folded into every multiplier of the nonlinear term: only in-band modes of the
        # state enter it and only in-band modes of it come out, at no cost per step.
        self._to_ux = to_ux * mask
        self._to_uy = to_uy * mask
        # -FFT(u . grad w) = (kx^2 - ky^2) FFT(ux uy) + kx ky FFT(uy^2 - ux^2), with the step size h
        # folded in so that the tendency comes out already multiplied by h. Stored as complex so
        # the per-step products are complex * complex, which numpy does without a casting pass.
        self._h_c_uv = (h * (kx**2 - ky**2) * mask).astype(np.complex128)
        self._h_c_q = (h * (kx * ky) * mask).astype(np.complex128)
        x = np.arange(n) * (length / n)
        phase = 2.0 * np.pi * (x[None, :] + x[:, None]) / length
        f_hat = scipy.fft.rfft2(forcing_amplitude * (np.sin(phase) + np.cos(phase)), workers=-1)
        f_hat[0, 0] = 0.0  # the forcing has zero mean; drop the round-off so the mean stays exact
        self._h_f_hat = h * f_hat * mask
        self._decay = np.exp(-viscosity * h * (kx**2 + ky**2)).astype(np.complex128)  # E, [n, n//2+1]
        self._half_decay = 0.5 * self._decay

    def constants(self) -> dict:
        """Values a stream publishes once as attributes: n, length, dt, substeps, n_steps."""
        return dataclasses.asdict(self.config)

    def _initial_vorticity_hat(self) -> np.ndarray:
        """rfft2 coefficients of the initial vorticity, complex128 [n, n // 2 + 1].

        White noise coloured by the GRF spectrum, restricted to the de-aliased band, zero mode
        exactly zero, scaled to RMS ``ic_amplitude``.
        """
        n = self.config.n
        noise = np.random.default_rng(self.seed).standard_normal((n, n))
        # Integer mode numbers: the field's shape in units of the box does not depend on length.
        my, mx = _mode_numbers(n)
        colour = (4.0 * np.pi**2 * (mx**2 + my**2) + GRF_TAU**2) ** (-GRF_ALPHA / 2.0)
        w_hat = scipy.fft.rfft2(noise, workers=-1) * (colour * dealias_mask(n))
        w_hat[0, 0] = 0.0
        rms = math.sqrt(float(np.mean(scipy.fft.irfft2(w_hat, s=(n, n), workers=-1) ** 2)))
        return w_hat * (self.params[2] / rms)

    def initial_vorticity(self) -> np.ndarray:
        """Initial vorticity, float64 [n, n]: zero mean, RMS ``ic_amplitude``, deterministic per (params, seed)."""
        n = self.config.n
        return scipy.fft.irfft2(self._initial_vorticity_hat(), s=(n, n), workers=-1)

    def _h_tendency(self, w_hat: np.ndarray) -> np.ndarray:
        """h times the explicit tendency ``-(u . grad w) + f`` of ``w_hat``, complex128 [n, n // 2 + 1]; de-aliased."""
        n = self.config.n
        ux = scipy.fft.irfft2(self._to_ux * w_hat, s=(n, n), workers=-1)
        uy = scipy.fft.irfft2(self._to_uy * w_hat, s=(n, n), workers=-1)
        uxuy = ux * uy
        # uy^2 - ux^2 in place: ux and uy are not needed any more, and it saves two [n, n] arrays.
        ux *= ux
        uy *= uy
        uy -= ux
        out = scipy.fft.rfft2(uxuy, workers=-1)
        out *= self._h_c_uv
        q_hat = scipy.fft.rfft2(uy, workers=-1)
        q_hat *= self._h_c_q
        out += q_hat
        out += self._h_f_hat
        return out

    def step_hat(self, w_hat: np.ndarray) -> np.ndarray:
        """Advance rfft2 coefficients ``w_hat`` complex128 [n, n // 2 + 1] by one internal step h; returns a new array.

        Heun in the integrating-factor frame, with E = exp(-nu |k|^2 h) and hN = h (-(u . grad w) + f):
        predictor ``a = E (w + hN(w))``, then ``w_next = E (w + hN(w) / 2) + hN(a) / 2
        = (E w + a + hN(a)) / 2``, which reuses the predictor.
        """
        predictor = self._h_tendency(w_hat)
        predictor += w_hat
        predictor *= self._decay
        out = self._h_tendency(predictor)
        out += predictor
        out *= 0.5
        out += self._half_decay * w_hat
        return out

    def step(self, w: np.ndarray) -> np.ndarray:
        """Advance the vorticity ``w`` float64 [n, n] by one internal step h = dt / substeps; returns float64 [n, n].

        ``step_hat`` between a forward and an inverse rfft2. Out-of-band modes of ``w`` only diffuse.
        ``steps()`` stays in Fourier space instead, so it matches repeated ``step`` to round-off only.
        """
        w = _check_field(w)
        n = self.config.n
        if w.shape != (n, n):
            raise ValueError(f"w must have shape [n, n] = {(n, n)}, got {w.shape}")
        return scipy.fft.irfft2(self.step_hat(scipy.fft.rfft2(w, workers=-1)), s=(n, n), workers=-1)

    def steps(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yield ``(k, t_k, w_k)`` for k = 1..n_steps, t_k = k dt, w_k float32 [n, n].

        The state is kept as float64 Fourier coefficients between published steps; float32 is only
        what is published.
        """
        n = self.config.n
        w_hat = self._initial_vorticity_hat()
        for k in range(1, self.config.n_steps + 1):
            for _ in range(self.config.substeps):
                w_hat = self.step_hat(w_hat)
            yield k, k * self.config.dt, scipy.fft.irfft2(w_hat, s=(n, n), workers=-1).astype(np.float32)
