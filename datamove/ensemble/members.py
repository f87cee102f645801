"""Running ensemble members: a solver feeding a stream (SST to the trainer, or BP5 files).

A built-in problem's solver runs in this process (:class:`datamove.streaming.writer.MemberWriter`);
the user's own solver (``solver.command``) runs as a child process that writes the stream itself
(:func:`run_command`). Both get the same guards: an open that never happens fails the member after
``stream.open_timeout_s``, and within seconds once its trainer is gone (stopped, finished, or
silent for :func:`datamove.run.heartbeat.lost_after`); a member counts as sent only once the trainer holds its
steps (its receipt, see :mod:`datamove.run.receipts`), and a rerun of a member that has its receipt sends
nothing; a failed launch leaves a note (``members/member-K.failed.json``) that the trainer's
ledger reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from datamove.config import SamplingConfig, StreamConfig, StudyConfig
from datamove.run.files import write_json
from datamove.run.heartbeat import TrainerCheck, TrainerLostError, lost_after
from datamove.run.receipts import MemberRejected, await_receipt, held, read_receipt, rejection
from datamove.sampling.proposals import draw_member
from datamove.streaming.contract import (
    StreamError,
    contact_file,
    job_stream_name,
    join_names,
    remove_contact_files,
    stream_name,
)
from datamove.streaming.ingest import contact_signature
from datamove.streaming.watchdog import Watchdog
from datamove.streaming.writer import JobWriter, MemberWriter

POLL_S = 0.1  # how often a launched command is checked on
OPEN_POLL_S = 0.01  # how often, until its stream opens


class SolverError(RuntimeError):
    """A member's solver failed (the user's command exited non-zero, never opened its stream, wrote
    a file that breaks the contract); the message names the member and what failed."""


def run_member(
    cfg: StudyConfig,
    member: int,
    *,
    sampling: SamplingConfig,
    stream: StreamConfig,
    stream_dir: Path,
    watchdog: Watchdog | None = None,
    step_delay_s: float = 0.0,
    trainer_pid: int | None = None,
    params=None,
) -> dict:
    """Solve one member and write every step to its stream. Returns a small summary.

    ``step_delay_s`` emulates a slower solver (``solver.step_delay_s``, training members only);
    ``trainer_pid``: the live trainer an SST member streams to (a launched command is stopped if
    it dies); ``params``: float64 [n_params] drawn by the caller (sampler adaptive), else the
    sampler's point of the member.
    """
    problem = cfg.problem
    params = sampling.params(member) if params is None else np.asarray(params, dtype=np.float64)
    t0 = time.perf_counter()
    summary = {"member": member, "params": [float(p) for p in params], "engine": stream.engine}
    if problem.command:
        summary.update(run_command(cfg, member, params=params, stream=stream, stream_dir=stream_dir,
                                   sampling=sampling, trainer_pid=trainer_pid))
        return {**summary, "total_s": round(time.perf_counter() - t0, 4)}
    solver = problem.solver(params=params, seed=sampling.seed_of(member))
    attributes = {
        "member": member,
        "params": params,
        "param_names": join_names(sampling.names),
        "solver": problem.name,
        **solver.constants(),
    }
    trainer = None
    if trainer_pid is not None and stream.engine.upper() == "SST":
        trainer = TrainerCheck(cfg.heartbeat_path, pid=trainer_pid, quiet_s=lost_after(cfg))
        note_start(cfg, member)  # right before its Open: the trainer's clock measures the open alone
    writer = MemberWriter(
        stream=stream, stream_dir=stream_dir, member=member, attributes=attributes, watchdog=watchdog,
        trainer=trainer, receipt=cfg.member_receipt(member) if trainer is not None else None,
    )
    with writer:
        t_open = time.perf_counter() - t0
        # Which stream this is, for the trainer's word on it (datamove.run.receipts.await_receipt).
        contact = contact_signature(stream_dir, member) if trainer is not None else None
        if trainer is not None and held(read_receipt(cfg, member)):
            # A rerun that the trainer answered although it held the member already (its receipt
            # came while this one waited in Open): nothing to send.
            return {**summary, "steps": 0, "already_held": True, "open_s": round(t_open, 4), "solve_s": 0.0,
                    "total_s": round(time.perf_counter() - t0, 4)}
        solve_s = _solve(solver, writer, step_delay_s)
    return {
        **summary,
        "steps": writer.steps_written,
        "contact": contact,
        "open_s": round(t_open, 4),
        "solve_s": round(solve_s, 4),
        "total_s": round(time.perf_counter() - t0, 4),
    }


def _solve(solver, writer: MemberWriter, step_delay_s: float) -> float:
    """Write every step of ``solver`` to ``writer`` as it comes; the seconds spent solving."""
    solve_s = 0.0
    steps = solver.steps()
    while True:
        ts = time.perf_counter()
        try:
            _k, t, fields = next(steps)
        except StopIteration:
            return solve_s
        solve_s += time.perf_counter() - ts
        writer.write_step(time=t, fields=fields)
        if step_delay_s:
            time.sleep(step_delay_s)


def run_command(
    cfg: StudyConfig,
    member: int,
    *,
    params,
    stream: StreamConfig,
    stream_dir: Path,
    sampling: SamplingConfig,
    trainer_pid: int | None = None,
) -> dict:
    """Run the user's solver command for one member and wait for it (see :mod:`datamove.problems.external`).

    SST: the command must open its stream (its contact file appears) within ``stream.open_timeout_s``,
    and is stopped if the trainer ``trainer_pid`` stops beating meanwhile. BP5: the file it wrote is
    checked against the config (fields, shapes, steps, parameters) once it has exited.

    Raises:
        SolverError: naming the command, its exit status or the field at fault.
        TrainerLostError: the trainer stopped while the command streamed to it.
    """
    problem = cfg.problem
    stream_dir.mkdir(parents=True, exist_ok=True)  # an SST writer whose folder is missing crashes later
    engine = stream.engine.upper()
    if engine == "SST":
        remove_contact_files(stream_dir, [member], label="simulate")  # a killed attempt's
    argv = problem.command_line(stream=stream_dir / stream_name(member), member=member, engine=engine, params=params)
    what = f"member {member}: solver command `{shlex.join(argv)}`"
    print(f"[simulate] {what} ({engine})", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    if engine == "SST" and trainer_pid is not None:
        note_start(cfg, member)  # the trainer's "never connected" clock runs from here
    try:
        # A session of its own: a stop kills the command and whatever it started.
        proc = subprocess.Popen(argv, start_new_session=True)
    except OSError as exc:
        raise SolverError(f"{what} could not be started: {exc}") from None
    check = TrainerCheck(cfg.heartbeat_path, pid=trainer_pid, quiet_s=lost_after(cfg)) if engine == "SST" and trainer_pid else None
    opened, contact = engine != "SST", None
    try:
        while (code := proc.poll()) is None:
            # Often until the stream opens: a quick command's contact file lives only while it
            # waits in Open for the trainer's reader and streams (a fraction of a second).
            time.sleep(POLL_S if opened else OPEN_POLL_S)
            now = time.monotonic()
            if not opened and contact_file(stream_dir, member).exists():
                opened = True
            if opened and contact is None and engine == "SST":
                # Once written (non-empty), as the trainer sees it when it dispatches the stream.
                sig = contact_signature(stream_dir, member)
                if sig is not None and contact_file(stream_dir, member).stat().st_size > 0:
                    contact = sig
            if not opened and now - t0 > stream.open_timeout_s:
                raise SolverError(
                    f"{what} did not open its stream {stream_dir / stream_name(member)} within "
                    f"{stream.open_timeout_s:g} s (stream.open_timeout_s)"
                )
            if check is not None:
                if held(read_receipt(cfg, member)):
                    # The trainer holds the member already (this is a rerun it answered): done.
                    print(f"[simulate] {what}: the trainer holds the member already; the command was stopped",
                          file=sys.stderr, flush=True)
                    return {"command": argv, "exit_status": None, "already_held": True,
                            "solve_s": round(time.monotonic() - t0, 4)}
                gone = check()
                if gone is not None:
                    raise TrainerLostError(f"member {member}: {gone} while the solver command streamed to it; "
                                           "the command was stopped")
    finally:
        if proc.poll() is None:
            _stop(proc)
    if not opened and code == 0 and contact_file(stream_dir, member).exists():
        opened = True  # opened after the last look, and exited: its contact file is still there
    if code != 0:
        status = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise SolverError(f"{what} {status}")
    if not opened:
        # Else its job would wait for a receipt that no stream can bring, until the trainer ends.
        raise SolverError(
            f"{what} exited with status 0 without opening its stream {stream_dir / stream_name(member)}: "
            f"it must open it (SST) and write solver.n_steps = {problem.n_steps} steps "
            "(docs/stream-contract.md)"
        )
    if engine == "BP5":
        from datamove.data import DatasetError, open_checked

        try:
            open_checked(cfg, stream_dir, member, sampling=sampling, missing="the command exited 0 but wrote no file").close()
        except DatasetError as exc:
            raise SolverError(f"{what}: {exc}") from None
    return {"command": argv, "exit_status": code, "contact": contact, "solve_s": round(time.monotonic() - t0, 4)}


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the command's session, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _confirm(cfg: StudyConfig, trainer_pid: int | None, member: int, contact, summary: dict) -> None:
    """Called as soon as the member's stream has closed: wait for its receipt (see await_receipt).
    A solver command whose stream the trainer rejected is named, with what it did not do."""
    if trainer_pid is None or cfg.stream.engine.upper() != "SST":
        return
    try:
        await_receipt(cfg, pid=trainer_pid, member=member, contact=tuple(contact) if contact else None)
    except MemberRejected as exc:
        if "command" not in summary:
            raise
        raise MemberRejected(
            f"member {member}: solver command `{shlex.join(summary['command'])}` exited with status "
            f"{summary.get('exit_status')}, but its stream did not bring solver.n_steps = {cfg.problem.n_steps} "
            f"good steps: {exc}", final=exc.final,
        ) from None


def simulate(
    cfg: StudyConfig, member: int, *, marker: Path | None = None, trainer_pid: int | None = None
) -> dict:
    """``datamove simulate``: one training member, streamed with the configured engine.

    ``trainer_pid``: the live trainer found by the readiness gate; the member counts as sent (marker
    written) only if that trainer was still alive when the stream closed.
    """
    if not 0 <= member < cfg.ensemble.n_members:
        raise ValueError(f"--member {member} is outside the ensemble [0, {cfg.ensemble.n_members})")
    _nice(cfg)
    with Watchdog() as watchdog:  # before any ADIOS2 object: it forks
        summary = _send(cfg, member, watchdog=watchdog, trainer_pid=trainer_pid, label=f"member {member}")
    if marker is not None:
        write_json(marker, summary)
    return summary


def _send(cfg: StudyConfig, member: int, *, watchdog: Watchdog, trainer_pid: int | None, label: str,
          confirm: bool = True) -> dict:
    """Stream one training member, confirm that the trainer holds it (unless not ``confirm``: the
    caller does, see :func:`_settle`), report it; its summary.

    A failure leaves a note for the trainer (:func:`note_failure`) before it is raised again.
    """
    if (held_already := _nothing_to_send(cfg, member, trainer_pid=trainer_pid, label=label)) is not None:
        return held_already
    try:
        summary = run_member(
            cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir, watchdog=watchdog,
            step_delay_s=cfg.problem.step_delay_s, trainer_pid=trainer_pid, params=_params(cfg, member, label),
        )
        if confirm:
            _confirm(cfg, trainer_pid, member, summary.pop("contact", None), summary)
    except (SolverError, StreamError, TrainerLostError, MemberRejected) as exc:
        note_failure(cfg, member, str(exc), final=getattr(exc, "final", None))
        raise
    cfg.member_failure(member).unlink(missing_ok=True)
    if summary.get("already_held"):
        steps = "held by the trainer already, nothing sent"
    else:
        steps = f"{summary['steps']} steps sent" if "steps" in summary else "solver command exited 0"
    print(
        f"[simulate] {label}: {steps} ({cfg.stream.engine}) in {summary['total_s']:.2f} s "
        f"(solve {summary['solve_s']:.2f} s)",
        file=sys.stderr,
    )
    return summary


def _nothing_to_send(cfg: StudyConfig, member: int, *, trainer_pid: int | None, label: str) -> dict | None:
    """A rerun's check, before it sends ``member`` to trainer ``trainer_pid`` (SST): the summary of a
    member whose steps the trainer holds already (its solver died after its last step, before its
    marker: nothing to send); raises the trainer's refusal of a member it has ended for good (a
    contract violation: its stream would wait in Open for a reader that never comes); else None."""
    if trainer_pid is None or cfg.stream.engine.upper() != "SST":
        return None
    receipt = read_receipt(cfg, member)
    if held(receipt):
        print(f"[simulate] {label}: the trainer already holds its {receipt.get('steps')} steps "
              f"({cfg.member_receipt(member)}): nothing to send", file=sys.stderr)
        cfg.member_failure(member).unlink(missing_ok=True)
        return {"member": member, "engine": cfg.stream.engine, "already_held": True, "steps": 0,
                "total_s": 0.0, "solve_s": 0.0}
    if refused := rejection(member, receipt):
        note_failure(cfg, member, str(refused), final=True)
        raise refused
    return None


def _params(cfg: StudyConfig, member: int, label: str):
    """A training member's parameters, float64 [n_params]: the sampler's point, or under sampler
    adaptive drawn now, from the trainer's latest proposal (a rerun: its earlier draw)."""
    if cfg.ensemble.adaptive is not None:
        return np.asarray(draw_member(cfg, member, label=label).params, dtype=np.float64)
    return cfg.ensemble.params(member)


