"""Jobs' streams of the many-members form (docs/stream-contract.md, "Several members in one stream"):
a simulation job's members one after another in one SST stream, each accounted for on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, pids_running, snakemake
from datamove.config import StudyConfig
from datamove.streaming.events import Ended, Info, JobEnded, JobOpened, Opened, Step
from datamove.streaming.feed import MemberFeed
from datamove.streaming.ingest import streams_present
from datamove.training.records import Ledger
from test_ingest_pool import _pool
from test_recovery import _when
from test_workflow import read_ledger

# A job's stream written by DATAMOVE's own JobWriter, with members listed and sent as a test says
# (ids it does not list, twice, out of order, cut short): argv = config, listed, [[member, steps], ...].
WRITER = r"""
import json, sys
import numpy as np
from datamove.config import StudyConfig
from datamove.streaming.contract import join_names
from datamove.streaming.writer import JobWriter

cfg = StudyConfig.load(sys.argv[1])
listed, sends = json.loads(sys.argv[2]), json.loads(sys.argv[3])
problem = cfg.problem
writer = JobWriter(stream=cfg.stream, stream_dir=cfg.stream_dir, job=0, members=listed,
                   attributes={"param_names": join_names(problem.param_names), "solver": problem.name})
writer.open()
for member, n in sends:
    writer.begin(member, np.linspace(0.1, 0.9, len(problem.param_names)) + member)
    for k in range(n):
        writer.write_step(time=0.1 * (k + 1),
                          fields={f: np.full(shape, member + k / 100, np.float32) for f, shape in problem.fields.items()})
writer.close()
"""


def _write_job(cfg: StudyConfig, path, listed, sends, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), json.dumps(listed), json.dumps(sends)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def _read_job(cfg: StudyConfig, path, listed, sends, tmp_path) -> list:
    """Every event of one ingest worker reading job 0's stream, written as given, to its JobEnded."""
    pool = _pool(cfg, n_workers=1, n_slots=4).start()
    with (tmp_path / "writer.log").open("w") as log:
        writer = _write_job(cfg, path, listed, sends, log)
    try:
        deadline = time.monotonic() + 60
        while streams_present(cfg.stream, cfg.stream_dir, prefix="job-") != [0]:
            assert writer.poll() is None, (tmp_path / "writer.log").read_text()
            assert time.monotonic() < deadline, "the job's stream did not open"
            time.sleep(0.02)
        pool.assign_job(0)
        events = []
        while not events or not isinstance(events[-1], JobEnded):
            assert time.monotonic() < deadline, f"no JobEnded: {events}"
            for ev in pool.poll(timeout=0.05):
                if isinstance(ev, Step):
                    pool.release([ev.slot])
                events.append(ev)
        assert pool.idle == [0] and not pool.busy
        return events
    finally:
        writer.kill()
        writer.wait()
        pool.close()


def _ends(events) -> list[tuple]:
    """(member, status, steps, final) of each Ended, and (unsent, reason) of the JobEnded."""
    out = [(ev.member, ev.status, ev.steps, ev.final) for ev in events if isinstance(ev, Ended)]
    last = events[-1]
    return [*out, (last.unsent, last.reason)]


def test_a_jobs_stream_brings_each_member_in_turn(tiny_config, tmp_path):
    path = tiny_config(ensemble={"n_members": 4})
    cfg = StudyConfig.load(path)
    n = cfg.problem.n_steps
    events = _read_job(cfg, path, [2, 0, 3], [[2, n], [0, n], [3, n]], tmp_path)
    assert isinstance(events[0], JobOpened) and events[0].members == (2, 0, 3)
    assert _ends(events) == [(2, "complete", n, False), (0, "complete", n, False), (3, "complete", n, False),
                             ((), "")]
    for member in (2, 0, 3):  # each member as if it had a stream of its own: opened, its params, steps 1..n
        mine = [ev for ev in events if not isinstance(ev, (JobOpened, JobEnded)) and ev.member == member]
        assert isinstance(mine[0], Opened) and isinstance(mine[1], Info) and isinstance(mine[-1], Ended)
        n_params = len(cfg.problem.param_names)
        assert mine[1].params.tolist() == pytest.approx((np.linspace(0.1, 0.9, n_params) + member).tolist())
        assert [ev.step for ev in mine if isinstance(ev, Step)] == list(range(1, n + 1))


@pytest.mark.parametrize("listed, sends, expected", [
    # a member the stream does not list: the members before it stay complete, those after wait
    ([0, 1], [[0, "n"], [2, "n"]],
     [(0, "complete", "n", False), ((1,), "step 21 names member 2, which is not in the stream's 'members' attribute [0, 1]")]),
    # a member again
    ([0, 1], [[0, "n"], [0, "n"]],
     [(0, "complete", "n", False), ((1,), "step 21 names member 0 again, after its 20 steps (a member comes once in a stream)")]),
    # out of the listed order
    ([0, 1], [[1, "n"]],
     [((0, 1), "step 1 names member 1 before member 0 (members come in the order of the 'members' attribute, [0, 1])")]),
    # the next member before the last has all its steps: that one is lost for good (a rerun would do the same)
    ([0, 1, 2], [[0, 3], [1, "n"]],
     [(0, "lost", 3, True), ((1, 2), "step 4 names member 1 while member 0 has sent 3 of its 20 steps (members come "
                                     "one after another, each with all its steps)")]),
    # ids outside the ensemble, or listed twice: the stream is refused before any member
    ([0, 7], [[0, "n"]], [((), "attribute 'members' lists [7], outside the ensemble [0, 4)")]),
    ([1, 1], [[1, "n"]], [((), "attribute 'members' lists [1] more than once")]),
], ids=["not-listed", "repeated", "out-of-order", "cut-short", "outside-the-ensemble", "listed-twice"])
def test_bad_member_ids_are_refused_naming_the_step_and_the_member(tiny_config, tmp_path, listed, sends, expected):
    path = tiny_config(ensemble={"n_members": 4})
    cfg = StudyConfig.load(path)
    n = cfg.problem.n_steps
    assert n == 20  # the messages above
    sends = [[m, n if k == "n" else k] for m, k in sends]
    expected = [tuple(n if v == "n" else v for v in e) for e in expected]
    assert _ends(_read_job(cfg, path, listed, sends, tmp_path)) == expected


