"""`datamove status`: a study's state read from its folder, on running, finished and crashed studies
(real processes, real streams)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from conftest import SNAKEMAKE, datamove, pids_running, popen_datamove
from datamove.config import StudyConfig, write_config
from datamove.run.heartbeat import read_heartbeat


def status(folder, *args, check=True) -> subprocess.CompletedProcess:
    return datamove("status", folder, *args, check=check, timeout=60)


def look(folder) -> dict:
    return json.loads(status(folder, "--json").stdout)


def test_a_folder_that_is_no_study_is_named(tmp_path):
    missing = tmp_path / "results" / "nope"
    proc = status(missing, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"datamove: {missing}: no such study folder (a study's folder is <results_dir>/<study>/)\n"

    results = tmp_path / "results"
    (results / "a").mkdir(parents=True)
    write_config({"study": "b", "results_dir": str(results)}, results / "b" / "config.yaml")
    proc = status(results, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"datamove: {results} is not a study folder: it has no config.yaml")
    assert proc.stderr.rstrip().endswith("studies in it: b") and proc.stderr.count("\n") == 1

    (results / "a" / "config.yaml").write_text("solver: {nx: 1}\n")
    proc = status(results / "a", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"datamove: {results / 'a'} is not a study folder: its config is not a valid")
    assert "key 'solver.nx'" in proc.stderr  # the config's own error, naming the key


def test_a_study_whose_trainer_has_not_started(tiny_config, tmp_path):
    cfg = StudyConfig.load(tiny_config())
    write_config(yaml.safe_load((tmp_path / "config.yaml").read_text()), cfg.study_dir / "config.yaml")
    st = look(cfg.study_dir)
    assert st["state"] == "waiting" and st["trainer"] == "online"
    assert st["members"]["pending"] == 3 and st["members"]["complete"] == 0
    assert st["eta_s"] is None and st["eta_note"].startswith("unknown")
    text = status(cfg.study_dir).stdout
    assert "waiting: no trainer yet" in text and "0 complete" in text and "time left  unknown" in text


def test_heartbeat_carries_counters_and_never_fails_for_them(tmp_path):
    from datamove.training.online import Heartbeat

    path = tmp_path / "trainer.heartbeat.json"
    calls = []

    def counters():
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("a counter failed")
        return {"complete": 2}

    heartbeat = Heartbeat(path, 60.0, status=counters)
    heartbeat._beat()
    assert read_heartbeat(path)["status"] == {"complete": 2}
    heartbeat._beat()  # the counters fail: the beat is written without them
    beat = read_heartbeat(path)
    assert beat["seq"] == 2 and "status" not in beat


def _kill_first_member_to_stream(cfg: StudyConfig, deadline: float) -> int | None:
    """kill -9 the solver of the first member that streams (a few steps in); its number, or None.

    The first, not a fixed member: Snakemake picks the order of the members, and a member that
    happens to run last would leave only its retry for the test to watch.
    """
    while time.monotonic() < deadline:
        streams = sorted(cfg.stream_dir.glob("member-*.sst")) if cfg.stream_dir.exists() else []
        beat = read_heartbeat(cfg.heartbeat_path) or {}
        # A stream the trainer has opened (counted in the member's attempts), not a member still
        # in Open: killed there, it never opened for the trainer, and its rerun would be its first
        # attempt. One solver runs at a time (--cores 2): the stream there is that one.
        if streams and beat.get("status", {}).get("streaming", 0) >= 1:
            member = int(streams[0].name.split("-")[1].split(".")[0])
            time.sleep(0.1)
            pids = pids_running(cfg.study_dir, "datamove simulate", f"--member {member:06d}")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            if pids:
                return member
        time.sleep(0.02)
    return None


@pytest.mark.slow
def test_status_follows_a_running_study_to_its_end(tiny_config, tmp_path):
    path = tiny_config(
        ensemble={"n_members": 3, "retries": 1}, solver={"n_steps": 20, "step_delay_s": 0.08},
    )
    cfg = StudyConfig.load(path)
    log = (tmp_path / "snakemake.log").open("w")
    smk = subprocess.Popen(
        [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(path), "--cores", "2"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    watch = None
    try:
        while not (cfg.study_dir / "config.yaml").exists():
            assert smk.poll() is None, (tmp_path / "snakemake.log").read_text()
            time.sleep(0.1)
        watch = popen_datamove("status", cfg.study_dir, "--watch", "1", log=tmp_path / "watch.log")
        killed = _kill_first_member_to_stream(cfg, time.monotonic() + 120)
        assert killed is not None, "no member streamed"
        looks = []
        while smk.poll() is None:
            looks.append(look(cfg.study_dir))
            time.sleep(0.5)  # a look costs a second of CPU: leave the study the rest
        assert smk.wait() == 0, (tmp_path / "snakemake.log").read_text()
        assert watch.wait(timeout=30) == 0, watch.output  # --watch ends with the study: finished
    finally:
        for proc in (smk, watch.proc if watch else None):
            if proc is not None and proc.poll() is None:
                proc.kill()
    running = [st for st in looks if st["state"] == "running"]
    assert len(running) >= 3, [st["state"] for st in looks]
    # It changes as members finish, and the trainer's heartbeat is fresh all along.
    assert len({st["members"]["complete"] for st in running}) >= 2, [st["members"] for st in running]
    assert all(st["heartbeat_age_s"] < 5 and st["trainer_pid"] for st in running)
    assert all(st["buffer"] is None or st["buffer"] <= cfg.reservoir.capacity for st in running)
    assert any(st["eta_s"] is not None and st["eta_s"] > 0 for st in running), [st["eta_note"] for st in running]

    final = look(cfg.study_dir)
    assert final["state"] == "finished" and final["eta_s"] == 0
    assert final["members"]["complete"] == 3 and final["members"]["lost"] == 0
    assert final["samples_received"] == final["samples_expected"] == 3 * 20
    assert final["val_loss"] is not None and final["batch"] > 0
    # the killed member was rerun: two streams opened
    assert [(n["member"], n["attempts"], n["status"]) for n in final["retried"]] == [(killed, 2, "complete")]
    text = status(cfg.study_dir).stdout
    assert "finished: every stream read and model.pt written" in text
    assert "3 complete" in text and "1 retried" in text and "60 of 60 received" in text
    assert f"member {killed} (complete, 2 attempts)" in text
    watched = watch.output
    assert watched.count("study tiny (online)") >= 2 and "state      running" in watched
    assert watched.rstrip().split("study tiny (online)")[-1].count("finished") >= 1


@pytest.mark.slow
def test_status_of_a_crashed_trainer(tiny_config, tmp_path):
    path = tiny_config(ensemble={"retries": 0}, solver={"step_delay_s": 0.15})  # a member streams for 3 s
    cfg = StudyConfig.load(path)
    write_config(yaml.safe_load(path.read_text()), cfg.study_dir / "config.yaml")
    datamove("make-heldout", "--config", path)
    trainer = popen_datamove("train", "--config", path, log=tmp_path / "train.log")
    solver = None
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        datamove("simulate", "--config", path, "--member", 0, "--wait-trainer", "--marker", cfg.member_marker(0))
        solver = popen_datamove(
            "simulate", "--config", path, "--member", 1, "--wait-trainer", "--marker", cfg.member_marker(1),
            log=tmp_path / "sim1.log",
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            live = (read_heartbeat(cfg.heartbeat_path) or {}).get("status") or {}
            if live.get("streaming") and live.get("samples_received", 0) > 22:
                break
            time.sleep(0.05)
        trainer.kill()  # kill -9 while member 1 streams: heartbeat and lock stay behind
        assert (live.get("complete"), live.get("streaming")) == (1, 1), (live, trainer.output, solver.output)
        st = look(cfg.study_dir)
        assert st["state"] == "stale" and st["eta_s"] is None, st
        assert "not running" in st["detail"] and "is gone" in st["detail"]
        assert solver.wait(timeout=60) != 0  # the solver sees its trainer gone, and says why
    finally:
        trainer.kill()
        if solver is not None:
            solver.kill()
    st = look(cfg.study_dir)
    assert st["state"] == "stale"
    m = st["members"]
    assert (m["complete"], m["lost"], m["pending"]) == (1, 1, 1), m
    assert [n["member"] for n in st["lost"]] == [1] and "trainer" in st["lost"][0]["reason"]
    text = status(cfg.study_dir).stdout
    assert "stale: the trainer is not running: its heartbeat is stale" in text
    assert "time left  unknown" in text and "member 1 (1 attempt): " in text
    watch = status(cfg.study_dir, "--watch", "0.2", check=False)
    assert watch.returncode == 1 and "stale" in watch.stdout  # --watch ends at once: the study will not finish

    # Seen from another node, whose processes it cannot check: the beat's age tells.
    lock = json.loads(cfg.lock_path.read_text())
    cfg.lock_path.write_text(json.dumps({**lock, "host": "another-node"}))
    a_minute_ago = time.time() - 60
    os.utime(cfg.heartbeat_path, (a_minute_ago, a_minute_ago))
    st = look(cfg.study_dir)
    assert st["state"] == "stale" and st["trainer_host"] == "another-node"
    assert "no beat for" in st["detail"] and "taken as gone after 10 s" in st["detail"], st["detail"]
