"""The fault matrix of docs/faults.md, with real processes: an interrupt of Snakemake alone, a
trainer stopped or killed, a member killed after its last step, a full disk, two runs of one study.

Each test asserts that the ledger agrees with the members' markers (a marker only for a member
whose steps the trainer holds), that nothing is lost silently, that the study ends (or fails) in a
time far below the open timeout, and that a rerun finishes it with every member complete.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import SNAKEMAKE, datamove, pids_running, popen_datamove, snakemake
from datamove.config import StudyConfig
from datamove.run.heartbeat import read_heartbeat
from datamove.streaming.contract import contact_file
from test_faults import _wait
from test_workflow import read_ledger

# Long enough that a study which waited on one would blow every bound below.
OPEN_TIMEOUT_S = 300


def _study(tiny_config, name="config.yaml", n_members=4, n_steps=30, delay=0.04, **over):
    return tiny_config(
        name,
        ensemble={"n_members": n_members, "retries": 1},
        solver={"n_steps": n_steps, "step_delay_s": delay},
        trainer={"checkpoint_every": 20, "heartbeat_s": 0.2},
        stream={"open_timeout_s": OPEN_TIMEOUT_S, "member_timeout_s": OPEN_TIMEOUT_S},
        **over,
    )


def _checkpoint_ledger(cfg) -> dict[int, dict]:
    return {r["member"]: r for r in torch.load(cfg.checkpoint_path, weights_only=False)["ledger"]}


def _assert_markers_agree(cfg, ledger: dict) -> None:
    """A member has a marker only if the trainer holds all its steps (complete, with a receipt)."""
    for member in range(cfg.ensemble.n_members):
        rec = ledger[member]
        if cfg.member_marker(member).exists():
            assert rec["status"] == "complete", (member, rec)
            assert int(rec["steps_received"]) == cfg.problem.n_steps, (member, rec)
            assert cfg.member_receipt(member).exists(), member


def _assert_finished(cfg) -> None:
    """The rerun's end: every member complete, each step counted once, every marker there."""
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    for member, rec in ledger.items():
        assert rec["status"] == "complete", rec
        assert int(rec["steps_received"]) == cfg.problem.n_steps, rec  # duplicates are counted apart
        assert cfg.member_marker(member).exists()
    assert (cfg.study_dir / "model.pt").exists()
    assert not cfg.checkpoint_path.exists() and not cfg.lock_path.exists()
    assert not list(cfg.study_dir.rglob("*.tmp"))


def _when(predicate, action, timeout=180.0) -> threading.Thread:
    """Run ``action()`` once ``predicate()`` holds (in a thread, while a workflow runs)."""

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                action()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _popen_snakemake(workdir: Path, config: Path, *args, log: Path, **kw) -> subprocess.Popen:
    fh = log.open("w")
    return subprocess.Popen(
        [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(config), *map(str, args)],
        stdout=fh, stderr=subprocess.STDOUT, **kw,
    )