def test_the_feed_takes_a_jobs_members_and_returns_the_unsent_to_waiting(tiny_config, tmp_path):
    """The trainer's side: a job's stream cut after its first member (an id it does not list):
    member 0 complete, member 1 waits for a rerun with no attempt counted, and the stream's
    receipts tell its writer why (it would otherwise wait in SST for a reader that left)."""
    path = tiny_config(ensemble={"n_members": 2})
    cfg = StudyConfig.load(path)
    n = cfg.problem.n_steps
    ledger = Ledger(members=[0, 1], steps_expected=n)
    said = []
    feed = MemberFeed(cfg=cfg, members=[0, 1], ledger=ledger, say=said.append).start()
    with (tmp_path / "writer.log").open("w") as log:
        writer = _write_job(cfg, path, [0, 1], [[0, n], [5, n]], log)
    try:
        deadline = time.monotonic() + 60
        while not any("job-000000 ended" in s for s in said):
            assert time.monotonic() < deadline, said
            feed.poll(timeout=0.05)
            feed.waiting.clear()  # no buffer here: the steps are dropped
            feed.pool.release(list(range(cfg.trainer.slots)))
        assert ledger[0].status == "complete" and ledger[0].steps_received == n and ledger[0].attempts == 1
        assert ledger[1].status == "pending" and ledger[1].attempts == 0 and 1 in feed.unassigned
        assert feed.newly_complete == [0]
        (member, reason, contact), = feed.newly_rejected
        assert member == 1 and "names member 5, which is not in" in reason
        # The receipt names the job's stream (as read when it was dispatched), and only a new file
        # of that job, a rerun's, is read again.
        assert contact is not None and contact == feed._dead_jobs[0]
    finally:
        writer.kill()
        writer.wait()
        feed.close()


@pytest.mark.slow
def test_a_job_killed_in_its_third_member_resends_that_member_only(tiny_config, tmp_path):
    """Issue 32's fault: a job of 3 members in one stream, SIGKILLed while it sends its third
    member (the first two held: their receipts), rerun by Snakemake (ensemble.retries): the rerun
    sends the third member alone, the first two are not reopened, and ledger and markers agree."""
    n = 40
    path = tiny_config(
        ensemble={"n_members": 6, "members_per_job": 3, "retries": 1},
        solver={"n_steps": n, "step_delay_s": 0.05},
        trainer={"checkpoint_every": 10, "heartbeat_s": 0.2},
        stream={"open_timeout_s": 300, "member_timeout_s": 300},
    )
    cfg = StudyConfig.load(path)
    log = cfg.study_dir / "logs" / "simulate_members" / "job-000000.log"
    killed = []

    def member_1_held() -> bool:
        return "member 1: 40 steps sent" in (log.read_text() if log.exists() else "") and cfg.member_receipt(1).exists()

    def kill_the_job() -> None:
        time.sleep(0.5)  # ~10 of member 2's 40 steps
        for pid in pids_running(cfg.study_dir, "datamove simulate", "--job 000000"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    watcher = _when(member_1_held, kill_the_job, timeout=240)
    proc = snakemake(tmp_path, path, "--cores", 2, timeout=400)
    watcher.join()
    out = proc.stdout + proc.stderr
    assert killed, out
    assert proc.returncode == 0, out
    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    for member, rec in ledger.items():
        assert rec["status"] == "complete" and int(rec["steps_received"]) == n, rec
        assert cfg.member_marker(member).exists()
        # Only the member cut off was sent twice: the rerun did not reopen the held ones.
        assert int(rec["attempts"]) == (2 if member == 2 else 1), rec
        if member != 2:
            assert int(rec["steps_duplicate"]) == 0, rec
    assert 0 < int(ledger[2]["steps_duplicate"]) < n  # the rerun resent member 2 from its first step
    rerun = log.read_text()
    assert "member 0: the trainer already holds its 40 steps" in rerun, rerun
    assert "member 1: the trainer already holds its 40 steps" in rerun, rerun
    assert "member 2: 40 steps sent in job-000000" in rerun, rerun
    train_log = (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
    assert "member 2 lost after" in train_log and "waiting for a rerun" in train_log, train_log


@pytest.mark.parametrize("over, expected", [
    ({}, True),
    ({"stream": {"per_job": False}}, False),
    ({"stream": {"engine": "BP5"}}, False),
    ({"ensemble": {"n_members": 6, "members_per_job": 1}}, False),
    ({"trainer": {"world_size": 2}}, False),
], ids=["default", "per-job-off", "bp5", "one-a-job", "data-parallel"])
def test_when_a_job_streams_its_members_in_one_stream(tiny_config, over, expected):
    path = tiny_config(**{"ensemble": {"n_members": 6, "members_per_job": 3}, **over})
    assert StudyConfig.load(path).job_streams is expected
