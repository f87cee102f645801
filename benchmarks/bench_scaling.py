"""Trainer ingest against the number of concurrent member streams, with 1 and 2 trainer ranks.

Each trainer rank is a process of its own that runs what ``train_online`` runs for ingest: its
member feed (:class:`~datamove.streaming.feed.MemberFeed`: an
:class:`~datamove.streaming.pool.IngestPool` with one ingest process per member it reads at once:
the README's advice, ``trainer.ingest_workers`` = concurrent members of the rank; the dispatch of
each stream that appears), and after each poll the feed's intake: the slots of the steps that
arrived copied into preallocated torch storage in one gather (as ``Buffer.put_many``) and returned.
Under 2 ranks, rank r reads members m with m % 2 == r, as data-parallel training does. No training:
this measures the ingest side alone (the isolation of training from ingest is
benchmarks/bench_isolation.py).

The writers are ``members`` processes that write pre-computed float32 nx x nx fields through the
stream contract (MemberWriter, the config's SST parameters), flat out: producers are not the
bottleneck, so the rate measured is what the trainer side can take in. Rate: samples (all members,
all ranks) over the time from the first step in a rank's hands to the last one in any rank's.

    python benchmarks/bench_scaling.py [--members 1 2 4 8 16] [--ranks 1 2] [--nx 64 512]
                                       [--steps 1000] [--mib-per-member 64]

Prints one table row per (nx, ranks, members): samples/s, MiB/s, samples/s per member, the busy
cores of writers + ingest + consumers (of os.cpu_count()), CPU microseconds per sample, and the load
of other processes (noise); then, per nx and ranks, where the rate saturates (the first member count
after which doubling the members adds less than 15 %) and the 2-rank / 1-rank ratio at 16 members.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # stream_harness, also in spawned children

import stream_harness as h  # noqa: E402

RUN_TIMEOUT_S = 300.0
NOISE_WARN_CORES = 0.25
SATURATION_GAIN = 1.15  # doubling the members must add at least 15 % to count as "still scaling"


def rank_main(rank: int, ranks: int, members: list[int], job: dict, ctl, results) -> None:
    """A trainer rank's ingest side: pool up, report ready, wait for go, consume to the end."""
    import torch

    # One thread, as a trainer rank on a machine this small runs (datamove set-threads): torch's
    # OpenMP threads spin after each parallel copy, and two ranks' spinning threads starved the
    # writers (512x512, 2 ranks: 200-400 samples/s at 2 busy cores, against 630-920 with 1 rank).
    torch.set_num_threads(1)

    cfg = h.study_config(nx=job["nx"], ny=job["nx"], n_steps=job["steps"], n_members=job["n_members"])
    mine = [m for m in members if m % ranks == rank]
    cfg = h.trainer_config(cfg, Path(job["root"]), ingest_workers=len(mine), slots=max(job["slots"], len(mine)))
    ingest = h.Ingest(cfg, mine, clean=rank == 0)  # one rank removes stale contact files, as train_online
    try:
        ingest.start()
        h.wait_settled(ingest.pids)  # the ingest processes have imported before the solvers start
        results.put(("ready", rank, ingest.pids))
        if ctl.get() != "go":
            return
        store = h.Store(256, cfg.problem.n_inputs, cfg.problem.sample_shape)  # as the reservoir's storage
        stamps: list[float] = []
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not ingest.ended:
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {rank}: no end after {RUN_TIMEOUT_S:g} s ({len(stamps)} samples)")
            n = ingest.take(store, timeout=0.02)
            if n:
                stamps.extend([time.perf_counter()] * n)
        if ingest.lost:
            raise RuntimeError(f"rank {rank}: members not complete: {ingest.lost}")
        results.put(("stamps", rank, stamps))
    except Exception as exc:  # the coordinator must hear of it, not wait forever
        results.put(("error", rank, repr(exc)))
    finally:
        ingest.close()