def note_failure(cfg: StudyConfig, member: int, reason: str, *, final: bool | None = None) -> dict:
    """Record a failed attempt of ``member`` for the trainer (``members/member-K.failed.json``): the
    attempt number (one more than the last note's), the reason, and whether it was the last attempt
    the workflow makes (``ensemble.retries``; or ``final``: the trainer takes no rerun), after which
    the trainer stops waiting for the member."""
    path = cfg.member_failure(member)
    try:
        attempt = int(json.loads(path.read_text())["attempt"]) + 1
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        attempt = 1
    note = {"member": member, "attempt": attempt, "reason": reason,
            "final": bool(final) or attempt > cfg.retries}
    write_json(path, note)
    return note


def note_start(cfg: StudyConfig, member: int, *, stream: str | None = None) -> dict:
    """Tell the trainer that this job starts ``member`` now (``members/member-K.started.json``, the
    number of starts so far): its "never connected" clock (``stream.member_timeout_s``) runs from
    here, not while the job waited in Snakemake's or the cluster's queue. ``stream``: the job's
    stream that will carry the member (the many-members form), for a trainer whose reader of that
    stream fails before it lists its members."""
    path = cfg.member_start(member)
    try:
        starts = int(json.loads(path.read_text())["starts"]) + 1
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        starts = 1
    note = {"member": member, "starts": starts, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
            **({"stream": stream} if stream else {})}
    write_json(path, note)
    return note