def _interrupt_once_a_member_is_held(tmp_path, path, cfg, *, settled: bool = False) -> float:
    """Run the study (log: first.log) and, once a member is held (its marker), kill -INT
    Snakemake's pid only (not its process group); the seconds Snakemake took to exit after it.

    ``settled``: also wait until Snakemake has seen a member's job finish. A marker written by a job
    Snakemake has not yet seen finish is that job's output, which an interrupt removes as incomplete
    (seen once in CI: no marker left after the interrupt)."""
    log = tmp_path / "first.log"
    proc = _popen_snakemake(tmp_path, path, "--cores", 2, log=log)
    try:
        n = cfg.ensemble.n_members
        _wait(lambda: any(cfg.member_marker(m).exists() for m in range(n)), 180, "a member's marker")
        if settled:
            _wait(lambda: "(Rule: simulate_member" in log.read_text(), 180, "a member's job seen finished")
        os.kill(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        proc.wait(timeout=60)
        return time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigterm_stops_the_trainer_cleanly_and_a_rerun_resumes(tiny_config, tmp_path):
    path = _study(tiny_config, n_members=2)
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    trainer = popen_datamove("train", "--config", path, log=tmp_path / "train.log")
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        first = datamove("simulate", "--config", path, "--member", 0, "--wait-trainer",
                         "--marker", cfg.member_marker(0), timeout=120)
        assert "steps sent" in first.stderr
        # A second run of a member the trainer holds: answered at once, nothing sent twice.
        t0 = time.monotonic()
        again = datamove("simulate", "--config", path, "--member", 0, "--wait-trainer", timeout=120)
        assert time.monotonic() - t0 < 20, "a rerun of a held member waited"
        assert "the trainer already holds its 30 steps" in again.stderr
        t0 = time.monotonic()
        trainer.proc.send_signal(signal.SIGTERM)
        assert trainer.wait(timeout=30) == 128 + signal.SIGTERM, trainer.output
    finally:
        trainer.kill()
    assert "interrupted by SIGTERM" in trainer.output and "checkpoint" in trainer.output
    assert cfg.checkpoint_path.exists() and not (cfg.study_dir / "model.pt").exists()
    assert not cfg.lock_path.exists()
    assert "interrupted by SIGTERM" in read_heartbeat(cfg.heartbeat_path)["stopped"]
    _assert_markers_agree(cfg, _checkpoint_ledger(cfg))
    # A member started now fails at once: the gate's trainer says it stopped.
    gate = tmp_path / "gate.json"
    gate.write_text('{"pid": %d, "seq": 1}' % trainer.proc.pid)
    t0 = time.monotonic()
    late = datamove("simulate", "--config", path, "--member", 1, "--wait-trainer", "--gate", gate, check=False)
    assert late.returncode == 1 and "has stopped (interrupted by SIGTERM" in late.stderr, late.stderr
    assert time.monotonic() - t0 < 20

    resumed = popen_datamove("train", "--config", path, log=tmp_path / "resumed.log")
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        datamove("simulate", "--config", path, "--member", 1, "--wait-trainer",
                 "--marker", cfg.member_marker(1), timeout=120)
        assert resumed.wait(timeout=120) == 0, resumed.output
    finally:
        resumed.kill()
    assert f"resumed from {cfg.checkpoint_path}" in resumed.output
    _assert_finished(cfg)


@pytest.mark.slow
def test_interrupting_snakemake_alone_reaches_the_trainer(tiny_config, tmp_path):
    path = _study(tiny_config, n_members=6)
    cfg = StudyConfig.load(path)
    assert _interrupt_once_a_member_is_held(tmp_path, path, cfg) < 30, "Snakemake waited on its jobs"
    log = (tmp_path / "first.log").read_text()
    assert not pids_running(cfg.study_dir, "datamove"), "a datamove process outlived the interrupt"
    train_log = (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
    assert "interrupted by SIGTERM" in train_log, train_log + log
    assert cfg.checkpoint_path.exists() and not (cfg.study_dir / "model.pt").exists()
    assert not cfg.lock_path.exists()
    ledger = _checkpoint_ledger(cfg)
    _assert_markers_agree(cfg, ledger)
    assert not any(r["status"] == "lost" for r in ledger.values()), ledger  # nobody timed out
    held = {m: cfg.member_marker(m).stat().st_mtime_ns for m in ledger if cfg.member_marker(m).exists()}

    second = snakemake(tmp_path, path, "--cores", 2, "--rerun-incomplete")
    assert second.returncode == 0, second.stdout + second.stderr
    train_log = (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
    assert f"resumed from {cfg.checkpoint_path}" in train_log
    _assert_finished(cfg)
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    for member, mtime in held.items():  # the members it held were not sent again
        if cfg.member_marker(member).stat().st_mtime_ns != mtime:
            # Its job was stopped between its marker and its exit: rerun, it had nothing to send.
            log = (cfg.study_dir / "logs" / "simulate_member" / f"member-{member:06d}.log").read_text()
            assert "nothing to send" in log, log
        assert int(ledger[member]["attempts"]) == 1 and int(ledger[member]["steps_duplicate"]) == 0


@pytest.mark.slow
def test_killed_trainer_fails_its_members_within_seconds(tiny_config, tmp_path):
    path = _study(tiny_config, n_members=6)
    cfg = StudyConfig.load(path)
    killed: list[float] = []

    def kill_trainer():
        for pid in pids_running(cfg.study_dir, "datamove train"):
            os.kill(pid, signal.SIGKILL)
        killed.append(time.monotonic())

    def one_held_one_streaming():  # Snakemake runs the members in any order
        held = any(cfg.member_receipt(m).exists() for m in range(cfg.ensemble.n_members))
        return held and cfg.stream_dir.exists() and any(cfg.stream_dir.glob("*.sst"))

    watcher = _when(one_held_one_streaming, kill_trainer)
    first = snakemake(tmp_path, path, "--cores", 2, "--keep-going")
    watcher.join()
    assert killed, "the trainer was never killed"
    assert first.returncode != 0
    # Every running or queued member (and its retry) failed fast: not an open timeout in sight.
    assert time.monotonic() - killed[0] < 90, "members waited on a dead trainer"
    logs = "".join(p.read_text() for p in (cfg.study_dir / "logs" / "simulate_member").glob("*.log"))
    assert "the trainer (pid" in logs and "is not running" in logs, logs
    _assert_markers_agree(cfg, _checkpoint_ledger(cfg))

    second = snakemake(tmp_path, path, "--cores", 2)
    assert second.returncode == 0, second.stdout + second.stderr
    _assert_finished(cfg)


@pytest.mark.slow
def test_member_killed_after_its_last_step_is_answered_at_once(tiny_config, tmp_path):
    path = _study(tiny_config, n_members=3)
    cfg = StudyConfig.load(path)
    killed: list[int] = []

    def kill_member_1_after_its_stream():
        # Its writer closed the stream (the contact file went away): all steps sent, no marker yet.
        deadline, seen = time.monotonic() + 180, False
        while time.monotonic() < deadline:
            if contact_file(cfg.stream_dir, 1).exists():
                seen = True
            elif seen and not cfg.member_marker(1).exists():
                for pid in pids_running(cfg.study_dir, "datamove simulate", "--member 000001"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=kill_member_1_after_its_stream, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    proc = snakemake(tmp_path, path, "--cores", 2)  # retries: 1, so Snakemake reruns member 1
    watcher.join()
    assert killed, "member 1 was never killed"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 120
    log = (cfg.study_dir / "logs" / "simulate_member" / "member-000001.log").read_text()
    assert "nothing to send" in log or "held by the trainer already" in log, log
    _assert_finished(cfg)


def _finished_trainer(cfg, tmp_path, pid=999_999):
    """Stage a trainer that opened the gate and has finished: its final heartbeat and the gate file
    naming it (a real trainer's, without running one); its pid and the gate's path. The receipts'
    folder is made too, for the test's own receipts."""
    import json

    cfg.heartbeat_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.heartbeat_path.write_text(json.dumps({"pid": pid, "seq": 9, "time": time.time(), "finished": True}))
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps({"pid": pid}))
    cfg.member_receipt(0).parent.mkdir(parents=True, exist_ok=True)
    return pid, gate


def test_rerun_after_the_trainer_finished_holding_the_member_sends_nothing(tiny_config, tmp_path):
    """The race the test above can lose: member 1's rerun waits for the trainer, which holds its
    steps (its receipt) and then finishes. Nothing is lost, so the rerun succeeds without sending;
    a member the trainer does not hold still fails at once, naming the finished trainer."""
    import json

    path = _study(tiny_config, n_members=3)
    cfg = StudyConfig.load(path)
    pid, gate = _finished_trainer(cfg, tmp_path)
    cfg.member_receipt(1).write_text(json.dumps({"member": 1, "status": "complete", "steps": 30, "trainer_pid": pid}))
    marker = tmp_path / "member-1.json"
    ok = datamove("simulate", "--config", path, "--member", 1, "--wait-trainer", "--gate", gate, "--marker", marker,
                  check=False, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "nothing to send" in ok.stderr and json.loads(marker.read_text())["already_held"]
    lost = datamove("simulate", "--config", path, "--member", 2, "--wait-trainer", "--gate", gate, check=False,
                    timeout=60)
    assert lost.returncode != 0 and f"the trainer (pid {pid}) has finished" in lost.stderr, lost.stderr


def test_job_rerun_after_the_trainer_finished_holding_all_its_members_sends_nothing(tiny_config, tmp_path):
    """The same race for a job of several members (ensemble.members_per_job): its rerun succeeds
    without sending only if the finished trainer holds every one of them."""
    import json

    path = tiny_config(ensemble={"n_members": 4, "retries": 1, "members_per_job": 2},
                       stream={"open_timeout_s": OPEN_TIMEOUT_S, "member_timeout_s": OPEN_TIMEOUT_S})
    cfg = StudyConfig.load(path)
    pid, gate = _finished_trainer(cfg, tmp_path)
    for member in (0, 1, 2):  # job 0 (members 0, 1) held whole; job 1 (2, 3) only in part
        cfg.member_receipt(member).write_text(
            json.dumps({"member": member, "status": "complete", "steps": cfg.problem.n_steps, "trainer_pid": pid}))
    marker = tmp_path / "job-0.json"
    ok = datamove("simulate", "--config", path, "--job", 0, "--wait-trainer", "--gate", gate, "--marker", marker,
                  check=False, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.count("nothing to send") == 2
    assert [m["already_held"] for m in json.loads(marker.read_text())["members"]] == [True, True]
    assert all(cfg.member_marker(member).exists() for member in (0, 1))
    part = datamove("simulate", "--config", path, "--job", 1, "--wait-trainer", "--gate", gate, check=False,
                    timeout=60)
    assert part.returncode != 0 and f"the trainer (pid {pid}) has finished" in part.stderr, part.stderr
    assert not cfg.member_marker(2).exists() and not cfg.member_marker(3).exists()


def _file_size_limit(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_full_disk_stops_the_study_with_a_clear_error(tiny_config, tmp_path):
    # A reservoir whose checkpoint (~1 MB) exceeds the file-size limit; every other file stays under it.
    path = _study(tiny_config, n_members=4, reservoir={"capacity": 2000, "watermark": 10})
    cfg = StudyConfig.load(path)
    t0 = time.monotonic()
    proc = subprocess.run(
        [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(path), "--cores", "2"],
        capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(400_000),
    )
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 120, "the study went on after its trainer failed"
    train_log = (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
    assert f"datamove: cannot write {cfg.checkpoint_path}: file too large" in train_log, train_log
    assert "Traceback" not in train_log
    assert not list(cfg.study_dir.rglob("*.tmp")), "a temporary file was left"
    assert not cfg.checkpoint_path.exists()
    beat = read_heartbeat(cfg.heartbeat_path)
    assert beat is not None and "cannot write" in beat["stopped"]
    for member in range(cfg.ensemble.n_members):  # no checkpoint held any member: no marker either
        assert not cfg.member_marker(member).exists()

    # --rerun-incomplete: Snakemake may have stopped before it marked the failed trainer's outputs.
    second = snakemake(tmp_path, path, "--cores", 2, "--rerun-incomplete")
    assert second.returncode == 0, second.stdout + second.stderr
    _assert_finished(cfg)


@pytest.mark.slow
def test_second_run_of_a_live_study_is_refused(tiny_config, tmp_path):
    path = _study(tiny_config, n_members=4)
    cfg = StudyConfig.load(path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # another clone's working directory: Snakemake's own lock does not see the first
    first = _popen_snakemake(tmp_path / "a", path, "--cores", 2, log=tmp_path / "a.log")
    try:
        _wait(lambda: cfg.lock_path.exists() and (cfg.study_dir / "metrics.csv").exists(), 120, "the trainer")
        second = snakemake(tmp_path / "b", path, "--cores", 2, timeout=120)
        assert second.returncode != 0
        assert f"study 'tiny' ({cfg.study_dir}) is in use" in second.stdout + second.stderr
        assert (cfg.study_dir / "metrics.csv").exists()  # nothing of the live run was deleted
        assert first.wait(timeout=240) == 0, (tmp_path / "a.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
    _assert_finished(cfg)


def _gate_of_a_study_that_fails_at_once(tmp_path, path, cfg) -> str:
    """Run the study, whose trainer cannot start: Snakemake fails in seconds, not after the gate's
    timeout (600 s by default); the gate's log."""
    t0 = time.monotonic()
    proc = snakemake(tmp_path, path, "--cores", 2, timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert elapsed < 120, f"the study waited {elapsed:.0f} s on a trainer that could not start"
    return (cfg.study_dir / "logs" / "open_gate" / "open_gate.log").read_text()


@pytest.mark.slow
def test_a_trainer_that_cannot_start_fails_the_gate_within_seconds(tiny_config, tmp_path):
    """A damaged checkpoint: the trainer stops before its first beat, naming the file; its last beat
    says why and the gate (gate.timeout_s 600 by default) fails at once, so Snakemake ends in
    seconds. No member streamed, none has a marker."""
    path = _study(tiny_config, n_members=3)
    cfg = StudyConfig.load(path)
    cfg.study_dir.mkdir(parents=True)
    cfg.checkpoint_path.write_bytes(b"PK\x03\x04 not a whole checkpoint")  # a truncated zip
    cfg.heartbeat_path.write_text('{"pid": 1, "seq": 5, "time": 0, "stopped": "an earlier run"}')
    gate_log = _gate_of_a_study_that_fails_at_once(tmp_path, path, cfg)
    train_log = (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
    assert f"checkpoint {cfg.checkpoint_path} cannot be read, it is damaged" in train_log, train_log
    assert "[gate] error: the trainer (pid" in gate_log and "could not start: CheckpointDamaged: checkpoint" in gate_log, gate_log
    assert "an earlier run" not in gate_log  # the workflow removed that run's last beat before its own
    assert not any(cfg.member_marker(m).exists() for m in range(3))


@pytest.mark.slow
def test_held_out_members_that_cannot_be_made_fail_the_gate_within_seconds(tmp_path):
    """A solver command that does not exist: the held-out members, which the trainer needs, fail;
    the gate learns it from the last beat make-heldout writes for the trainer and fails at once."""
    from conftest import write_study

    path = write_study(tmp_path, solver={"name": "my-solver", "command": "./no_such_solver --out {stream}",
                                         "fields": {"u": [10, 12]}, "n_steps": 20},
                       parameters={"ranges": {"alpha": [0.1, 1.0]}})
    gate_log = _gate_of_a_study_that_fails_at_once(tmp_path, path, StudyConfig.load(path))
    assert "could not start" not in gate_log and "cannot start: its held-out members could not be made" in gate_log, gate_log
    assert "no_such_solver" in gate_log, gate_log


@pytest.mark.slow
def test_members_waiting_in_the_queue_are_not_lost_when_a_streaming_one_is(tiny_config, tmp_path):
    """With --cores 2 the trainer and one solver run, and the other members wait in Snakemake's
    queue. The streaming member is frozen past stream.member_timeout_s: it is lost (and retried),
    but the members in the queue stay pending, however long the freeze (before: `lost: never
    connected`, and a rerun failed on `the trainer has finished`). The study completes in one run."""
    timeout_s = 4
    path = tiny_config(
        ensemble={"n_members": 4, "retries": 1},
        solver={"n_steps": 30, "step_delay_s": 0.1},
        trainer={"checkpoint_every": 20, "heartbeat_s": 0.2},
        stream={"open_timeout_s": OPEN_TIMEOUT_S, "member_timeout_s": timeout_s},
    )
    cfg = StudyConfig.load(path)
    frozen = {}

    def streaming():
        # Steps flowing (a member frozen in Open, before its first step, is another fault: see
        # docs/faults.md), from a member that has 20 of its 30 steps still to send.
        beat = read_heartbeat(cfg.heartbeat_path) or {}
        if not 3 <= beat.get("status", {}).get("samples_received", 0) <= 10:
            return []
        return [m for m in range(4) if contact_file(cfg.stream_dir, m).exists()
                and pids_running(cfg.study_dir, "datamove simulate", f"--member {m:06d}")]

    def freeze():
        found = streaming()
        if not found:
            return  # it ended between the two looks
        member = found[0]
        pids = pids_running(cfg.study_dir, "datamove simulate", f"--member {member:06d}")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        frozen[member] = pids
        time.sleep(3 * timeout_s)  # the members in the queue would have been timed out thrice
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    watcher = _when(lambda: bool(streaming()), freeze)
    proc = snakemake(tmp_path, path, "--cores", 2, timeout=400)
    watcher.join(timeout=60)
    assert frozen, "no member was seen streaming"
    (member,) = frozen
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    train_log = (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
    assert f"member {member} lost after" in train_log and f"no step for {timeout_s}" in train_log, train_log
    assert "never connected" not in train_log and "not started" not in train_log, train_log
    _assert_finished(cfg)
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert int(ledger[member]["attempts"]) == 2
    assert all(int(ledger[m]["attempts"]) == 1 for m in range(4) if m != member), ledger


SILENT_SOLVER = """\
import os, sys
args = sys.argv[1:]
member, engine = int(args[args.index("--id") + 1]), args[args.index("--engine") + 1]
broken = os.path.exists({flag!r})
if broken and engine == "SST" and member in {silent}:
    sys.exit(0)                            # exits 0 without opening its stream
if broken and engine == "SST" and member in {short}:
    args[args.index("--steps") + 1] = "5"  # opens it, writes 5 of its steps, exits 0
os.execv(sys.executable, [sys.executable, {producer!r}, *args])
"""


def _silent_solver_study(tmp_path, *, silent=(), short=(), n_members=4, retries=1):
    from test_external_solver import COMMAND, PRODUCER, study_of

    flag = tmp_path / "broken"
    flag.touch()
    wrapper = tmp_path / "my_solver.py"
    wrapper.write_text(SILENT_SOLVER.format(flag=str(flag), silent=set(silent) or "()", short=set(short) or "()",
                                            producer=str(PRODUCER)))
    path = study_of(tmp_path, COMMAND.replace(str(PRODUCER), str(wrapper)),
                    ensemble={"n_members": n_members, "retries": retries},
                    stream={"member_timeout_s": OPEN_TIMEOUT_S, "open_timeout_s": OPEN_TIMEOUT_S})
    return path, flag


@pytest.mark.slow
def test_a_solver_command_that_exits_0_without_its_steps_fails_its_job_at_once(tmp_path):
    """A solver command that exits 0 without opening its stream, and one that exits 0 after 5 of
    its 20 steps: each job fails within seconds (not after the stream timeouts, 300 s), naming the
    command, its exit status and what it did not do, and is retried like any failed solver. The
    trainer finishes with them lost, resumable: once the solver is fixed, the same command, rerun,
    finishes the study."""
    path, flag = _silent_solver_study(tmp_path, silent={1}, short={2})
    cfg = StudyConfig.load(path)
    t0 = time.monotonic()
    first = snakemake(tmp_path, path, "--cores", 2, "--keep-going")
    assert time.monotonic() - t0 < 150, "a job waited on a stream that never came"
    assert first.returncode != 0
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert [ledger[m]["status"] for m in (0, 3)] == ["complete", "complete"], ledger
    log = (cfg.study_dir / "logs" / "simulate_member" / "member-000001.log").read_text()
    assert "my_solver.py" in log and "exited with status 0 without opening its stream" in log, log
    assert ledger[1]["status"] == "lost" and "without opening its stream" in ledger[1]["reason"], ledger[1]
    log = (cfg.study_dir / "logs" / "simulate_member" / "member-000002.log").read_text()
    assert "my_solver.py" in log and "exited with status 0, but its stream did not bring solver.n_steps = 20" in log, log
    assert ledger[2]["status"] == "lost" and int(ledger[2]["attempts"]) == 2, ledger[2]  # retried once
    assert cfg.resume_path.exists() and cfg.checkpoint_path.exists()

    flag.unlink()  # the solver is fixed
    second = snakemake(tmp_path, path, "--cores", 2)
    assert second.returncode == 0, second.stdout + second.stderr
    train_log = (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
    assert f"resumed from {cfg.checkpoint_path}" in train_log, train_log
    _assert_finished(cfg)
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert int(ledger[0]["attempts"]) == 1 and int(ledger[0]["steps_duplicate"]) == 0  # not sent again


@pytest.mark.slow
def test_members_snakemake_will_not_launch_end_the_trainer_and_a_rerun_sends_them(tmp_path):
    """Without --keep-going, Snakemake launches no more jobs once one has failed for good, and
    waits for the running ones: the trainer among them. The members it never launched are lost
    with that reason within seconds (not pending forever, the trainer would never end), and the
    same command, rerun, resumes the trainer and sends them."""
    # Members 0-2 exit 0 without streaming, no retry: whichever runs first fails for good, and at
    # most member 3 ran before it, so two members at least are never launched (whatever the order).
    path, flag = _silent_solver_study(tmp_path, silent={0, 1, 2}, n_members=4, retries=0)
    cfg = StudyConfig.load(path)
    first = snakemake(tmp_path, path, "--cores", 2, timeout=300)
    assert first.returncode != 0
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    failed = [m for m in (0, 1, 2) if "without opening its stream" in ledger[m]["reason"]]
    assert len(failed) == 1 and ledger[failed[0]]["status"] == "lost", ledger
    never = [m for m in range(4) if ledger[m]["status"] != "complete" and m not in failed]
    assert len(never) >= 2, ledger
    for m in never:
        assert ledger[m]["status"] == "lost" and "not started: snakemake stopped launching jobs" in ledger[m]["reason"]
        assert "--keep-going" in ledger[m]["reason"] and not cfg.member_marker(m).exists()
    flag.unlink()
    second = snakemake(tmp_path, path, "--cores", 2)
    assert second.returncode == 0, second.stdout + second.stderr
    _assert_finished(cfg)


@pytest.mark.slow
def test_a_damaged_checkpoint_names_the_way_out_and_restart_keeps_every_member(tiny_config, tmp_path):
    """An interrupted study whose checkpoint is then damaged: the rerun fails at once, naming the
    file and `datamove restart`; after it, the same command finishes the study with every member
    complete (before: the members with markers ended lost, and no rerun finished the study)."""
    path = _study(tiny_config, n_members=4)
    cfg = StudyConfig.load(path)
    _interrupt_once_a_member_is_held(tmp_path, path, cfg, settled=True)
    assert cfg.checkpoint_path.exists(), (tmp_path / "first.log").read_text()
    sent = [m for m in range(4) if cfg.member_marker(m).exists()]
    assert sent
    data = cfg.checkpoint_path.read_bytes()
    cfg.checkpoint_path.write_bytes(data[: len(data) // 2])  # truncated

    second = snakemake(tmp_path, path, "--cores", 2, "--rerun-incomplete")
    assert second.returncode != 0
    train_log = (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
    assert f"checkpoint {cfg.checkpoint_path} cannot be read, it is damaged" in train_log, train_log
    assert f"datamove restart --config {cfg.study_dir / 'config.yaml'}" in train_log, train_log

    restarted = datamove("restart", "--config", cfg.study_dir / "config.yaml")
    assert "set aside" in restarted.stdout and "marker(s)" in restarted.stdout, restarted.stdout
    assert not cfg.checkpoint_path.exists() and list(cfg.study_dir.glob("checkpoint.set-aside-*.pt"))
    assert not any(cfg.member_marker(m).exists() for m in range(4))
    third = snakemake(tmp_path, path, "--cores", 2, "--rerun-incomplete")
    assert third.returncode == 0, third.stdout + third.stderr
    _assert_finished(cfg)


def test_the_launch_watch_reads_when_snakemake_launches_no_more_members():
    """datamove.run.launches on the scheduler's state (the attributes Snakemake 9's JobScheduler
    keeps; a stand-in with the same names): launching, stopped after a failure without
    --keep-going, interrupted, and under --keep-going with no member job left."""
    from types import SimpleNamespace

    from datamove.run.launches import stopped_launching

    job = lambda rule: SimpleNamespace(rule=rule)  # noqa: E731
    rules = {"simulate_member"}
    base = dict(_user_kill=None, _executor_error=None, _errors=False, keepgoing=False, failed=set(),
                remaining_jobs=[job("simulate_member"), job("evaluate_model")], running=[job("train_online")])
    state = lambda **over: SimpleNamespace(**{**base, **over})  # noqa: E731
    assert stopped_launching(None, rules) is None
    assert stopped_launching(state(), rules) is None
    failed = [job("simulate_member")]
    assert "--keep-going" in stopped_launching(state(_errors=True, failed=failed), rules)
    assert stopped_launching(state(_user_kill="graceful"), rules) == "snakemake was interrupted"
    # --keep-going: a member job left (ready, or running) keeps it launching; none left ends it.
    assert stopped_launching(state(_errors=True, keepgoing=True, failed=failed), rules) is None
    only_others = dict(remaining_jobs=[job("evaluate_model")], running=[job("train_online")])
    assert "no member job left" in stopped_launching(state(_errors=True, keepgoing=True, failed=failed, **only_others), rules)
    # Nothing failed: the members' jobs are all done, not lost.
    assert stopped_launching(state(keepgoing=True, **only_others), rules) is None


@pytest.mark.slow
@pytest.mark.parametrize("job", [False, True], ids=["member-stream", "job-stream"])
def test_a_solver_frozen_as_it_opens_fails_once_the_trainer_drops_its_stream(tiny_config, tmp_path, job):
    """A solver frozen the moment its stream appears (in Open, or at its first steps): the trainer
    drops the stream after stream.member_timeout_s (no step), and says so in the member's receipt;
    the solver's watchdog reads it and ends the solver at once, frozen or not, instead of leaving
    it in Open until stream.open_timeout_s (300 s here). Its rerun completes the member. The same
    for a job of 2 members in one stream (the many-members form): the receipts of its members say
    so, whether or not its first step came (the trainer then knows them by the job's start notes)."""
    n = 2 if job else 1
    path = tiny_config(ensemble={"n_members": n, "retries": 1, "members_per_job": n},
                       stream={"member_timeout_s": 6, "open_timeout_s": OPEN_TIMEOUT_S})
    cfg = StudyConfig.load(path)
    assert cfg.job_streams == job
    which = ("--job", 0) if job else ("--member", 0)
    contact = contact_file(cfg.stream_dir, "job-000000" if job else 0)
    marker = tmp_path / "job-0.json" if job else cfg.member_marker(0)
    datamove("make-heldout", "--config", path)
    trainer = popen_datamove("train", "--config", path, "--threads", 1, log=tmp_path / "train.log")
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        solver = popen_datamove("simulate", "--config", path, *which, "--wait-trainer", log=tmp_path / "sim.log")
        _wait(lambda: contact.exists(), 60, "the stream's contact file")
        os.kill(solver.proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            code = solver.wait(timeout=60)
        finally:
            os.kill(solver.proc.pid, signal.SIGCONT) if solver.proc.poll() is None else None
        assert code != 0 and time.monotonic() - t0 < 30, solver.output
        assert "the trainer dropped this stream (" in solver.output and "no step for 6 s" in solver.output, solver.output
        rerun = datamove("simulate", "--config", path, *which, "--wait-trainer", "--marker", marker, timeout=120)
        assert "steps sent" in rerun.stderr
        assert trainer.wait(timeout=60) == 0, trainer.output
    finally:
        trainer.kill()
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    # (attempts counts the streams the trainer opened: the frozen one may not have opened yet)
    for member in range(n):
        assert ledger[member]["status"] == "complete" and int(ledger[member]["steps_received"]) == 20, ledger[member]
