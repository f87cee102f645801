"""The problem registry: what each problem declares, and a Navier-Stokes study through the workflow."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import yaml
from conftest import REPO, snakemake, write_study
from datamove.config import ConfigError, StudyConfig, load_schema, merge_config, validate_config
from datamove.problems import PROBLEMS, HeatProblem, NavierStokesProblem, make_problem


def study(**raw) -> StudyConfig:
    return StudyConfig.from_dict(validate_config(raw))


@pytest.mark.parametrize("name, ranges", [("heat", "heat_ranges"), ("navier-stokes", "navier_stokes_ranges")])
def test_schema_and_problem_declare_the_same_parameters(name, ranges):
    """The schema holds the defaults; the problem module the order: they must not drift apart."""
    schema_names = tuple(load_schema()["$defs"][ranges]["properties"])
    assert schema_names == PROBLEMS[name].PARAM_NAMES
    cfg = study(solver={"name": name})
    assert cfg.problem.param_names == schema_names and type(cfg.problem) is PROBLEMS[name]


def test_heat_keeps_its_config_and_its_scales():
    cfg = study(solver={"nx": 8, "ny": 6, "dt": 0.02, "n_steps": 10},
                parameters={"ranges": {"t_init": [0.0, 50.0]}})
    p = cfg.problem
    assert isinstance(p, HeatProblem) and p.fields == {"u": (6, 8)} and p.sample_shape == (1, 6, 8)
    assert p.param_ranges[0] == (0.0, 50.0) and p.param_ranges[1] == (100.0, 500.0)  # defaults kept
    # The maximum principle: any held-out data give the same scales.
    norm = p.normalisation(times=np.ones(3), fields=np.full((3, 1, 6, 8), 1e6))
    assert norm.y_low == (0.0,) and norm.y_high == (500.0,)
    assert norm.x_low[-1] == 0.0 and norm.x_high[-1] == pytest.approx(0.2)


def test_other_problems_scale_each_field_by_the_heldout_members():
    cfg = study(solver={"name": "navier-stokes", "n": 8, "outputs": ["w", "ux"], "n_steps": 4})
    p = cfg.problem
    fields = np.zeros((5, 2, 8, 8))
    fields[:, 0] = np.linspace(-3, 2, 5)[:, None, None]
    fields[:, 1] = 7.0
    norm = p.normalisation(times=np.array([0.05, 0.1, 0.15, 0.2, 0.1]), fields=fields)
    assert norm.y_low == (-3.0, 7.0) and norm.y_high == (2.0, 7.0)
    assert norm.x_high[-1] == 0.2 and norm.x_low[:3] == (0.001, 0.0, 0.5)


def test_navier_stokes_members_give_the_declared_fields():
    cfg = study(solver={"name": "navier-stokes", "n": 16, "outputs": ["w", "ux", "uy"], "n_steps": 3, "substeps": 2})
    p = cfg.problem
    assert isinstance(p, NavierStokesProblem) and p.sample_shape == (3, 16, 16)
    params = cfg.ensemble.params(0)
    steps = list(p.solver(params=params, seed=cfg.ensemble.seed_of(0)).steps())
    assert [k for k, _, _ in steps] == [1, 2, 3]
    for _, _, fields in steps:
        assert list(fields) == ["w", "ux", "uy"]
        assert all(f.shape == (16, 16) and f.dtype == np.float32 for f in fields.values())
    # Another member, another random initial field; the same member, the same one.
    again = list(p.solver(params=params, seed=cfg.ensemble.seed_of(0)).steps())
    other = list(p.solver(params=params, seed=cfg.ensemble.seed_of(1)).steps())
    np.testing.assert_array_equal(again[-1][2]["w"], steps[-1][2]["w"])
    assert not np.allclose(other[-1][2]["w"], steps[-1][2]["w"])


def test_constants_that_differ_are_named():
    p = study(solver={"nx": 8, "ny": 6}).problem
    assert p.check_constants({"nx": 8, "dt": 0.02, "n_steps": 7}) == ["dt = 0.02 (config: solver.dt = 0.01)"]


def test_unknown_problem_and_wrong_names_are_refused():
    with pytest.raises(ConfigError, match="key 'solver.name'"):
        validate_config({"solver": {"name": "wave"}})
    with pytest.raises(ConfigError, match="unknown key 'parameters.ranges.t_init'"):
        validate_config({"solver": {"name": "navier-stokes"}, "parameters": {"ranges": {"t_init": [0, 1]}}})
    with pytest.raises(ConfigError, match="viscosity must be > 0"):
        validate_config({"solver": {"name": "navier-stokes"}, "parameters": {"ranges": {"viscosity": [0, 1]}}})
    with pytest.raises(ConfigError, match="evaluation.map_field"):
        validate_config({"evaluation": {"map_field": "w"}})
    with pytest.raises(ValueError, match="key 'solver.name': 'wave' is not a built-in or installed name .heat, navier-stokes.*solver.command"):
        make_problem({"name": "wave", "command": None}, {})


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def with_default_config(tmp_path):
    """The repository's layout: the Snakefile's configfile, config/config.yaml (the heat study),
    under the working directory, so that Snakemake loads it beneath the study's --configfile."""
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")