def _nice(cfg: StudyConfig) -> None:
    """Lower this solver's CPU priority by ensemble.nice: training first where cores are shared."""
    if cfg.solver_nice:
        os.nice(cfg.solver_nice)


def job_members(cfg: StudyConfig, job: int) -> list[int]:
    """The members simulation job ``job`` runs: ``ensemble.members_per_job`` consecutive ids."""
    k = cfg.members_per_job
    members = list(range(job * k, min((job + 1) * k, cfg.ensemble.n_members)))
    if job < 0 or not members:
        raise ValueError(f"--job {job} is outside [0, {n_jobs(cfg)}) ({cfg.ensemble.n_members} members, {k} per job)")
    return members


def n_jobs(cfg: StudyConfig) -> int:
    return -(-cfg.ensemble.n_members // cfg.members_per_job)


def simulate_job(
    cfg: StudyConfig, job: int, *, marker: Path | None = None, trainer_pid: int | None = None
) -> list[dict]:
    """``datamove simulate --job J``: the members of job J one after another, in one stream (SST,
    ``cfg.job_streams``: :func:`_send_job`), or one stream each.

    One process for several members pays the start-up (interpreter, numpy, adios2) once. With SST
    each member's stream is read by the trainer before the next one opens. Each member's marker
    (``members/member-K.json``) is written as soon as the trainer holds it (its receipt), while the
    next members stream; ``marker`` gets the job summary.
    """
    members = job_members(cfg, job)
    _nice(cfg)
    summaries, pending = [], []
    with Watchdog() as watchdog:  # before any ADIOS2 object: it forks
        if cfg.job_streams:
            summaries = _send_job(cfg, job, members, watchdog=watchdog, trainer_pid=trainer_pid)
            members = []
        for member in members:
            summary = _send(cfg, member, watchdog=watchdog, trainer_pid=trainer_pid,
                            label=f"job {job}: member {member}", confirm=False)
            summaries.append(summary)
            pending = _settle(cfg, trainer_pid, [*pending, (member, summary)], wait=False)
        _settle(cfg, trainer_pid, pending, wait=True)
    if marker is not None:
        write_json(marker, {"job": job, "members": summaries})
    return summaries


def _send_job(cfg: StudyConfig, job: int, members: list[int], *, watchdog: Watchdog, trainer_pid: int | None
              ) -> list[dict]:
    """Send job ``job``'s members that the trainer does not hold in one SST stream (the
    many-members form, :class:`datamove.streaming.writer.JobWriter`): one open, one close. Each
    member counts on its own: its marker once its receipt comes (while the next members stream),
    a failure noted against the member being sent (the members before it stay sent; those after
    it are the rerun's). A member the trainer has ended for good stops the job before anything is
    sent, as it does one stream a member. Without ``trainer_pid`` (no readiness gate: a benchmark,
    a test) nothing is checked against receipts. The members' summaries, in order."""
    summaries, pending, to_send = [], [], []
    for member in members:
        held_already = _nothing_to_send(cfg, member, trainer_pid=trainer_pid, label=f"job {job}: member {member}")
        if held_already is None:
            to_send.append(member)
        else:
            summaries.append(held_already)
            pending.append((member, held_already))
    if not to_send:
        _settle(cfg, trainer_pid, pending, wait=True)
        return summaries
    problem, sampling = cfg.problem, cfg.ensemble
    # The first member's solver, made before the stream opens: the job's attributes are its constants.
    params = _params(cfg, to_send[0], f"job {job}: member {to_send[0]}")
    solver = problem.solver(params=params, seed=sampling.seed_of(to_send[0]))
    attributes = {"param_names": join_names(sampling.names), "solver": problem.name, **solver.constants()}
    trainer = None
    if trainer_pid is not None:
        trainer = TrainerCheck(cfg.heartbeat_path, pid=trainer_pid, quiet_s=lost_after(cfg))
        for member in to_send:
            note_start(cfg, member, stream=job_stream_name(job))  # right before the Open: its clock runs
    writer = JobWriter(stream=cfg.stream, stream_dir=cfg.stream_dir, job=job, members=to_send, attributes=attributes,
                       watchdog=watchdog, trainer=trainer, receipts=cfg.member_receipt if trainer else None)
    current = None
    try:
        t0 = time.perf_counter()
        with writer:
            contact = list(contact_signature(cfg.stream_dir, writer.name) or ()) or None
            open_s = time.perf_counter() - t0
            for i, member in enumerate(to_send):
                current, t0 = member, time.perf_counter()
                if i > 0:
                    params = _params(cfg, member, f"job {job}: member {member}")
                    solver = problem.solver(params=params, seed=sampling.seed_of(member))
                writer.begin(member, params)
                solve_s = _solve(solver, writer, problem.step_delay_s)
                # The stream's one open counts in its first member's time (and its close, below, in
                # the last's): a member's total is what it cost the job.
                total_s = time.perf_counter() - t0 + (open_s if i == 0 else 0.0)
                summary = {"member": member, "params": [float(p) for p in params], "engine": cfg.stream.engine,
                           "steps": writer.member_steps, "contact": contact, "stream": writer.name,
                           "open_s": round(open_s, 4) if i == 0 else 0.0, "solve_s": round(solve_s, 4),
                           "total_s": round(total_s, 4)}
                print(f"[simulate] job {job}: member {member}: {writer.member_steps} steps sent in {writer.name} "
                      f"in {summary['total_s']:.2f} s (solve {solve_s:.2f} s)", file=sys.stderr)
                summaries.append(summary)
                if i < len(to_send) - 1:
                    pending = _settle(cfg, trainer_pid, [*pending, (member, summary)], wait=False)
                else:
                    pending.append((member, summary))
            current = None
            t_close = time.perf_counter()
        summary["close_s"] = round(time.perf_counter() - t_close, 4)
        summary["total_s"] = round(summary["total_s"] + summary["close_s"], 4)
    except (SolverError, StreamError, TrainerLostError, MemberRejected) as exc:
        if current is not None:
            note_failure(cfg, current, str(exc), final=getattr(exc, "final", None))
        raise
    _settle(cfg, trainer_pid, pending, wait=True)
    for member in to_send:
        cfg.member_failure(member).unlink(missing_ok=True)
    return summaries


def _settle(cfg: StudyConfig, trainer_pid: int | None, pending: list[tuple[int, dict]], *, wait: bool
            ) -> list[tuple[int, dict]]:
    """Write the marker of each sent member of ``pending`` that the trainer holds (its receipt is
    there), waiting for every one if ``wait``; those still to come. The next member streams
    meanwhile: a job of many short members does not wait for a checkpoint after each."""
    left = []
    for member, summary in pending:
        if left and not wait:
            left.append((member, summary))  # receipts come in the order the members were sent
            continue
        if wait or trainer_pid is None or cfg.stream.engine.upper() != "SST" or held(read_receipt(cfg, member)):
            try:
                _confirm(cfg, trainer_pid, member, summary.pop("contact", None), summary)
            except (TrainerLostError, MemberRejected) as exc:
                note_failure(cfg, member, str(exc), final=getattr(exc, "final", None))
                raise
            write_json(cfg.member_marker(member), summary)
        else:
            left.append((member, summary))
    return left


def _write_bp5_members(cfg: StudyConfig, sampling: SamplingConfig, out: Path, label: str) -> Path:
    stream = dataclasses.replace(cfg.stream, engine="BP5", xml_config=None)
    out.mkdir(parents=True, exist_ok=True)
    for member in range(sampling.n_members):
        run_member(cfg, member, sampling=sampling, stream=stream, stream_dir=out)
        if sampling.n_members >= 10 and (member + 1) % max(1, sampling.n_members // 10) == 0:
            print(f"[{label}] {member + 1}/{sampling.n_members} members written", file=sys.stderr, flush=True)
    print(f"[{label}] wrote {sampling.n_members} members to {out}", file=sys.stderr)
    return out


def make_heldout(cfg: StudyConfig) -> Path:
    """Write the held-out members with BP5 into ``cfg.heldout_dir`` (idempotent per member)."""
    return _write_bp5_members(cfg, cfg.heldout, cfg.heldout_dir, "heldout")


def make_testset(cfg: StudyConfig) -> Path:
    """Write the test members (own seed) with BP5 into ``cfg.test_dir``, for the final evaluation."""
    return _write_bp5_members(cfg, cfg.test, cfg.test_dir, "test")

