"""A trainer that freezes while a member streams to it (issue 30, case 5), with real processes.

A frozen trainer (SIGSTOP, a stuck file system, a deadlock) keeps its streams' connections open, so
an SST writer that it stops reading blocks in ``end_step`` for as long as the freeze lasts, holding
the GIL. The solver's watchdog follows the trainer's heartbeat for the whole stream and ends the
solver once the heartbeat has stood still for ``max(10 x heartbeat_s, 10 s)`` (docs/faults.md);
the workflow reruns it, and once the trainer thaws the study finishes in the same run.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import pids_running, snakemake, write_study
from datamove.config import StudyConfig
from datamove.ensemble.members import run_command
from datamove.run.heartbeat import TrainerCheck, TrainerLostError, lost_after, read_heartbeat
from datamove.streaming.contract import contact_file
from datamove.streaming.events import Ended, Opened
from datamove.streaming.feed import MemberFeed
from datamove.streaming.ingest import contact_signature, streams_present
from datamove.training.records import Ledger
from test_recovery import OPEN_TIMEOUT_S, _assert_finished, _assert_markers_agree
from test_workflow import read_ledger

FREEZE_S = 15.0  # longer than the bound (10 s with heartbeat_s 0.2)


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...); [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _alive(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"])


@pytest.mark.slow
def test_a_frozen_trainer_fails_its_streaming_member_within_the_bound(tiny_config, tmp_path):
    # 80 steps of 0.05 s: a member streams for 4 s, far more steps than the slots and queue that
    # let it run on while nobody reads.
    path = tiny_config(
        ensemble={"n_members": 6, "retries": 2},
        solver={"nx": 16, "ny": 16, "n_steps": 80, "step_delay_s": 0.05},
        trainer={"checkpoint_every": 20, "heartbeat_s": 0.2},
        stream={"open_timeout_s": OPEN_TIMEOUT_S, "member_timeout_s": OPEN_TIMEOUT_S},
    )
    cfg = StudyConfig.load(path)
    bound = lost_after(cfg)
    assert bound == 10.0
    seen: dict = {}

    def streaming_now() -> list[int]:
        """The members streaming now, once the trainer has some of their steps (not in Open)."""
        beat = read_heartbeat(cfg.heartbeat_path) or {}
        if (beat.get("status") or {}).get("samples_received", 0) < 10:
            return []
        return streams_present(cfg.stream, cfg.stream_dir)

    def freeze_while_a_member_streams():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not streaming_now():
            time.sleep(0.01)
        streaming = streaming_now()
        trainers = pids_running(cfg.study_dir, "datamove train")
        if not streaming or len(trainers) != 1:
            seen["why_not"] = f"streaming {streaming}, trainers {trainers}"
            return
        member = streaming[0]  # well into its stream: 10 or more of its 80 steps sent
        os.kill(trainers[0], signal.SIGSTOP)
        frozen = time.monotonic()
        found = pids_running(cfg.study_dir, "datamove simulate", f"--member {member:06d}")
        solver = [pid for pid in found if int((_stat(pid) or [0, 0])[1]) not in found]  # not its watchdog
        seen.update(member=member, trainer=trainers[0], frozen=frozen)
        log = cfg.study_dir / "logs" / "simulate_member" / f"member-{member:06d}.log"
        try:
            # Its log says why, until the workflow's rerun of the member starts it afresh.
            while time.monotonic() - frozen < FREEZE_S:
                text = log.read_text() if log.exists() else ""
                if "datamove watchdog" in text and "failed" not in seen:
                    seen.update(failed=time.monotonic() - frozen, log=text)
                if solver and "gone" not in seen and not any(map(_alive, solver)):
                    seen["gone"] = time.monotonic() - frozen  # the solver's process has ended
                time.sleep(0.02)
        finally:
            os.kill(trainers[0], signal.SIGCONT)

    watcher = threading.Thread(target=freeze_while_a_member_streams, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    proc = snakemake(tmp_path, path, "--cores", 2, timeout=400)
    elapsed = time.monotonic() - t0
    watcher.join(timeout=30)
    assert "frozen" in seen, seen.get("why_not", "no member was seen streaming")
    member, trainer = seen["member"], seen["trainer"]
    print(f"member {member}: watchdog fired {seen.get('failed')} s, solver gone {seen.get('gone')} s after "
          f"the freeze (bound {bound:g} s); study {elapsed:.0f} s\n{seen.get('log', '')}")
    assert "failed" in seen, f"member {member}'s solver waited out the freeze ({FREEZE_S:g} s)"
    assert seen["failed"] < bound + 3, seen
    assert seen.get("gone", FREEZE_S) < bound + 6, seen  # SIGTERM, then SIGKILL 2 s later
    assert f"member {member}: the trainer (pid {trainer}) is not running" in seen["log"], seen["log"]
    assert "while the member streamed to it" in seen["log"] and f"{bound:g} s" in seen["log"], seen["log"]
    # The trainer thawed, the rerun streamed the member again: the same run finishes the study.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_finished(cfg)
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    _assert_markers_agree(cfg, ledger)
    assert int(ledger[member]["attempts"]) >= 2, ledger[member]
    assert int(ledger[member]["steps_duplicate"]) >= 10, ledger[member]  # the rerun resent what the first sent


def test_a_streaming_member_judges_its_trainer_by_its_heartbeat_alone(tmp_path, monkeypatch):
    """The watchdog's check while a member streams: a heartbeat that stands still for quiet_s, final
    beat or not, fails it; a final beat alone does not (the trainer may finish the moment it read
    the last step, while the writer closes): a trainer that ends closes its streams anyway."""
    from datamove.run import heartbeat as hb

    clock = [100.0]
    monkeypatch.setattr(hb.time, "monotonic", lambda: clock[0])
    path = tmp_path / "trainer.heartbeat.json"
    path.write_text('{"pid": 7, "seq": 1}')
    check = TrainerCheck(path, pid=7, quiet_s=10.0)
    streaming = check.streaming_check()
    assert streaming.streaming and not check.streaming and streaming.quiet_s == 10.0
    assert check() is None and streaming() is None  # the first look: a baseline
    clock[0] += 1
    path.write_text('{"pid": 7, "seq": 2, "finished": true}')
    assert "has finished" in check()
    assert streaming() is None
    clock[0] += 9.5
    assert streaming() is None  # 9.5 s since the last beat
    clock[0] += 1
    assert streaming() == "the trainer (pid 7) is not running: its heartbeat has not advanced for 10 s"
    # A check travels to the watchdog's process without what it saw.
    clone = pickle.loads(pickle.dumps(streaming))
    assert clone.streaming and clone() is None


class _Assigns:
    """An IngestPool's dispatch side, without processes: one idle worker, the members assigned."""

    def __init__(self):
        self.idle, self.busy, self.assigned = [0], False, []

    def assign(self, member: int) -> None:
        self.assigned.append(member)


