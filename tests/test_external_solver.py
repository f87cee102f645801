"""The user's own solver, declared only in the config (`solver.command`) and launched by the workflow.

examples/producer.py in its launcher mode stands for a solver written outside the project: it writes
the stream contract with plain ADIOS2, two fields per step, for any parameter names. The workflow
runs it for the training members (SST, streamed to the trainer) and for the held-out and test
members (BP5), exactly as it runs the built-in solvers. The C++ producer's run through the workflow
is in tests/test_cpp_producer.py.
"""

from __future__ import annotations

import csv
import sys
import time

import numpy as np
import pytest

from conftest import REPO, snakemake, write_study
from datamove.config import ConfigError, StudyConfig, validate_config
from datamove.problems import ExternalProblem

PRODUCER = REPO / "examples" / "producer.py"
COMMAND = (
    f"{sys.executable} {PRODUCER} --out {{stream}} --id {{member}} --engine {{engine}} --params {{params}} "
    "--steps {n_steps} --param-names {param_names} --solver {solver} --fields u,v --nx 12 --ny 10"
)


def external(command: str = COMMAND, **solver) -> dict:
    """A tiny study of the external solver, with the conftest's TINY sizes for the rest."""
    return {
        "solver": {"name": "my-solver", "command": command, "fields": {"u": [10, 12], "v": [10, 12]},
                   "n_steps": 20, **solver},
        "parameters": {"ranges": {"alpha": [0.1, 1.0], "beta": [0.0, 5.0]}},
    }


def study_of(tmp_path, command: str = COMMAND, **overrides):
    """The conftest's tiny study with the external solver in place of the heat solver."""
    return write_study(tmp_path, **external(command), **overrides)


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_external_solver_config_and_command_line():
    cfg = StudyConfig.from_dict(validate_config(external()))
    problem = cfg.problem
    assert isinstance(problem, ExternalProblem) and problem.name == "my-solver"
    assert problem.param_names == ("alpha", "beta") and problem.sample_shape == (2, 10, 12)
    argv = problem.command_line(stream="/s/member-000003", member=3, engine="bp5", params=[0.1, 1 / 3])
    assert argv[argv.index("--out") + 1] == "/s/member-000003" and argv[argv.index("--engine") + 1] == "BP5"
    assert [float(v) for v in argv[argv.index("--params") + 1].split(",")] == [0.1, 1 / 3]  # every digit
    assert argv[argv.index("--param-names") + 1] == "alpha,beta"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"command": "my_solver --out {stream} {nope}"}, r"unknown placeholder \{nope\}"),
        ({"command": "my_solver --id {member}"}, r"must take \{stream\}"),
        ({"fields": {"u": [10, 12], "v": [10, 11]}}, "every field must have one shape"),
        ({"fields": {}}, "key 'solver.fields'"),
        ({"nx": 12}, "unknown key 'solver.nx'"),
    ],
)
def test_bad_external_solver_configs_name_the_key(change, message):
    raw = external()
    raw["solver"].update(change)
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def test_external_solver_needs_its_parameters():
    raw = external()
    del raw["parameters"]
    with pytest.raises(ConfigError, match="parameters.ranges"):
        validate_config(raw)


@pytest.mark.slow
def test_workflow_launches_the_users_solver(tmp_path):
    """snakemake --cores 2 runs the command for training (SST), held-out and test members (BP5);
    the trainer learns both fields."""
    path = study_of(tmp_path, ensemble={"n_members": 3}, test={"n_members": 2}, evaluation={"enabled": True})
    cfg = StudyConfig.load(path)
    proc = snakemake(tmp_path, path, "--cores", 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ledger = read_csv(cfg.study_dir / "ledger.csv")
    assert [(r["status"], int(r["steps_received"])) for r in ledger] == [("complete", 20)] * 3
    metrics = read_csv(cfg.study_dir / "metrics.csv")
    assert float(metrics[-1]["val_loss"]) < 0.5 * float(metrics[0]["val_loss"])
    # Held-out and test members were written by the same command with BP5.
    assert len(list(cfg.heldout_dir.glob("member-*.bp"))) == 2 and len(list(cfg.test_dir.glob("member-*.bp"))) == 2
    errors = read_csv(cfg.study_dir / "evaluation.csv")
    assert {"mse:u", "mse:v", "alpha", "beta"} <= set(errors[0])
    assert np.isfinite([float(r["rel_l2"]) for r in errors]).all()
    log = (cfg.study_dir / "logs" / "simulate_member" / "member-000001.log").read_text()
    assert "solver command" in log and "--engine SST" in log


WRAPPER = """\
import os, sys
args = sys.argv[1:]
member, engine = int(args[args.index("--id") + 1]), args[args.index("--engine") + 1]
if engine == "SST" and member == 1:
    args += ["--break", "exit"]            # closes its stream after 2 steps, exits with status 3
if engine == "SST" and member == 2:
    args[args.index("--fields") + 1] = "u"  # writes u only, the config declares u and v
os.execv(sys.executable, [sys.executable, {producer!r}, *args])
"""


@pytest.mark.slow
def test_broken_commands_end_their_member_lost_with_a_reason(tmp_path):
    """A command that exits non-zero, and one that writes the wrong fields, end their member lost
    with a reason that names the exit status or the field; the other members train; nothing waits
    for stream.member_timeout_s."""
    wrapper = tmp_path / "my_solver.py"
    wrapper.write_text(WRAPPER.format(producer=str(PRODUCER)))
    command = COMMAND.replace(str(PRODUCER), str(wrapper))
    path = study_of(tmp_path, command, ensemble={"n_members": 4, "retries": 1},
                       stream={"member_timeout_s": 300, "open_timeout_s": 60})
    cfg = StudyConfig.load(path)
    t0 = time.monotonic()
    proc = snakemake(tmp_path, path, "--cores", 2, "--keep-going")
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0  # member 1's job failed twice (ensemble.retries: 1)
    ledger = {int(r["member"]): r for r in read_csv(cfg.study_dir / "ledger.csv")}
    assert [ledger[m]["status"] for m in (0, 3)] == ["complete", "complete"]
    assert ledger[1]["status"] == "lost" and "exited with status 3" in ledger[1]["reason"], ledger[1]
    assert "my_solver.py" in ledger[1]["reason"] and int(ledger[1]["attempts"]) == 2
    assert ledger[2]["status"] == "lost" and "no variable 'v'" in ledger[2]["reason"], ledger[2]
    assert int(ledger[2]["attempts"]) == 1  # a contract violation is not retried: a rerun writes the same
    assert elapsed < cfg.stream.member_timeout_s / 2, elapsed
    assert (cfg.study_dir / "model.pt").exists()
