"""Running ensemble members: a solver feeding a stream (SST to the trainer, or BP5 files)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from datamove.config import SamplingConfig, StreamConfig, StudyConfig
from datamove.solvers import HeatSolver, get_solver, member_params
from datamove.streaming.contract import join_names
from datamove.gate import confirm_trainer
from datamove.streaming.watchdog import Watchdog
from datamove.streaming.writer import MemberWriter


def params_of(sampling: SamplingConfig, member: int):
    """The parameters of member ``member`` (float64 [n_params]); the same on every run."""
    return member_params(
        ranges=sampling.ranges,
        sampler=sampling.sampler,
        seed=sampling.seed,
        member=member,
        n_members=sampling.n_members,
    )


def run_member(
    cfg: StudyConfig,
    member: int,
    *,
    sampling: SamplingConfig,
    stream: StreamConfig,
    stream_dir: Path,
    watchdog: Watchdog | None = None,
    step_delay_s: float = 0.0,
) -> dict:
    """Solve one member and write every step to its stream. Returns a small summary.

    ``step_delay_s`` emulates a slower solver (``solver.step_delay_s``, training members only).
    """
    params = params_of(sampling, member)
    solver_cls = get_solver(cfg.solver_name)
    solver: HeatSolver = solver_cls(config=cfg.solver, params=params)
    attributes = {
        "member": member,
        "params": params,
        "param_names": join_names(sampling.names),
        "solver": cfg.solver_name,
        **solver.constants(),
    }
    t0 = time.perf_counter()
    solve_s = 0.0
    writer = MemberWriter(
        stream=stream, stream_dir=stream_dir, member=member, attributes=attributes, watchdog=watchdog
    )
    with writer:
        t_open = time.perf_counter() - t0
        steps = solver.steps()
        while True:
            ts = time.perf_counter()
            try:
                k, t, u = next(steps)
            except StopIteration:
                break
            solve_s += time.perf_counter() - ts
            writer.write_step(time=t, fields={"u": u})
            if step_delay_s:
                time.sleep(step_delay_s)
    return {
        "member": member,
        "params": [float(p) for p in params],
        "steps": writer.steps_written,
        "engine": stream.engine,
        "open_s": round(t_open, 4),
        "solve_s": round(solve_s, 4),
        "total_s": round(time.perf_counter() - t0, 4),
    }


def _confirm(cfg: StudyConfig, trainer_pid: int | None, member: int) -> None:
    """Called as soon as the member's stream has closed (see confirm_trainer)."""
    if trainer_pid is not None:
        confirm_trainer(cfg, pid=trainer_pid, member=member)


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
        _write_json(marker, summary)
    return summary


def _send(cfg: StudyConfig, member: int, *, watchdog: Watchdog, trainer_pid: int | None, label: str) -> dict:
    """Stream one training member, confirm it reached a live trainer, report it; its summary."""
    summary = run_member(
        cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir, watchdog=watchdog,
        step_delay_s=cfg.step_delay_s,
    )
    _confirm(cfg, trainer_pid, member)
    print(
        f"[simulate] {label}: {summary['steps']} steps sent ({cfg.stream.engine}) in "
        f"{summary['total_s']:.2f} s (solve {summary['solve_s']:.2f} s)",
        file=sys.stderr,
    )
    return summary


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


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
    """``datamove simulate --job J``: the members of job J one after another, one stream each.

    One process for several members pays the start-up (interpreter, numpy, adios2) once. With SST
    each member's stream is read by the trainer before the next one opens. Each member's marker
    (``members/member-K.json``) is written as soon as it is sent; ``marker`` gets the job summary.
    """
    members = job_members(cfg, job)
    _nice(cfg)
    summaries = []
    with Watchdog() as watchdog:  # before any ADIOS2 object: it forks
        for member in members:
            summary = _send(cfg, member, watchdog=watchdog, trainer_pid=trainer_pid, label=f"job {job}: member {member}")
            summaries.append(summary)
            _write_json(cfg.member_marker(member), summary)  # as soon as it is sent
    if marker is not None:
        _write_json(marker, {"job": job, "members": summaries})
    return summaries


def _write_bp5_members(cfg: StudyConfig, sampling: SamplingConfig, out: Path, label: str) -> Path:
    stream = dataclasses.replace(cfg.stream, engine="BP5", xml_config=None)
    out.mkdir(parents=True, exist_ok=True)
    for member in range(sampling.n_members):
        run_member(cfg, member, sampling=sampling, stream=stream, stream_dir=out)
    print(f"[{label}] wrote {sampling.n_members} members to {out}", file=sys.stderr)
    return out


def make_heldout(cfg: StudyConfig) -> Path:
    """Write the held-out members with BP5 into ``cfg.heldout_dir`` (idempotent per member)."""
    return _write_bp5_members(cfg, cfg.heldout, cfg.heldout_dir, "heldout")


def make_testset(cfg: StudyConfig) -> Path:
    """Write the test members (own seed) with BP5 into ``cfg.test_dir``, for the final evaluation."""
    return _write_bp5_members(cfg, cfg.test, cfg.test_dir, "test")