def run(pool: h.Pool, *, nx: int, members: int, ranks: int, steps: int, slots: int) -> dict:
    ids = list(range(members))
    cfg = h.study_config(nx=nx, ny=nx, n_steps=steps, n_members=members)
    with h.ScratchDir() as root:
        stream_dir = h.trainer_config(cfg, root).stream_dir  # the ranks' (trainer_config in rank_main)
        stream_dir.mkdir(parents=True, exist_ok=True)
        job = {"nx": nx, "steps": steps, "n_members": members, "slots": slots, "root": str(root)}
        results = h.CTX.Queue()
        ctls = [h.CTX.Queue() for _ in range(ranks)]
        procs = [
            h.CTX.Process(target=rank_main, args=(r, ranks, ids, job, ctls[r], results), name=f"rank-{r}")
            for r in range(ranks)
        ]
        for p in procs:
            p.start()
        try:
            ready = [_get(results, "ready") for _ in range(ranks)]
            ingest_pids = [pid for msg in ready for pid in msg[2]]
            for m in ids:
                pool.submit(m, h.writer_job(cfg, m, stream_dir))
            pool.expect({"ready": members})
            pids = [p.pid for p in procs] + ingest_pids + [pool.procs[m].pid for m in ids]
            with h.CpuMonitor(pids, period=0.05) as monitor:
                pool.go(ids)
                for q in ctls:
                    q.put("go")
                out = [_get(results, "stamps") for _ in range(ranks)]
                pool.expect({"written": members}, timeout_s=RUN_TIMEOUT_S)
        finally:
            for q in ctls:
                q.put(None)
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
    stamps = np.sort(np.concatenate([np.asarray(msg[2]) for msg in out]))
    if len(stamps) != members * steps:
        raise RuntimeError(f"lost data: {len(stamps)}/{members * steps} samples")
    t0, t1 = stamps[0], stamps[-1]
    rate = len(stamps) / (t1 - t0)
    return {
        "rate": rate,
        "mib_s": rate * nx * nx * 4 / 2**20,
        "cores": monitor.load(t0, t1),
        "cpu_us": monitor.total() / len(stamps) * 1e6,
        "others": monitor.foreign_load(t0, t1),
    }


def _get(results, kind: str) -> tuple:
    msg = results.get(timeout=RUN_TIMEOUT_S)
    if msg[0] == "error":
        raise RuntimeError(f"rank {msg[1]} failed: {msg[2]}")
    if msg[0] != kind:
        raise RuntimeError(f"expected {kind!r} from a rank, got {msg!r}")
    return msg


def saturation(rows: list[tuple[int, float]]) -> str:
    """The member count after which doubling adds less than SATURATION_GAIN, or 'not reached'."""
    for (m0, r0), (_m1, r1) in zip(rows, rows[1:]):
        if r1 < SATURATION_GAIN * r0:
            return f"{m0} members"
    return "not reached"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="concurrent member streams")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="trainer ranks (default 1 2)")
    parser.add_argument("--nx", type=int, nargs="+", default=[64, 512], help="field sizes nx x nx (default 64 512)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per member at nx=64 (default 1000)")
    parser.add_argument(
        "--mib-per-member", type=float, default=256.0,
        help="at larger fields, steps per member are cut to about this many MiB (default 256: 256 steps at 512x512)",
    )
    parser.add_argument("--slots", type=int, default=64, help="hand-off slots per rank (default 64, the config default)")
    args = parser.parse_args(argv)

    print(
        f"Trainer ingest vs concurrent members: flat-out contract writers -> per-rank IngestPool (one ingest "
        f"process per member of the rank) -> torch copy; {os.cpu_count()} cores here.\n"
        "samples/s and MiB/s: all ranks together; per member: samples/s / members; cores: busy cores of writers, "
        "ingest and ranks over the window; CPU us: CPU microseconds per sample, all those processes; others: load "
        "of every other process (noise)"
    )
    header = (
        f"{'nx':>5} {'ranks':>5} {'members':>7} {'steps':>6} {'samples/s':>10} {'MiB/s':>8} {'per member':>10} "
        f"{'cores':>6} {'CPU us':>7} {'others':>6}"
    )
    print(header)
    print("-" * len(header), flush=True)
    table: dict[tuple[int, int], list[tuple[int, float]]] = {}
    noisy = 0.0
    with h.Pool(max(args.members)) as pool:
        for nx in args.nx:
            per_member_mib = nx * nx * 4 / 2**20
            steps = args.steps if nx <= 64 else max(50, min(args.steps, int(args.mib_per_member / per_member_mib)))
            for ranks in args.ranks:
                for members in args.members:
                    if members < ranks:
                        continue
                    r = run(pool, nx=nx, members=members, ranks=ranks, steps=steps, slots=args.slots)
                    noisy = max(noisy, r["others"])
                    table.setdefault((nx, ranks), []).append((members, r["rate"]))
                    print(
                        f"{nx:>5} {ranks:>5} {members:>7} {steps:>6} {r['rate']:>10,.0f} {r['mib_s']:>8.1f} "
                        f"{r['rate'] / members:>10,.0f} {r['cores']:>6.2f} {r['cpu_us']:>7.0f} {r['others']:>6.2f}",
                        flush=True,
                    )
    print()
    for (nx, ranks), rows in table.items():
        best = max(rows, key=lambda mr: mr[1])
        print(f"nx={nx}, {ranks} rank(s): saturates at {saturation(rows)}; best {best[1]:,.0f} samples/s with {best[0]} members")
    for nx in args.nx:
        one, two = dict(table.get((nx, 1), [])), dict(table.get((nx, 2), []))
        common = sorted(set(one) & set(two))
        if common:
            m = common[-1]
            print(f"nx={nx}: 2 ranks / 1 rank at {m} members: {two[m] / one[m]:.2f}")
    if noisy > NOISE_WARN_CORES:
        print(f"DISTURBED: other processes used up to {noisy:.2f} cores during a run; rerun on a quiet machine")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
