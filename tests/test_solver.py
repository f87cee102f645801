"""Heat solver exactness, symmetries and steady state; parameter samplers' reproducibility."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse.linalg as spla

from datamove.config import StudyConfig, validate_config
from datamove.problems import PROBLEMS, HeatProblem, make_problem
from datamove.sampling.samplers import SAMPLERS, ensemble_params, member_params
from datamove.solvers import HeatConfig, HeatSolver, heat_matrix, heat_rhs

WALLS = (300.0, 100.0, 500.0, 200.0, 400.0)  # t_init, t_x0, t_xl, t_y0, t_yl


def advance(solver: HeatSolver, u: np.ndarray, n: int) -> np.ndarray:
    """``n`` implicit Euler steps of ``solver`` from an arbitrary field ``u`` [ny, nx]."""
    for _ in range(n):
        u = solver.step(u)
    return u


def final_field(config: HeatConfig, params) -> np.ndarray:
    """Last float32 field [ny, nx] that ``HeatSolver.steps`` yields."""
    *_, (_, _, u) = HeatSolver(config=config, params=params).steps()
    return u


# --- exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("p, q", [(1, 1), (2, 5), (4, 3)])
def test_single_sine_mode_decays_by_exact_discrete_factor(p, q):
    config = HeatConfig(nx=9, ny=6, lx=2.0, ly=1.5, diffusivity=0.7, dt=0.02)
    y = np.arange(1, config.ny + 1)[:, None]
    x = np.arange(1, config.nx + 1)[None, :]
    mode = np.sin(np.pi * p * y / (config.ny + 1)) * np.sin(np.pi * q * x / (config.nx + 1))
    lam_y = -(4 / config.hy**2) * np.sin(p * np.pi / (2 * (config.ny + 1))) ** 2
    lam_x = -(4 / config.hx**2) * np.sin(q * np.pi / (2 * (config.nx + 1))) ** 2
    growth = 1.0 / (1.0 - config.dt * config.diffusivity * (lam_x + lam_y))

    solver = HeatSolver(config=config, params=[0.0] * 5)
    k = 7
    np.testing.assert_allclose(advance(solver, mode, k), growth**k * mode, rtol=0, atol=1e-14)


def test_step_matches_sparse_direct_solve_on_non_square_grid():
    config = HeatConfig(nx=13, ny=8, lx=3.0, ly=1.0, diffusivity=1.3, dt=0.05)
    solver = HeatSolver(config=config, params=WALLS)
    matrix = heat_matrix(config)
    assert matrix.shape == (config.nx * config.ny,) * 2
    # A non-uniform field, so every stencil entry and wall term matters.
    u = np.random.default_rng(0).uniform(100.0, 500.0, size=(config.ny, config.nx))
    for _ in range(3):
        expected = spla.spsolve(matrix.tocsc(), heat_rhs(config, u, WALLS).ravel())
        u_next = solver.step(u)
        np.testing.assert_allclose(u_next.ravel(), expected, rtol=1e-10, atol=0)
        u = u_next


def test_heat_matrix_is_symmetric_with_unit_row_sums_away_from_walls():
    config = HeatConfig(nx=5, ny=4)
    matrix = heat_matrix(config).toarray()
    np.testing.assert_allclose(matrix, matrix.T, rtol=0, atol=0)
    # An interior node far from walls: its stencil sums to 1 (a constant is kept by I - dt D L).
    row = matrix[2 * config.nx + 2]
    assert row.sum() == pytest.approx(1.0, abs=1e-12)


def test_steps_yields_float32_fields_at_each_time():
    config = HeatConfig(nx=6, ny=4, dt=0.1, n_steps=5)
    solver = HeatSolver(config=config, params=WALLS)
    out = list(solver.steps())
    assert [k for k, _, _ in out] == [1, 2, 3, 4, 5]
    assert [t for _, t, _ in out] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert all(u.dtype == np.float32 and u.shape == (config.ny, config.nx) for _, _, u in out)
    # The float64 state is what is stepped; float32 is only the published copy.
    expected = advance(solver, solver.initial_field(), config.n_steps)
    np.testing.assert_array_equal(out[-1][2], expected.astype(np.float32))


def test_constants_are_the_config_values():
    config = HeatConfig(nx=6, ny=4, lx=2, ly=3.0, diffusivity=0.5, dt=0.1, n_steps=5)
    constants = HeatSolver(config=config, params=WALLS).constants()
    assert constants == dict(nx=6, ny=4, lx=2.0, ly=3.0, diffusivity=0.5, dt=0.1, n_steps=5)
    assert isinstance(constants["lx"], float)


# --- symmetries ---------------------------------------------------------------------------------


def test_swapping_x_walls_mirrors_field_in_x():
    config = HeatConfig(nx=11, ny=7, lx=4.0, ly=2.0, dt=0.05, n_steps=10)
    t_init, t_x0, t_xl, t_y0, t_yl = WALLS
    u = final_field(config, WALLS)
    mirrored = final_field(config, (t_init, t_xl, t_x0, t_y0, t_yl))
    np.testing.assert_allclose(mirrored, u[:, ::-1], rtol=1e-6)


def test_swapping_x_and_y_walls_transposes_field_on_square_grid():
    config = HeatConfig(nx=9, ny=9, lx=2.0, ly=2.0, dt=0.05, n_steps=10)
    t_init, t_x0, t_xl, t_y0, t_yl = WALLS
    u = final_field(config, WALLS)
    transposed = final_field(config, (t_init, t_y0, t_yl, t_x0, t_xl))
    np.testing.assert_allclose(transposed, u.T, rtol=1e-6)


# --- steady state -------------------------------------------------------------------------------


def test_long_run_tends_to_discrete_harmonic_field():
    # Slowest mode shrinks by ~1/(1 + dt D 2 pi^2) ~ 0.5 a step: 200 steps is far past convergence.
    config = HeatConfig(nx=9, ny=7, lx=1.0, ly=1.0, dt=0.05, n_steps=200)
    matrix = heat_matrix(config)
    # Steady state of (I - dt D L) u = u + dt D b is -dt D L u = dt D b: (matrix - I) u = rhs(u=0).
    boundary = heat_rhs(config, np.zeros((config.ny, config.nx)), WALLS).ravel()
    identity = np.eye(matrix.shape[0])
    harmonic = np.linalg.solve(matrix.toarray() - identity, boundary).reshape(config.ny, config.nx)

    u = final_field(config, WALLS)
    np.testing.assert_allclose(u, harmonic, rtol=1e-6)
    # A harmonic field obeys the maximum principle: it lies between the coldest and hottest wall.
    assert 100.0 < u.min() and u.max() < 500.0
    # Orientation: columns are x (x=Lx at 500 is hotter than x=0 at 100), rows are y (400 vs 200).
    assert u[:, -1].mean() > u[:, 0].mean() + 100.0
    assert u[-1, :].mean() > u[0, :].mean() + 50.0


def test_uniform_temperature_equal_to_walls_stays_exactly():
    config = HeatConfig(nx=8, ny=5, dt=0.3, n_steps=20)
    temperature = 321.5
    solver = HeatSolver(config=config, params=[temperature] * 5)
    for _, _, u in solver.steps():
        np.testing.assert_array_equal(u, np.float32(temperature))
    np.testing.assert_allclose(advance(solver, solver.initial_field(), 5), temperature, rtol=1e-13)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("nx", 2),
        ("ny", 0),
        ("nx", 4.0),
        ("lx", 0.0),
        ("ly", -1.0),
        ("diffusivity", 0.0),
        ("dt", -0.01),
        ("dt", float("nan")),
        ("n_steps", 0),
    ],
)
def test_config_validation_names_the_field(field, value):
    kwargs = dict(nx=5, ny=5)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        HeatConfig(**kwargs)


def test_config_is_frozen_and_keyword_only():
    config = HeatConfig(nx=5, ny=5)
    # Walls are nodes 0 and n+1, so n interior nodes split L into n+1 intervals.
    assert config.hx == pytest.approx(10.0 / 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.nx = 6
    with pytest.raises(TypeError):
        HeatConfig(5, 5)


@pytest.mark.parametrize("params", [[1.0] * 4, [1.0] * 6, [1.0, 2.0, np.nan, 3.0, 4.0], [1.0, np.inf, 0, 0, 0]])
def test_solver_rejects_bad_params(params):
    with pytest.raises(ValueError, match="params"):
        HeatSolver(config=HeatConfig(nx=5, ny=5), params=params)


def test_solver_registry():
    """``solver.name: heat`` picks the heat problem, whose members are HeatSolver's steps; an unknown
    name is refused, naming the known ones."""
    assert PROBLEMS["heat"] is HeatProblem
    cfg = StudyConfig.from_dict(validate_config({"solver": {"name": "heat", "nx": 6, "ny": 5, "n_steps": 3}}))
    assert type(cfg.problem) is HeatProblem
    params = cfg.ensemble.params(0)
    steps = list(cfg.problem.solver(params=params, seed=cfg.ensemble.seed_of(0)).steps())
    direct = list(HeatSolver(config=cfg.problem.config, params=params).steps())
    assert [(k, t) for k, t, _ in steps] == [(k, t) for k, t, _ in direct]
    for (_, _, fields), (_, _, u) in zip(steps, direct):
        np.testing.assert_array_equal(fields["u"], u)
    with pytest.raises(ValueError, match="heat"):
        make_problem({"name": "wave", "command": None}, {})


# --- sampling -----------------------------------------------------------------------------------

RANGES = [(100.0, 500.0), (0.0, 1.0), (-3.0, -2.0), (7.0, 7.0), (10.0, 20.0)]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_member_params_are_deterministic_and_in_range(sampler):
    kwargs = dict(ranges=RANGES, sampler=sampler, seed=42, n_members=16)
    for member in (0, 5, 15):
        first = member_params(member=member, **kwargs)
        np.testing.assert_array_equal(first, member_params(member=member, **kwargs))
        assert first.dtype == np.float64 and first.shape == (len(RANGES),)
    everyone = ensemble_params(**kwargs)
    assert everyone.shape == (16, len(RANGES))
    low, high = np.array(RANGES).T
    assert np.all(everyone >= low) and np.all(everyone <= high)
    assert np.all(everyone[:, 3] == 7.0)
    # Drawing one member alone or with its ensemble gives the same parameters.
    for member in range(16):
        np.testing.assert_array_equal(everyone[member], member_params(member=member, **kwargs))
    # Members differ from each other and the seed matters.
    assert len(np.unique(everyone[:, 0])) == 16
    assert not np.array_equal(everyone, ensemble_params(**{**kwargs, "seed": 43}))


@pytest.mark.parametrize("sampler", ["uniform", "halton"])
def test_sequential_samplers_do_not_depend_on_ensemble_size(sampler):
    small = ensemble_params(ranges=RANGES, sampler=sampler, seed=3, n_members=5)
    large = ensemble_params(ranges=RANGES, sampler=sampler, seed=3, n_members=50)
    np.testing.assert_array_equal(small, large[:5])
    np.testing.assert_array_equal(
        member_params(ranges=RANGES, sampler=sampler, seed=3, member=4, n_members=5),
        member_params(ranges=RANGES, sampler=sampler, seed=3, member=4, n_members=1000),
    )


@pytest.mark.parametrize("n_members", [1, 7, 32])
def test_lhs_hits_every_stratum_once_per_dimension(n_members):
    ranges = [(0.0, 1.0), (100.0, 500.0), (-5.0, 5.0)]
    design = ensemble_params(ranges=ranges, sampler="lhs", seed=11, n_members=n_members)
    low, high = np.array(ranges).T
    strata = np.floor((design - low) / (high - low) * n_members).astype(int)
    for dim in range(len(ranges)):
        assert sorted(strata[:, dim]) == list(range(n_members))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="sobol"), "sampler"),
        (dict(member=-1), "member"),
        (dict(member=4), "member"),
        (dict(ranges=[(0.0, 1.0), (2.0, 1.0)]), "low > high"),
        (dict(ranges=[0.0, 1.0]), "ranges"),
        (dict(n_members=0), "n_members"),
    ],
)
def test_sampling_errors_name_the_problem(kwargs, message):
    base = dict(ranges=[(0.0, 1.0), (1.0, 2.0)], sampler="uniform", seed=0, member=0, n_members=4)
    with pytest.raises(ValueError, match=message):
        member_params(**{**base, **kwargs})
