"""The config schema: defaults, and errors that name the key at fault."""

from __future__ import annotations

import pytest
import yaml

from datamove.config import ConfigError, StudyConfig, load_config, validate_config
from conftest import datamove


def test_defaults_fill_every_section():
    cfg = validate_config({})
    assert cfg["stream"]["engine"] == "SST"
    assert cfg["stream"]["parameters"]["QueueFullPolicy"] == "Block"
    assert cfg["solver"]["nx"] >= 3 and cfg["reservoir"]["policy"] == "reservoir"
    assert list(cfg["parameters"]["ranges"]) == ["t_init", "t_x0", "t_xl", "t_y0", "t_yl"]
    study = StudyConfig.from_dict(cfg)
    assert study.problem.config.nx == cfg["solver"]["nx"]
    assert study.stream_dir == study.study_dir / "streams"


def test_shipped_config_is_valid():
    from conftest import REPO

    cfg = load_config(REPO / "config" / "config.yaml")
    assert cfg["study"] == "default"


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"solver": {"nxx": 10}}, "solver.nxx"),
        ({"trainer": {"learning_rate": 1e-3}}, "trainer.learning_rate"),
        ({"egine": "SST"}, "egine"),
    ],
)
def test_unknown_key_is_named(raw, key):
    with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
        validate_config(raw)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"solver": {"nx": 2}}, "solver.nx"),
        ({"solver": {"dt": 0}}, "solver.dt"),
        ({"solver": {"dt": -0.1}}, "solver.dt"),
        ({"solver": {"nx": "ten"}}, "solver.nx"),
        ({"stream": {"engine": "HDF5"}}, "stream.engine"),
        ({"reservoir": {"capacity": 0}}, "reservoir.capacity"),
        ({"parameters": {"ranges": {"t_init": [500, 100]}}}, "parameters.ranges.t_init"),
        ({"parameters": {"ranges": {"t_x0": [1.0]}}}, "parameters.ranges.t_x0"),
        ({"reservoir": {"capacity": 10, "watermark": 20}}, "reservoir.watermark"),
        ({"heldout": {"seed": 7}, "ensemble": {"seed": 7}}, "heldout.seed"),
        ({"trainer": {"ingest_workers": 8, "slots": 4}}, "trainer.slots"),
        ({"trainer": {"ingest_nice": 20}}, "trainer.ingest_nice"),
        ({"stream": {"xml_config": "/nonexistent/adios2.xml"}}, "stream.xml_config"),
    ],
)
def test_bad_value_is_named(raw, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        validate_config(raw)


@pytest.mark.parametrize(
    "body, message",
    [
        ("<adios-config><io name='other'><engine type='SST'/></io></adios-config>", "no <io name=\"datamove\">"),
        ("<adios-config><io name='datamove'><engine type='BP5'/></io></adios-config>", "sets engine 'BP5'"),
        ("<adios-config><io name='datamove'>", "not valid XML"),
    ],
)
def test_adios_xml_is_checked(tmp_path, body, message):
    xml = tmp_path / "adios2.xml"
    xml.write_text(body)
    with pytest.raises(ConfigError, match=f"key 'stream.xml_config'.*{message}"):
        validate_config({"stream": {"xml_config": str(xml)}})


def test_shipped_adios_xml_is_accepted():
    from conftest import REPO

    cfg = validate_config({"stream": {"xml_config": str(REPO / "examples" / "adios2.xml")}})
    assert cfg["stream"]["xml_config"].endswith("adios2.xml")


def test_cli_reports_config_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"solver": {"nx": 2, "typo": 1}}))
    proc = datamove("check-config", "--config", path, check=False)
    assert proc.returncode == 2
    assert "solver.nx" in proc.stderr and "unknown key 'solver.typo'" in proc.stderr
    assert str(path) in proc.stderr


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_reservoir_larger_than_memory_is_refused_before_training(tiny_config):
    """reservoir.capacity: 50,000,000 at 100x100 (about 2 TB) stops the trainer at once with a
    one-line error naming the key and the bytes, not an allocator's traceback."""
    from conftest import datamove

    path = tiny_config(solver={"nx": 100, "ny": 100}, reservoir={"capacity": 50_000_000})
    datamove("make-heldout", "--config", path)
    proc = datamove("train", "--config", path, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "key 'reservoir.capacity': 50000000 samples of [1, 100, 100] float32 need" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_errors_are_one_line(tiny_config, tmp_path):
    from conftest import datamove

    path = tiny_config()
    proc = datamove("simulate", "--config", path, "--member", 999, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "datamove: --member 999 is outside the ensemble [0, 3)"
    proc = datamove("train", "--config", path, check=False)  # no held-out members written
    assert proc.returncode == 3 and "make-heldout" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "model.pt"
    for content in (None, b"not a checkpoint"):
        if content is not None:
            bad.write_bytes(content)
        proc = datamove("evaluate", "--config", path, "--model", bad, "--out", tmp_path / "e.csv", check=False)
        assert proc.returncode == 1 and f"model file {bad}" in proc.stderr and "Traceback" not in proc.stderr
    proc = datamove("--debug", "evaluate", "--config", path, "--model", bad, "--out", tmp_path / "e.csv", check=False)
    assert "Traceback" in proc.stderr


def test_check_config_into_a_closed_pipe_is_quiet(tiny_config):
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m datamove check-config --config {tiny_config()} | head -n 1",
                          shell=True, capture_output=True, text=True, timeout=60)
    assert len(proc.stdout.splitlines()) == 1 and proc.stderr == "", proc.stderr
