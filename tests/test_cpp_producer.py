"""A solver in another language feeds `datamove train` by the stream contract alone.

examples/cpp/producer.cpp is built with g++ against the ADIOS2 C++ library of the pip wheel (no
DATAMOVE library to link) and streams every member of a tiny study to the real trainer; once with its
built-in SST settings, once with examples/adios2.xml read by both the producer and DATAMOVE.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
from pathlib import Path
import sys

import pytest

from conftest import REPO, datamove, popen_datamove
from datamove.config import StudyConfig
from datamove.streaming.adios import make_io

CPP = REPO / "examples" / "cpp"
XML = REPO / "examples" / "adios2.xml"
LOSSLESS = {"RendezvousReaderCount": "1", "QueueLimit": "4", "QueueFullPolicy": "Block", "DataTransport": "WAN"}


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cpp_producer(tmp_path_factory):
    """The C++ producer, built once per module with examples/cpp/build.sh into a temporary folder."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"C++ compiler '{cxx}' not found: cannot build examples/cpp/producer.cpp")
    binary = tmp_path_factory.mktemp("cpp") / "producer"
    # The adios2 package of the interpreter running the tests: the one the trainer uses too.
    env = {**os.environ, "PYTHON": sys.executable}
    build = subprocess.run(["bash", str(CPP / "build.sh"), str(binary)], capture_output=True, text=True,
                           timeout=300, env=env)
    assert build.returncode == 0, f"build failed:\n{build.stdout}\n{build.stderr}"
    assert binary.is_file()
    return binary


def feed_trainer_from_cpp(path, binary, extra_args=()):
    """make-heldout, start the trainer, stream every member with the C++ producer; returns
    (cfg, trainer output, producer outputs)."""
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    trainer = popen_datamove("train", "--config", path, "--threads", 1, log=Path(path).parent / "train.log")
    outputs = []
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        for member in range(cfg.ensemble.n_members):
            args = ["--open-timeout", 60, cfg.stream_dir, member, cfg.problem.config.nx, cfg.problem.config.ny, cfg.problem.n_steps,
                    *extra_args]
            run = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=90)
            assert run.returncode == 0, f"member {member}: rc={run.returncode}\n{run.stdout}\n{run.stderr}"
            outputs.append(run.stdout)
        returncode = trainer.wait(timeout=120)
    finally:
        trainer.kill()
    out = trainer.output
    assert returncode == 0, out
    return cfg, out, outputs


def assert_study_complete(cfg, out):
    ledger = {int(r["member"]): r for r in read_csv(cfg.study_dir / "ledger.csv")}
    assert sorted(ledger) == list(range(cfg.ensemble.n_members)), ledger
    for member, row in ledger.items():
        assert row["status"] == "complete", (member, row, out)
        assert int(row["steps_received"]) == cfg.problem.n_steps, (member, row)
    metrics = read_csv(cfg.study_dir / "metrics.csv")
    assert metrics, "metrics.csv has no row"
    val = [float(r["val_loss"]) for r in metrics]
    assert all(math.isfinite(v) for v in val), val
    assert (cfg.study_dir / "model.pt").is_file()
    assert f"{cfg.ensemble.n_members} members complete, 0 lost" in out, out


@pytest.mark.slow
def test_cpp_producer_feeds_datamove_train(tiny_config, cpp_producer):
    """Built-in SST settings on the C++ side, the config's defaults on the trainer's."""
    cfg, out, outputs = feed_trainer_from_cpp(tiny_config(), cpp_producer)
    assert_study_complete(cfg, out)
    for member, text in enumerate(outputs):
        assert f"member {member} wrote {cfg.problem.n_steps} steps of u [{cfg.problem.config.ny}, {cfg.problem.config.nx}]" in text
        assert "built-in settings" in text


@pytest.mark.slow
def test_one_xml_configures_cpp_producer_and_trainer(tiny_config, cpp_producer):
    """examples/adios2.xml as `stream.xml_config` for DATAMOVE and as the producer's last argument."""
    path = tiny_config(stream={"xml_config": str(XML)})
    cfg = StudyConfig.load(path)
    assert cfg.stream.xml_config == str(XML)
    # DATAMOVE's side reads the engine and the lossless parameters from the file ...
    _, io = make_io(cfg.stream)
    assert io.engine_type().upper() == "SST"
    assert {k: io.parameters().get(k) for k in LOSSLESS} == LOSSLESS
    cfg, out, outputs = feed_trainer_from_cpp(path, cpp_producer, extra_args=[XML])
    assert_study_complete(cfg, out)
    # ... and so does the producer's.
    used = ", ".join(f"{k}={v}" for k, v in sorted(LOSSLESS.items()))
    for text in outputs:
        assert f"engine SST ({used}) from {XML}" in text, text


@pytest.mark.slow
def test_workflow_launches_the_cpp_producer(cpp_producer, tmp_path):
    """The C++ producer declared only in the config (solver.command) is launched by snakemake for
    the training members (SST) and the held-out members (BP5), and the trainer learns from it."""
    from conftest import snakemake, write_study

    path = write_study(
        tmp_path,
        solver={
            "name": "cpp-toy",
            "command": f"{cpp_producer} --out {{stream}} --id {{member}} --engine {{engine}} --params {{params}} "
                       "--steps {n_steps} --param-names {param_names} --solver {solver} --nx 12 --ny 10 "
                       "--open-timeout 60",
            "fields": {"u": [10, 12]},
            "n_steps": 20,
        },
        parameters={"ranges": {"a": [0.0, 1.0], "b": [0.0, 1.0], "c": [0.0, 1.0]}},
    )
    study = StudyConfig.load(path)
    proc = snakemake(tmp_path, path, "--cores", 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ledger = read_csv(study.study_dir / "ledger.csv")
    assert [(r["status"], int(r["steps_received"])) for r in ledger] == [("complete", 20)] * study.ensemble.n_members
    metrics = read_csv(study.study_dir / "metrics.csv")
    assert float(metrics[-1]["val_loss"]) < 0.5 * float(metrics[0]["val_loss"])
    assert len(list(study.heldout_dir.glob("member-*.bp"))) == study.heldout.n_members