def test_a_rerun_that_opened_while_the_trainer_was_frozen_is_read(tiny_config):
    """A frozen trainer's worker sees its member's stream end (the writer was stopped) only once it
    thaws, when the rerun's contact file may be there already: that file is the rerun's, to be read,
    not the dead writer's (issue 30, case 5: the rerun waited in Open until the trainer finished)."""
    cfg = StudyConfig.load(tiny_config(ensemble={"n_members": 1, "retries": 2}))
    cfg.stream_dir.mkdir(parents=True)
    ledger = Ledger(members=[0], steps_expected=cfg.problem.n_steps)
    feed = MemberFeed(cfg=cfg, members=[0], ledger=ledger, clean=False, say=lambda msg: None)
    feed.pool = _Assigns()
    contact_file(cfg.stream_dir, 0).write_text("the first writer's contact")
    feed._dispatch()
    assert feed.pool.assigned == [0]
    feed._handle(Opened(0, 0))
    first = contact_signature(cfg.stream_dir, 0)
    # The first writer is stopped; the rerun replaces its contact file; then the trainer thaws.
    contact_file(cfg.stream_dir, 0).unlink()
    contact_file(cfg.stream_dir, 0).write_text("the rerun's contact")
    later = first[1] + 10**9  # seconds later, as a rerun's is (within one clock tick, an inode reused: the same)
    os.utime(contact_file(cfg.stream_dir, 0), ns=(later, later))
    assert contact_signature(cfg.stream_dir, 0) != first
    feed._handle(Ended(0, "lost", "stream error after 29 steps", 29, 0))
    assert ledger[0].status == "retrying"
    feed._dispatch()
    assert feed.pool.assigned == [0, 0], "the rerun's stream was taken for the dead writer's"


def test_a_solver_command_streaming_to_a_frozen_trainer_is_stopped_within_the_bound(tmp_path):
    """A user's solver command runs in a child process; its launcher's poll loop checks the trainer
    all along, the stream included. The command here opened its stream and then waits, as one
    blocked in a write would; the heartbeat stands still from the start (a frozen trainer)."""
    path = write_study(
        tmp_path,
        solver={"name": "blocked", "command": "sh -c 'echo contact > {stream}.sst; exec sleep 120'",
                "fields": {"u": [10, 12]}, "n_steps": 20},
        parameters={"ranges": {"alpha": [0.1, 1.0]}},
        trainer={"heartbeat_s": 0.2},
    )
    cfg = StudyConfig.load(path)
    cfg.heartbeat_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.heartbeat_path.write_text('{"pid": %d, "seq": 5}' % os.getpid())
    t0 = time.monotonic()
    with pytest.raises(TrainerLostError) as err:
        run_command(cfg, 0, params=[0.5], stream=cfg.stream, stream_dir=cfg.stream_dir, sampling=cfg.ensemble,
                    trainer_pid=os.getpid())
    took = time.monotonic() - t0
    assert lost_after(cfg) <= took < lost_after(cfg) + 5, took
    assert f"the trainer (pid {os.getpid()}) is not running: its heartbeat has not advanced" in str(err.value)
    assert "while the solver command streamed to it" in str(err.value)
