"""Running ensemble members: a solver feeding a stream (SST to the trainer, or BP5 files)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from datamove.config import SamplingConfig, StreamConfig, StudyConfig
from datamove.solvers import HeatSolver, get_solver, member_params
from datamove.streaming.contract import join_names
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
) -> dict:
    """Solve one member and write every step to its stream. Returns a small summary."""
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
            if cfg.step_delay_s:
                time.sleep(cfg.step_delay_s)
    return {
        "member": member,
        "params": [float(p) for p in params],
        "steps": writer.steps_written,
        "engine": stream.engine,
        "open_s": round(t_open, 4),
        "solve_s": round(solve_s, 4),
        "total_s": round(time.perf_counter() - t0, 4),
    }


def simulate(cfg: StudyConfig, member: int, *, marker: Path | None = None) -> dict:
    """``datamove simulate``: one training member, streamed with the configured engine."""
    if not 0 <= member < cfg.ensemble.n_members:
        raise ValueError(f"--member {member} is outside the ensemble [0, {cfg.ensemble.n_members})")
    with Watchdog() as watchdog:  # before any ADIOS2 object: it forks
        summary = run_member(
            cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir, watchdog=watchdog
        )
    print(
        f"[simulate] member {member}: {summary['steps']} steps sent ({cfg.stream.engine}) in "
        f"{summary['total_s']:.2f} s (solve {summary['solve_s']:.2f} s)",
        file=sys.stderr,
    )
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(summary, indent=1))
    return summary


def make_heldout(cfg: StudyConfig) -> Path:
    """Write the held-out members with BP5 into ``cfg.heldout_dir`` (idempotent per member)."""
    stream = dataclasses.replace(cfg.stream, engine="BP5", xml_config=None)
    out = cfg.heldout_dir
    out.mkdir(parents=True, exist_ok=True)
    for member in range(cfg.heldout.n_members):
        run_member(cfg, member, sampling=cfg.heldout, stream=stream, stream_dir=out)
    print(f"[heldout] wrote {cfg.heldout.n_members} members to {out}", file=sys.stderr)
    return out