def test_a_configfile_of_another_problem_replaces_the_heat_solver_section(tmp_path):
    heat = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    ns = yaml.safe_load((REPO / "config" / "navier-stokes.yaml").read_text())
    merged = merge_config(heat, ns)
    assert merged["solver"] == ns["solver"] and merged["parameters"]["ranges"] == ns["parameters"]["ranges"]
    assert merged["reservoir"] == {**heat["reservoir"], **ns.get("reservoir", {})}  # the rest merges
    same = merge_config(heat, {"solver": {"nx": 16}, "trainer": {"model": "fno"}})
    assert same["solver"] == {**heat["solver"], "nx": 16} and same["trainer"]["model_args"] == {}
    own = {"solver": {"name": "mine", "command": "./mine {stream}", "fields": {"u": [4, 4]}, "n_steps": 3},
           "parameters": {"ranges": {"alpha": [0.0, 1.0]}}}
    assert merge_config({**heat, "parameters": {"ranges": {"t_init": [0, 1]}}}, own)["parameters"]["ranges"] == \
        {"alpha": [0.0, 1.0]}
    # Through Snakemake, in the repository's layout: the shipped navier-stokes study and a user's
    # solver plan (they were refused: heat's solver.nx and solver.ny merged into theirs).
    # And as a comparison study, whose arms are modules of the same workflow with their own config.
    with_default_config(tmp_path)
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(own, sort_keys=False))
    (tmp_path / "ns-comparison.yaml").write_text(yaml.safe_dump({**ns, "comparison": {"enabled": True}}, sort_keys=False))
    for config in (REPO / "config" / "navier-stokes.yaml", tmp_path / "mine.yaml", tmp_path / "ns-comparison.yaml"):
        proc = snakemake(tmp_path, config, "-n", "--config", f"results_dir={tmp_path / 'results'}",
                         f"data_dir={tmp_path / 'data'}", timeout=180)
        assert proc.returncode == 0, (config, proc.stdout[-3000:] + proc.stderr[-3000:])


@pytest.mark.slow
def test_navier_stokes_study_with_three_fields(tmp_path):
    """snakemake --cores 2 on a tiny Navier-Stokes study publishing w, ux and uy, in the
    repository's layout (config/config.yaml, heat, beneath it): every member complete, the model
    evaluated on the test members, each field's error reported."""
    with_default_config(tmp_path)
    path = write_study(
        tmp_path, solver={"name": "navier-stokes", "n": 16, "n_steps": 10, "substeps": 4, "outputs": ["w", "ux", "uy"]},
        test={"n_members": 2}, evaluation={"enabled": True, "map_field": "ux"},
    )
    s = StudyConfig.load(path)
    proc = snakemake(tmp_path, path, "--cores", 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ledger = read_csv(s.study_dir / "ledger.csv")
    assert [(r["status"], int(r["steps_received"])) for r in ledger] == [("complete", 10)] * 3
    errors = read_csv(s.study_dir / "evaluation.csv")
    assert len(errors) == 2 * 10 and {"mse:w", "mse:ux", "mse:uy", "viscosity"} <= set(errors[0])
    maps = read_csv(s.study_dir / "maps.csv")
    assert {r["field"] for r in maps} == {"ux"}
    assert (s.study_dir / "figures" / "error_maps.png").stat().st_size > 0
