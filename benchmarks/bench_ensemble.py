"""Ensemble throughput: members per second delivered to the trainer, against the solver's own compute.

At workstation sizes a member solves in milliseconds while a job pays seconds to start (interpreter,
numpy/scipy, adios2). This runs the same ensemble with several values of ``ensemble.members_per_job``
(k) through the real commands, the way ``snakemake --cores 2`` runs them: the online trainer
(``datamove train``, one core) reads the streams while the jobs (``datamove simulate --job J``) run
one after another on the other core. With ``--engine BP5`` there is no trainer: the jobs write files.

For each k: T = wall time from the first job's launch to the last job's exit; members/s = N / T;
solve = the solvers' own compute (sum of ``solve_s`` in the member markers); stream = time inside
the member runs not spent solving (open, send, close); start-up = T - sum of the member runs
(process start, imports, watchdog, exit): the share lost to start-up is start-up / T.

    python benchmarks/bench_ensemble.py [--nx 100] [--steps 100] [--members 24] [--per-job 1 8 24]
                                        [--engine SST|BP5 ...]

With both engines (``--engine SST BP5``), each k runs SST then BP5 and the table ends with SST's
members/s as a fraction of BP5's (issue 32's target: at least 0.7 with 24 members a job). With SST
and several members a job, the job's members go in one stream (``stream.per_job``, the default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PY = [sys.executable, "-m", "datamove"]


def run_ensemble(root: Path, args, k: int, engine: str) -> dict:
    cfg = {
        "study": f"ens-{engine.lower()}-k{k}", "results_dir": str(root / "results"), "data_dir": str(root / "data"),
        "solver": {"nx": args.nx, "ny": args.nx, "n_steps": args.steps},
        "ensemble": {"n_members": args.members, "members_per_job": k},
        "heldout": {"n_members": 1},
        "stream": {"engine": engine, "open_timeout_s": 120, "member_timeout_s": 120},
        "reservoir": {"capacity": 500, "watermark": 50},
        "trainer": {"batch_size": 32, "extra_batches": 0, "log_every": 1000, "device": "cpu"},
    }
    path = root / f"{engine.lower()}-k{k}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    study = root / "results" / cfg["study"]
    trainer = None
    if engine == "SST":
        subprocess.run([*PY, "make-heldout", "--config", path], check=True, capture_output=True)
        log = (root / f"train-k{k}.log").open("w")
        trainer = subprocess.Popen([*PY, "train", "--config", path, "--threads", "1"], stdout=log, stderr=subprocess.STDOUT)
        subprocess.run([*PY, "wait-trainer", "--config", path, "--timeout", "120"], check=True, capture_output=True)
    n_jobs = -(-args.members // k)
    t0 = time.perf_counter()
    for job in range(n_jobs):  # one solver slot beside the trainer, as under --cores 2
        proc = subprocess.run([*PY, "simulate", "--config", path, "--job", str(job)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"job {job} failed:\n{proc.stderr[-2000:]}")
    wall = time.perf_counter() - t0
    if trainer is not None:
        if trainer.wait(timeout=600) != 0:
            raise RuntimeError(f"trainer failed: see {root / f'train-k{k}.log'}")
    # The markers (member-K.json), not the start notes (member-K.started.json).
    markers = sorted((study / "members").glob("member-[0-9][0-9][0-9][0-9][0-9][0-9].json"))
    members = [json.loads(p.read_text()) for p in markers]
    assert len(members) == args.members, f"{len(members)} member markers, expected {args.members}"
    solve = sum(m["solve_s"] for m in members)
    runs = sum(m["total_s"] for m in members)
    return {"k": k, "engine": engine, "jobs": n_jobs, "wall": wall, "solve": solve, "stream": runs - solve,
            "startup": wall - runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nx", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--members", type=int, default=24)
    parser.add_argument("--per-job", type=int, nargs="+", default=[1, 8, 24])
    parser.add_argument("--engine", choices=["SST", "BP5"], nargs="+", default=["SST"])
    args = parser.parse_args()
    print(f"# {args.members} members x {args.steps} steps of {args.nx}x{args.nx}, engine {' and '.join(args.engine)}, "
          f"{os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:
        for k in args.per_job:
            for engine in args.engine:
                r = run_ensemble(Path(tmp), args, k, engine)
                rows.append(r)
                print(f"k={k} {engine}: {r['wall']:.1f} s", flush=True)
    print("\n| engine | members per job | jobs | wall (s) | members/s | solve (s) | stream (s) | stream a member (s) "
          "| start-up (s) | share lost to start-up | solve / wall |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {r['k']} | {r['jobs']} | {r['wall']:.1f} | {args.members / r['wall']:.2f} | "
              f"{r['solve']:.2f} | {r['stream']:.1f} | {r['stream'] / args.members:.3f} | {r['startup']:.1f} | "
              f"{100 * r['startup'] / r['wall']:.0f} % | {100 * r['solve'] / r['wall']:.1f} % |")
    for engine in args.engine:
        mine = [r for r in rows if r["engine"] == engine]
        for r in mine[1:]:
            print(f"\n{engine}: members_per_job={r['k']} delivers {mine[0]['wall'] / r['wall']:.1f}x the members/s of "
                  f"members_per_job={mine[0]['k']}")
    if set(args.engine) == {"SST", "BP5"}:
        for k in args.per_job:
            sst, bp5 = ([r for r in rows if r["k"] == k and r["engine"] == e][0] for e in ("SST", "BP5"))
            print(f"\nmembers_per_job={k}: SST delivers {bp5['wall'] / sst['wall']:.2f}x the members/s of BP5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
