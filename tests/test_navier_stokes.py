"""Navier-Stokes solver: exact Taylor-Green decay, agreement with an independent advective-form
reference, second order in time, invariants (zero mean, energy and enstrophy decay), determinism,
validation, and stability over the default parameter ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft

from datamove.solvers.navier_stokes import (
    NavierStokesConfig,
    NavierStokesSolver,
    dealias_mask,
    energy,
    enstrophy,
    taylor_green_vorticity,
    velocity,
)

# Corners of the default parameter ranges: viscosity [1e-3, 1e-2], forcing_amplitude [0, 0.2],
# ic_amplitude [0.5, 2.0].
NU_MIN, NU_MAX = 1e-3, 1e-2
A_MAX = 0.2
IC_MIN, IC_MAX = 0.5, 2.0


def advance(solver: NavierStokesSolver, w: np.ndarray, n: int) -> np.ndarray:
    """``n`` internal steps of ``solver`` from the physical field ``w`` [n, n], in float64."""
    for _ in range(n):
        w = solver.step(w)
    return w


def reference_step(w: np.ndarray, *, nu: float, forcing: float, length: float, h: float) -> np.ndarray:
    """One IF-Heun step written out independently: numpy.fft, full spectrum, advective form
    ``ux w_x + uy w_y`` (five transforms per evaluation instead of the solver's four), 2/3 rule."""
    n = w.shape[0]
    k = np.fft.fftfreq(n, d=length / n) * 2 * np.pi
    kx, ky = k[None, :], k[:, None]
    m = np.fft.fftfreq(n, d=1.0 / n)
    keep = (np.abs(m)[:, None] < n / 3) & (np.abs(m)[None, :] < n / 3)
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0  # psi's mean is arbitrary; w_hat[0, 0] is zero below anyway
    x = np.arange(n) * length / n
    phase = 2 * np.pi * (x[None, :] + x[:, None]) / length
    f_hat = np.fft.fft2(forcing * (np.sin(phase) + np.cos(phase)))

    def tendency(w_hat):
        w_hat = w_hat * keep
        psi_hat = w_hat / k2
        ux, uy, wx, wy = (np.fft.ifft2(op * c).real for op, c in
                          ((1j * ky, psi_hat), (-1j * kx, psi_hat), (1j * kx, w_hat), (1j * ky, w_hat)))
        return (-np.fft.fft2(ux * wx + uy * wy) + f_hat) * keep

    decay = np.exp(-nu * k2 * h)
    decay[0, 0] = 1.0
    w_hat = np.fft.fft2(w)
    n0 = tendency(w_hat)
    predictor = decay * (w_hat + h * n0)
    return np.fft.ifft2(decay * (w_hat + 0.5 * h * n0) + 0.5 * h * tendency(predictor)).real


def random_member(n: int = 32, *, nu: float = 2e-3, forcing: float = 0.2, ic: float = 1.5, seed=0,
                  dt: float = 0.05, substeps: int = 10, n_steps: int = 4, length: float = 1.0):
    config = NavierStokesConfig(n=n, length=length, dt=dt, substeps=substeps, n_steps=n_steps)
    return NavierStokesSolver(config=config, params=(nu, forcing, ic), seed=seed)


# --- exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k, length", [(1, 1.0), (2, 1.0), (3, 2 * np.pi)])
def test_taylor_green_vortex_decays_at_exact_viscous_rate(k, length):
    nu, amplitude = 0.01 * length**2, 0.8
    solver = random_member(32, nu=nu, forcing=0.0, length=length, dt=0.02 * length, substeps=2)
    w0 = taylor_green_vorticity(32, length, amplitude, k=k)
    n_internal = 200
    t = n_internal * solver.config.internal_dt
    kappa = 2 * np.pi * k / length
    expected = w0 * math.exp(-2 * nu * kappa**2 * t)
    assert expected.max() < 0.9 * w0.max()  # the decay is large enough to be a real check
    # The nonlinear term cancels and the integrating factor is exact, so only round-off remains.
    np.testing.assert_allclose(advance(solver, w0, n_internal), expected, rtol=0, atol=1e-12 * w0.max())


def test_taylor_green_velocity_energy_and_enstrophy_match_closed_form():
    n, length, amplitude, k = 32, 2.0, 0.6, 2
    kappa = 2 * np.pi * k / length
    x = np.arange(n) * length / n
    X, Y = x[None, :], x[:, None]  # row index = y, column = x
    w = taylor_green_vorticity(n, length, amplitude, k=k)
    ux, uy = velocity(w, length)
    np.testing.assert_allclose(ux, amplitude * np.sin(kappa * X) * np.cos(kappa * Y), atol=1e-13)
    np.testing.assert_allclose(uy, -amplitude * np.cos(kappa * X) * np.sin(kappa * Y), atol=1e-13)
    assert energy(w, length) == pytest.approx(length**2 * amplitude**2 / 4, rel=1e-12)
    assert enstrophy(w, length) == pytest.approx(length**2 * amplitude**2 * kappa**2 / 2, rel=1e-12)


def test_velocity_is_divergence_free_with_curl_equal_to_the_vorticity():
    solver = random_member(32, length=1.7)
    w = solver.initial_vorticity()
    ux, uy = velocity(w, 1.7)
    k = np.fft.fftfreq(32, d=1.7 / 32) * 2 * np.pi

    def d(f, axis):
        shape = (-1, 1) if axis == 0 else (1, -1)
        return np.fft.ifft2(1j * k.reshape(shape) * np.fft.fft2(f)).real

    np.testing.assert_allclose(d(ux, 1) + d(uy, 0), 0.0, atol=1e-12)
    np.testing.assert_allclose(d(uy, 1) - d(ux, 0), w, atol=1e-12)


# n = 24 is a multiple of 3, so the 2/3 rule's boundary mode m = n / 3 is there to be dropped.
@pytest.mark.parametrize("n, length", [(32, 1.0), (24, 2.5)])
def test_step_matches_independent_advective_form_reference(n, length):
    solver = random_member(n, nu=3e-3, forcing=0.3, ic=1.5, seed=4, length=length, dt=0.04, substeps=2)
    # A full-spectrum field, so that the de-aliasing of the input is exercised too.
    w = np.random.default_rng(4).standard_normal((n, n))
    for _ in range(3):
        expected = reference_step(w, nu=3e-3, forcing=0.3, length=length, h=solver.config.internal_dt)
        w_next = solver.step(w)
        np.testing.assert_allclose(w_next, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
        w = w_next


def test_time_stepping_is_second_order():
    def final(substeps):
        solver = random_member(32, nu=2e-3, forcing=0.2, ic=1.5, seed=2, dt=0.2, substeps=substeps)
        return advance(solver, solver.initial_vorticity(), substeps)

    reference = final(320)
    errors = [np.abs(final(s) - reference).max() for s in (10, 20, 40)]
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.5 < coarse / fine < 4.5, errors


# --- invariants ---------------------------------------------------------------------------------


def test_mean_vorticity_stays_zero_with_forcing():
    solver = random_member(32, nu=NU_MIN, forcing=A_MAX, ic=IC_MAX, seed=5)
    n = solver.config.n
    w0 = solver.initial_vorticity()
    assert abs(w0.mean()) < 1e-15 * IC_MAX

    # In Fourier space the zero mode is untouched by a step: it stays exactly zero.
    w_hat = scipy.fft.rfft2(w0)
    w_hat[0, 0] = 0.0
    for _ in range(400):
        w_hat = solver.step_hat(w_hat)
    assert w_hat[0, 0] == 0.0
    w = scipy.fft.irfft2(w_hat, s=(n, n))
    assert np.abs(w).max() > 0.5  # a live, forced field, not a decayed one
    assert abs(w.mean()) < 1e-15 * np.abs(w).max()

    # Through the physical step (a forward and inverse transform per step) only round-off accrues.
    w = advance(solver, w0, 400)
    assert abs(w.mean()) < 1e-13 * np.abs(w).max()

    # The published float32 fields: zero mean up to float32 rounding.
    for _, _, w_k in solver.steps():
        assert abs(w_k.mean(dtype=np.float64)) < 1e-7 * np.abs(w_k).max()


@pytest.mark.parametrize("nu", [NU_MIN, NU_MAX])
def test_unforced_energy_and_enstrophy_never_increase(nu):
    solver = random_member(64, nu=nu, forcing=0.0, ic=IC_MAX, seed=1)
    w = solver.initial_vorticity()
    energies, enstrophies = [energy(w, 1.0)], [enstrophy(w, 1.0)]
    for _ in range(200):
        w = solver.step(w)
        energies.append(energy(w, 1.0))
        enstrophies.append(enstrophy(w, 1.0))
    energies, enstrophies = np.array(energies), np.array(enstrophies)
    # Step by step, with room for round-off only (the decrease per step is ~1e-6 relative or more).
    assert np.all(np.diff(energies) <= 1e-13 * energies[0])
    assert np.all(np.diff(enstrophies) <= 1e-13 * enstrophies[0])
    assert energies[-1] < energies[0] and enstrophies[-1] < 0.99 * enstrophies[0]

    published = [enstrophy(w_k, 1.0) for _, _, w_k in solver.steps()]
    assert np.all(np.diff([enstrophies[0], *published]) < 0)


# --- determinism, shapes, constants -------------------------------------------------------------


def test_same_params_and_seed_give_bitwise_identical_fields():
    def fields(seed):
        return [w.copy() for _, _, w in random_member(32, seed=seed, n_steps=3).steps()]

    a, b = fields(7), fields(7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(random_member(seed=[3, 1]).initial_vorticity(),
                          random_member(seed=[3, 1]).initial_vorticity())
    assert not np.allclose(random_member(seed=7).initial_vorticity(), random_member(seed=8).initial_vorticity())
    assert not np.allclose(random_member(seed=[3, 1]).initial_vorticity(),
                           random_member(seed=[3, 2]).initial_vorticity())


def test_initial_vorticity_is_a_zero_mean_band_limited_field_of_the_requested_rms():
    w1 = random_member(32, ic=1.0, seed=3).initial_vorticity()
    w2 = random_member(32, ic=IC_MAX, seed=3).initial_vorticity()
    assert w1.shape == (32, 32) and w1.dtype == np.float64
    assert math.sqrt(np.mean(w2**2)) == pytest.approx(IC_MAX, rel=1e-12)
    np.testing.assert_allclose(w2, IC_MAX * w1, rtol=0, atol=1e-13)
    # Only modes of the de-aliased band are present: nothing for the 2/3 rule to cut at step 1.
    coefficients = np.abs(scipy.fft.rfft2(w1))
    assert coefficients[~dealias_mask(32)].max() < 1e-12 * coefficients.max()
    assert np.all(random_member(32, ic=0.0).initial_vorticity() == 0.0)


def test_steps_yields_float32_fields_at_each_published_time():
    solver = random_member(16, dt=0.05, substeps=3, n_steps=4)
    out = list(solver.steps())
    assert [k for k, _, _ in out] == [1, 2, 3, 4]
    assert [t for _, t, _ in out] == pytest.approx([0.05, 0.10, 0.15, 0.20])
    assert all(w.shape == (16, 16) and w.dtype == np.float32 for _, _, w in out)
    # The Fourier-space state of steps() follows the same trajectory as repeated step().
    expected = advance(solver, solver.initial_vorticity(), 3).astype(np.float32)
    np.testing.assert_allclose(out[0][2], expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_constants_are_the_config_as_plain_python_values():
    config = NavierStokesConfig(n=np.int64(32), length=np.float32(2.0), dt=1, substeps=np.int32(4), n_steps=7)
    constants = NavierStokesSolver(config=config, params=(1e-3, 0.1, 1.0)).constants()
    assert constants == {"n": 32, "length": 2.0, "dt": 1.0, "substeps": 4, "n_steps": 7}
    assert [type(v) for v in constants.values()] == [int, float, float, int, int]
    assert NavierStokesConfig() == NavierStokesConfig(n=64, length=1.0, dt=0.05, substeps=10, n_steps=50)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("n", 6), ("n", 33), ("n", 32.0), ("n", True),
        ("length", 0.0), ("length", -1.0), ("length", math.inf), ("length", "1"),
        ("dt", 0), ("dt", math.nan),
        ("substeps", 0), ("substeps", 2.5),
        ("n_steps", 0), ("n_steps", None),
    ],
)
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"NavierStokesConfig\.{field} "):
        NavierStokesConfig(**{field: value})


@pytest.mark.parametrize(
    "params, name",
    [
        ((0.0, 0.1, 1.0), "viscosity"), ((-1e-3, 0.1, 1.0), "viscosity"), ((math.nan, 0.1, 1.0), "viscosity"),
        ((1e-3, math.inf, 1.0), "forcing_amplitude"),
        ((1e-3, 0.1, -0.5), "ic_amplitude"), ((1e-3, 0.1, math.nan), "ic_amplitude"),
        ((1e-3, 0.1), "params must be 3 floats"),
    ],
)
def test_bad_params_raise_naming_the_parameter(params, name):
    with pytest.raises(ValueError, match=name):
        NavierStokesSolver(config=NavierStokesConfig(n=16), params=params)


@pytest.mark.parametrize("seed", [-1, 1.5, "7", [1, -2]])
def test_bad_seed_raises(seed):
    with pytest.raises(ValueError, match="seed"):
        NavierStokesSolver(config=NavierStokesConfig(n=16), params=(1e-3, 0.1, 1.0), seed=seed)


def test_negative_forcing_is_allowed_and_step_checks_its_input_shape():
    solver = NavierStokesSolver(config=NavierStokesConfig(n=16), params=(1e-3, -0.1, 1.0))
    with pytest.raises(ValueError, match="shape"):
        solver.step(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="square"):
        solver.step(np.zeros((16, 8)))


# --- stability at the defaults ------------------------------------------------------------------


@pytest.mark.parametrize(
    "nu, forcing, ic, seed",
    [(NU_MIN, A_MAX, IC_MAX, 0), (NU_MIN, 0.0, IC_MAX, 1), (NU_MIN, A_MAX, IC_MIN, 2), (NU_MAX, A_MAX, IC_MAX, 3)],
)
def test_defaults_stay_finite_bounded_and_well_inside_cfl(nu, forcing, ic, seed):
    solver = NavierStokesSolver(config=NavierStokesConfig(), params=(nu, forcing, ic), seed=seed)
    config = solver.config
    assert (config.n, config.dt, config.substeps, config.n_steps) == (64, 0.05, 10, 50)
    w0_max = np.abs(solver.initial_vorticity()).max()
    n_published = 0
    for k, t, w in solver.steps():
        assert np.all(np.isfinite(w)), k
        # The vorticity is advected, diffused and forced: |w| may grow by at most max|f| t.
        assert np.abs(w).max() <= 1.1 * (w0_max + math.sqrt(2) * forcing * t), k
        ux, uy = velocity(w, config.length)
        cfl = np.abs(ux).max() + np.abs(uy).max()
        assert cfl * config.internal_dt * config.n / config.length < 0.5, k
        n_published += 1
    assert n_published == 50
