"""Knobs for studies that span nodes: the gate's patience, heartbeats judged without shared clocks,
and ADIOS2 parameters that keep the lossless defaults."""

from __future__ import annotations

import time

import pytest

from conftest import datamove
from datamove.config import ConfigError, StudyConfig, validate_config


def test_gate_timeout_is_a_config_key(tiny_config):
    assert validate_config({})["gate"]["timeout_s"] == 600  # the former hard-coded value
    path = tiny_config(gate={"timeout_s": 0.5})
    assert StudyConfig.load(path).gate.timeout_s == 0.5
    t0 = time.monotonic()
    proc = datamove("wait-trainer", "--config", path, check=False)  # no trainer: the gate gives up
    assert proc.returncode == 1
    assert "within 0.5 s (gate.timeout_s" in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 30  # the interpreter's start-up, not 600 s
    proc = datamove("wait-trainer", "--config", path, "--timeout", 0.2, check=False)  # the command line wins
    assert proc.returncode == 1 and "within 0.2 s (--timeout" in proc.stderr, proc.stderr
    with pytest.raises(ConfigError, match="unknown key 'gate.timeout'"):
        validate_config({"gate": {"timeout": 60}})
    with pytest.raises(ConfigError, match="key 'gate.timeout_s'"):
        validate_config({"gate": {"timeout_s": 0}})
