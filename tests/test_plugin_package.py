"""examples/plugin: a pip-installable package with a model and a Python problem of its own,
registered by entry points, trains online and offline through the workflow with no file of
datamove/ changed."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, SNAKEMAKE, TINY

PLUGIN = REPO / "examples" / "plugin"


@pytest.fixture
def installed_plugin(tmp_path):
    """The example installed as pip installs a package (its dist-info carries the entry points) into
    a folder of its own, which the environment puts on the Python path: the venv stays as it is
    for the tests beside this one."""
    site = tmp_path / "site"
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation,
                           "--target", str(site), str(PLUGIN)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return env


def test_the_plugins_names_are_listed_as_installed(installed_plugin):
    run = lambda *args: subprocess.run([sys.executable, "-m", "datamove", *args], env=installed_plugin,  # noqa: E731
                                       capture_output=True, text=True, timeout=120, check=True).stdout
    models, problems = run("list", "models"), run("list", "problems")
    assert "resconv      plug-in datamove_plugin_example.models:ResConv: model_args width=16, blocks=2" in models
    assert "advection-diffusion  plug-in datamove_plugin_example.problem:AdvectionDiffusion" in problems
    assert "parameters vx, vy, kappa" in problems


@pytest.mark.slow
def test_a_plugin_model_and_problem_train_online_and_offline_through_the_workflow(installed_plugin, tmp_path):
    cfg = {
        **{k: v for k, v in TINY.items() if k not in ("solver", "trainer")},
        "study": "plugin",
        "results_dir": str(tmp_path / "results"),
        "data_dir": str(tmp_path / "data"),
        "solver": {"name": "advection-diffusion", "n": 12, "n_steps": 15},
        "ensemble": {"n_members": 4, "members_per_job": 2},
        "test": {"n_members": 2},
        "trainer": {**TINY["trainer"], "model": "resconv", "model_args": {"width": 8, "blocks": 1},
                    "sample": "autoregressive"},
        "comparison": {"enabled": True, "offline_members": 2},
    }
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(path), "--cores", "2"],
                          env=installed_plugin, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = tmp_path / "results" / "plugin"
    for arm, members in (("online", 4), ("offline", 2)):
        with open(study / arm / "ledger.csv") as fh:
            ledger = list(csv.DictReader(fh))
        assert [(r["status"], int(r["steps_received"])) for r in ledger] == [("complete", 15)] * members, ledger
        with open(study / arm / "evaluation.csv") as fh:
            errors = list(csv.DictReader(fh))
        assert {int(r["member"]) for r in errors} == {0, 1} and {"vx", "vy", "kappa"} <= set(errors[0])
        assert all(float(r["rel_l2"]) < 10 for r in errors)  # a finite, evaluated surrogate
    summary = (study / "summary.txt").read_text()
    assert "a resconv surrogate of advection-diffusion (12 x 12" in " ".join(summary.split())
    # The member's stream carried the plug-in's name, and the trainer checked it.
    beat = (study / "online" / "logs").rglob("*.log")
    assert any("advection-diffusion" in p.read_text() for p in beat)
