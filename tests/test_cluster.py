"""Knobs for studies that span nodes: the gate's patience, heartbeats judged without shared clocks,
and ADIOS2 parameters that keep the lossless defaults."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import datamove
from datamove.config import ConfigError, StudyConfig, validate_config
from datamove.run.gate import wait_for_trainer
from datamove.run.heartbeat import HeartbeatWatch, TrainerLostError, read_heartbeat
from datamove.run.receipts import await_receipt, write_receipt


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


class _SkewedTrainer:
    """Beats like a trainer on a node whose clock is ``skew_s`` off: the time stamps are useless here."""

    def __init__(self, path: Path, *, skew_s: float, period: float = 0.05):
        self.path, self.skew_s, self.period = path, skew_s, period
        self.seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def beat(self, **extra) -> None:
        self.seq += 1
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"pid": 4242, "seq": self.seq, "time": time.time() + self.skew_s, **extra}))
        tmp.replace(self.path)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.beat()

    def __enter__(self):
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("skew_s", [-3600.0, 3600.0])
def test_heartbeat_is_judged_by_its_sequence_not_the_clocks(tiny_config, skew_s):
    cfg = StudyConfig.load(tiny_config(trainer={"heartbeat_s": 0.05}))
    cfg.heartbeat_path.parent.mkdir(parents=True)
    with _SkewedTrainer(cfg.heartbeat_path, skew_s=skew_s) as trainer:
        beat = wait_for_trainer(cfg, timeout=5)  # an hour off either way: alive, since it advances
        assert beat is not None and beat["pid"] == 4242
        write_receipt(cfg, 0, steps=3, checkpointed=True)
        assert await_receipt(cfg, pid=4242, member=0)["steps"] == 3
    # It died: the file stays, its time stamp near (or ahead of) this clock, its number frozen.
    watch = HeartbeatWatch(cfg.heartbeat_path, stale_s=0.3)
    assert watch.poll() is None  # one look proves nothing
    assert wait_for_trainer(cfg, timeout=0.5) is None
    trainer.beat()  # ... until it beats again
    assert watch.poll() is not None
    time.sleep(0.4)
    assert watch.poll() is None  # not again within stale_s, by this process's own clock
    trainer.beat(finished=True)  # the final beat: streams all read, not ready for more
    assert watch.poll() is None
    assert await_receipt(cfg, pid=4242, member=0)  # ... the receipt it left is still good
    t0 = time.monotonic()
    with pytest.raises(TrainerLostError, match="member 1: the trainer \\(pid 4242\\) has finished"):
        await_receipt(cfg, pid=4242, member=1)  # finished without member 1's steps: at once
    assert time.monotonic() - t0 < 2
    with pytest.raises(TrainerLostError, match="has finished"):  # a member's wait for the gate's trainer
        wait_for_trainer(cfg, timeout=60, expected_pid=4242)
    assert time.monotonic() - t0 < 12  # a grace of 5 s for a successor to take the lock, not 60


def test_trainer_heartbeat_numbers_its_beats(tmp_path):
    from datamove.training.online import Heartbeat

    path = tmp_path / "trainer.heartbeat.json"
    watch = HeartbeatWatch(path, stale_s=1.0)
    assert watch.poll() is None and read_heartbeat(path) is None
    heartbeat = Heartbeat(path, 0.05)
    heartbeat.start()
    deadline = time.monotonic() + 5
    while watch.poll() is None:  # the file appeared, then advanced
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first = read_heartbeat(path)
    time.sleep(0.2)
    later = read_heartbeat(path)
    assert first["pid"] == later["pid"] == os.getpid() and later["seq"] > first["seq"] >= 1
    heartbeat.stop(finished=True)
    final = read_heartbeat(path)
    assert final["finished"] and final["seq"] > later["seq"]
    assert watch.poll() is None  # finished: no gate opens on it
    heartbeat = Heartbeat(path, 0.05)
    heartbeat.start()
    heartbeat.stop(finished=False, reason="interrupted by SIGTERM at batch 7")  # says why it stopped
    assert read_heartbeat(path)["stopped"] == "interrupted by SIGTERM at batch 7"
    assert watch.poll() is None  # no gate opens on it either


@pytest.mark.slow
def test_a_frozen_heartbeat_does_not_confirm_a_member(tiny_config):
    cfg = StudyConfig.load(tiny_config())
    cfg.heartbeat_path.parent.mkdir(parents=True)
    # A trainer that died, on a node whose clock runs ahead: its last stamp is "newer" than now.
    with _SkewedTrainer(cfg.heartbeat_path, skew_s=3600.0):
        pass
    t0 = time.monotonic()
    with pytest.raises(TrainerLostError, match="member 3: the trainer \\(pid 4242\\) is not running"):
        await_receipt(cfg, pid=4242, member=3)
    assert 10 <= time.monotonic() - t0 < 20  # it waited for a late beat first (lost_after), no longer
    t0 = time.monotonic()
    with pytest.raises(TrainerLostError, match="pid 4242 trains the study now"):  # another trainer's beat
        await_receipt(cfg, pid=1, member=3)
    assert time.monotonic() - t0 < 2  # ours has gone: no need to wait
    t0 = time.monotonic()
    with pytest.raises(TrainerLostError, match="is not running: its heartbeat has not advanced"):
        wait_for_trainer(cfg, timeout=600, expected_pid=4242)  # a member queued behind a dead trainer
    assert time.monotonic() - t0 < 10  # stale_after, not the open timeout


def test_stream_parameters_merge_over_the_lossless_defaults(tiny_config):
    defaults = validate_config({})["stream"]["parameters"]
    assert defaults["QueueFullPolicy"] == "Block"
    cfg = validate_config({"stream": {"parameters": {"DataTransport": "WAN"}}})
    assert cfg["stream"]["parameters"] == defaults  # nothing dropped
    cfg = validate_config({"stream": {"parameters": {"NetworkInterface": "ib0", "QueueLimit": "8"}}})
    assert cfg["stream"]["parameters"] == {**defaults, "NetworkInterface": "ib0", "QueueLimit": "8"}
    assert validate_config(cfg) == cfg  # the filled config, validated again (the workflow does), is unchanged
    with pytest.raises(ConfigError, match="key 'stream.parameters.QueueLimit'"):
        validate_config({"stream": {"parameters": {"QueueLimit": 8}}})  # ADIOS2 takes strings

    # The study's config as the trainer and the solvers read it, and as check-config prints it.
    path = tiny_config(stream={"parameters": {"DataTransport": "WAN"}})
    params = StudyConfig.load(path).stream.parameters
    assert params["QueueFullPolicy"] == "Block" and params["RendezvousReaderCount"] == "1"
    printed = yaml.safe_load(datamove("check-config", "--config", path).stdout)
    assert printed["stream"]["parameters"]["QueueFullPolicy"] == "Block"


def test_the_workflows_gate_fails_at_once_on_a_trainer_that_could_not_start(tiny_config, tmp_path):
    """The gate of a workflow (--this-run: the workflow removed an earlier run's last beat when it
    started) reads a `stopped` last beat as its own trainer's and fails at once with its reason; a
    manual wait (no --this-run) keeps waiting for a new trainer; a live beat is left alone."""
    from datamove.run.heartbeat import clear_final_beat

    path = tiny_config(gate={"timeout_s": 120})
    cfg = StudyConfig.load(path)
    cfg.heartbeat_path.parent.mkdir(parents=True)
    stopped = {"pid": 99, "seq": 1, "time": 0.0, "stopped": "could not start: RuntimeError: checkpoint x is damaged"}
    cfg.heartbeat_path.write_text(json.dumps(stopped))
    t0 = time.monotonic()
    with pytest.raises(TrainerLostError, match=r"the trainer \(pid 99\) has stopped \(could not start: .*damaged\)"):
        wait_for_trainer(cfg, timeout=120, this_run=True)
    assert time.monotonic() - t0 < 2
    assert wait_for_trainer(cfg, timeout=0.5) is None  # a manual wait: an old last beat proves nothing
    proc = datamove("wait-trainer", "--config", path, "--this-run", check=False)
    assert proc.returncode == 1 and "[gate] error: the trainer (pid 99) has stopped (could not start" in proc.stderr
    finished = {"pid": 98, "seq": 7, "time": 0.0, "finished": True}
    cfg.heartbeat_path.write_text(json.dumps(finished))
    assert wait_for_trainer(cfg, timeout=5, this_run=True)["pid"] == 98  # its members check their receipts
    clear_final_beat(cfg)  # the workflow's start: an earlier run's last beat goes ...
    assert not cfg.heartbeat_path.exists()
    live = {"pid": 97, "seq": 3, "time": 0.0}
    cfg.heartbeat_path.write_text(json.dumps(live))
    clear_final_beat(cfg)  # ... a live trainer's beat stays
    assert read_heartbeat(cfg.heartbeat_path) == live
