"""The stream contract through BP5 and through SST between real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, datamove, popen_datamove, read_member
from datamove.config import StudyConfig
from datamove.solvers import HeatSolver
from datamove.streaming.contract import ContractError, StreamError, contact_file, stream_path
from datamove.streaming.contract import Expectation
from datamove.streaming.reader import MemberReader, Poll

PRODUCER = REPO / "examples" / "producer.py"
CONSUMER = REPO / "examples" / "consumer.py"


def _expect(cfg: StudyConfig) -> Expectation:
    return Expectation.of(cfg.problem)


def _read_all(reader: MemberReader, timeout_s: float = 60.0):
    """Poll a reader to the end: (times, fields). Raises StreamError if the stream fails."""
    times, fields = [], []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = reader.poll(timeout=0.0)
        if status is Poll.END:
            return np.array(times), np.array(fields)
        if status is Poll.NOT_READY:
            time.sleep(0.005)
            continue
        out = np.empty(reader.expect.sample_shape, dtype=np.float32)
        times.append(reader.read_step(out))
        fields.append(out)
        reader.end_step()
    raise AssertionError("stream did not end in time")


def _wait_for(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def test_bp5_round_trip_matches_the_solver(tiny_config):
    cfg = StudyConfig.load(tiny_config(stream={"engine": "BP5"}))
    datamove("simulate", "--config", tiny_config(stream={"engine": "BP5"}), "--member", 1)
    path = stream_path(cfg.stream_dir, 1, "BP5")
    info, times, fields = read_member(cfg, path, 1)
    fields = fields[:, 0]  # the heat problem's one field, u
    solver = HeatSolver(config=cfg.problem.config, params=cfg.ensemble.params(1))
    expected = np.stack([u for _, _, u in solver.steps()])
    assert info.member == 1 and info.solver == "heat"
    assert info.param_names == cfg.ensemble.names
    np.testing.assert_array_equal(info.params, cfg.ensemble.params(1))
    np.testing.assert_allclose(times, np.arange(1, cfg.problem.n_steps + 1) * cfg.problem.config.dt)
    assert fields.dtype == np.float32 and fields.shape == (cfg.problem.n_steps, cfg.problem.config.ny, cfg.problem.config.nx)
    np.testing.assert_array_equal(fields, expected)
    assert info.constants["nx"] == cfg.problem.config.nx and info.constants["dt"] == cfg.problem.config.dt


def test_sst_between_two_processes(tiny_config):
    path = tiny_config()
    cfg = StudyConfig.load(path)
    proc = popen_datamove("simulate", "--config", path, "--member", 2, log=path.parent / "sim.log")
    try:
        _wait_for(contact_file(cfg.stream_dir, 2))
        with MemberReader(stream=cfg.stream, stream_dir=cfg.stream_dir, member=2, expect=_expect(cfg)) as r:
            times, fields = _read_all(r)
        assert proc.wait(timeout=60) == 0, proc.output
    finally:
        proc.kill()
    fields = fields[:, 0]
    solver = HeatSolver(config=cfg.problem.config, params=cfg.ensemble.params(2))
    np.testing.assert_array_equal(fields, np.stack([u for _, _, u in solver.steps()]))
    assert len(times) == cfg.problem.n_steps
    np.testing.assert_array_equal(r.info.params, cfg.ensemble.params(2))
    # The writer removes its contact file when it closes: nothing is left behind.
    assert not contact_file(cfg.stream_dir, 2).exists()


def test_external_consumer_reads_a_member_by_the_contract(tiny_config):
    """A plain-ADIOS2 program, outside the package, reads what `datamove simulate` sends."""
    path = tiny_config()
    cfg = StudyConfig.load(path)
    sim = popen_datamove("simulate", "--config", path, "--member", 0, log=path.parent / "sim.log")
    try:
        _wait_for(contact_file(cfg.stream_dir, 0))
        out = subprocess.run(
            [sys.executable, CONSUMER, "--stream", stream_path(cfg.stream_dir, 0, "SST")],
            capture_output=True, text=True, timeout=60,
        )
        assert sim.wait(timeout=60) == 0
    finally:
        sim.kill()
    assert out.returncode == 0, out.stderr
    assert f"{cfg.problem.n_steps} steps" in out.stdout
    assert "attribute param_names = t_init,t_x0,t_xl,t_y0,t_yl" in out.stdout
    assert f"u float32 [{cfg.problem.config.ny}, {cfg.problem.config.nx}]" in out.stdout


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no-params", r"missing attribute\(s\) \['params'\]"),
        ("shape", r"'u' has shape \[11, 12\], expected \[10, 12\]"),
        ("dtype", r"'u' has type double, expected float"),
    ],
)
def test_contract_violations_name_the_member(tiny_config, breakage, message):
    cfg = StudyConfig.load(tiny_config(stream={"engine": "BP5"}))
    args = ["--stream-dir", cfg.stream_dir, "--member", 4, "--engine", "BP5",
            "--nx", cfg.problem.config.nx, "--ny", cfg.problem.config.ny, "--steps", 5, "--break", breakage]
    subprocess.run([sys.executable, PRODUCER, *map(str, args)], check=True, timeout=60)
    path = stream_path(cfg.stream_dir, 4, "BP5")
    with pytest.raises(ContractError, match=message) as err:
        with MemberReader(stream=cfg.stream, stream_dir=cfg.stream_dir, member=4, expect=_expect(cfg), path=path) as r:
            _read_all(r)
    assert "member 4 (member-000004)" in str(err.value)


def test_ingest_fast_path_checks_every_step(tiny_config):
    """The ingest reads with poll(check=False) + read_step: a shape that changes mid-stream is still
    refused (a wrong-sized field must never be copied into a hand-off slot), naming the step."""
    cfg = StudyConfig.load(tiny_config(stream={"engine": "BP5"}))
    args = ["--stream-dir", cfg.stream_dir, "--member", 4, "--engine", "BP5",
            "--nx", cfg.problem.config.nx, "--ny", cfg.problem.config.ny, "--steps", 5, "--break", "shape-later"]
    subprocess.run([sys.executable, PRODUCER, *map(str, args)], check=True, timeout=60)
    path = stream_path(cfg.stream_dir, 4, "BP5")
    out = np.zeros((1, cfg.problem.config.ny, cfg.problem.config.nx), dtype=np.float32)
    times = []
    with MemberReader(stream=cfg.stream, stream_dir=cfg.stream_dir, member=4, expect=_expect(cfg), path=path) as r:
        with pytest.raises(ContractError, match=r"member 4 .*step 3: 'u' has shape \[11, 12\], expected \[10, 12\]"):
            while r.poll(timeout=-1.0, check=False) is Poll.STEP:
                times.append(r.read_step(out))
                r.end_step()
    assert times == pytest.approx([0.01, 0.02])  # the producer's default --dt
    assert np.isfinite(out).all() and out.min() > 0


def test_missing_and_truncated_files_name_the_file(tiny_config, tmp_path):
    cfg = StudyConfig.load(tiny_config(stream={"engine": "BP5"}))
    missing = tmp_path / "member-000009.bp"
    with pytest.raises(StreamError, match="file not found.*member-000009.bp"):
        read_member(cfg, missing, 9)


def test_writer_without_trainer_fails_clearly(tiny_config):
    """SST writers wait in Open forever; the watchdog ends the member with a clear message."""
    path = tiny_config(stream={"open_timeout_s": 2})
    t0 = time.monotonic()
    proc = datamove("simulate", "--config", path, "--member", 0, check=False, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert "no trainer connected to stream" in proc.stderr and "stream.open_timeout_s" in proc.stderr
    assert "member 0" in proc.stderr
    assert elapsed < 30


def test_writer_removes_a_stale_contact_file(tiny_config):
    path = tiny_config()
    cfg = StudyConfig.load(path)
    cfg.stream_dir.mkdir(parents=True)
    stale = contact_file(cfg.stream_dir, 1)
    stale.write_text("left by a writer killed with kill -9\n")
    proc = popen_datamove("simulate", "--config", path, "--member", 1, log=path.parent / "sim.log")
    try:
        deadline = time.monotonic() + 30
        while "left by a writer" in (stale.read_text() if stale.exists() else "left by a writer"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with MemberReader(stream=cfg.stream, stream_dir=cfg.stream_dir, member=1, expect=_expect(cfg)) as r:
            times, _ = _read_all(r)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert len(times) == cfg.problem.n_steps
    assert "removing stale contact file" in proc.output


def test_killed_writer_is_an_error_not_a_hang(tiny_config):
    path = tiny_config(solver={"step_delay_s": 0.05, "n_steps": 200})
    cfg = StudyConfig.load(path)
    proc = popen_datamove("simulate", "--config", path, "--member", 0, log=path.parent / "sim.log")
    try:
        _wait_for(contact_file(cfg.stream_dir, 0))
        with MemberReader(stream=cfg.stream, stream_dir=cfg.stream_dir, member=0, expect=_expect(cfg)) as r:
            while r.steps_read < 3:
                if r.poll(timeout=0.0) is Poll.STEP:  # never a positive timeout: ADIOS2 #1862
                    r.read_step(np.empty(r.expect.sample_shape, dtype=np.float32))
                    r.end_step()
                else:
                    time.sleep(0.005)
            proc.kill()
            t0 = time.monotonic()
            with pytest.raises(StreamError, match="member 0"):
                _read_all(r, timeout_s=30)
            assert time.monotonic() - t0 < 10
    finally:
        proc.kill()
    # The solver's watchdog process does not outlive it.
    deadline = time.monotonic() + 10
    while _processes_with(str(path)):
        assert time.monotonic() < deadline, f"left behind: {_processes_with(str(path))}"
        time.sleep(0.1)


def _processes_with(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(pid))
        except OSError:
            pass
    return found
