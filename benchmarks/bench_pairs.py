"""Pair and window building: the trainer's intake rate with autoregressive samples (pairs, and
windows of several steps) against direct samples, from the same streams.

Every case runs the real ingest path of ``datamove.training.online``: ``--members`` contract
writer processes (pre-computed random fields, flat out), the member feed (ingest processes,
shared-memory slots, a pipe each) and its intake into the trainer's buffer (the reservoir policy,
built as the trainer builds it: bench_ingest.buffer_for); they differ only in the trainer's sample
keys and, for windows, in how the buffer stores them:

direct:          each step arriving is one sample [n_fields, ny, nx], gathered from its slot.
autoregressive:  a pair (h = K = n = 1): each step is kept (in its slot) as the input of the pair
                 that ends ``--stride`` steps later, and is itself the target of the pair that
                 starts that much earlier: a sample [2 n_fields, ny, nx] is gathered from the two
                 slots, half each, by the put (MemberFeed._keep, _window, intake; Buffer.put_many
                 with the fields in parts).
windows:         a window of L = h + n K steps (trainer.history h = 1, bundle K = 4, unroll n = 2:
                 L = 9), ``--stride`` apart: each step is kept in its slot while a later window can
                 take it, and the put takes the window's L slots, one part each, with a key for
                 each step: the buffer (window = L) stores each step once, so it copies only the
                 steps it does not hold (one a window, once a member's first window is in).
pairs-whole:     the pairs into a buffer that stores each pair whole (window = 1), as before.
windows-whole:   the same windows into a buffer that stores each window whole (window = 1: the L
                 steps gathered from the slots into the sample's storage, each step copied into
                 each of the L windows that hold it): how windows were stored before.

A rate is samples put into the storage over the time from the first to the last (an autoregressive
member gives steps - (L - 1) stride of them); each run is bench_ingest.py's datamove case with those
trainer keys set. The cases are interleaved (ABC CBA ...), ``--repeats`` runs each; the table shows
each case's median and spread, and the ratio of its median to direct's.
Verdict: autoregressive / direct and windows / direct >= RATIO_TARGET at every size.

    python benchmarks/bench_pairs.py [--nx 64 128] [--steps 3000] [--members 4] [--repeats 5] [--stride 1]

Exit code: 0 PASS, 1 FAIL, 2 not conclusive (other processes used more than NOISE_WARN_CORES).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # stream_harness, also in spawned children

import bench_ingest  # noqa: E402
import stream_harness as h  # noqa: E402

RATIO_TARGET = 0.9
NOISE_WARN_CORES = 0.25
WINDOWS = {"sample": "autoregressive", "history": 1, "bundle": 4, "unroll": 2}
# case -> (the trainer keys it sets besides trainer.sample_stride, each step stored once)
CASES = {
    "direct": ({"sample": "direct"}, True),
    "autoregressive": ({"sample": "autoregressive"}, True),
    "pairs-whole": ({"sample": "autoregressive"}, False),
    "windows": (WINDOWS, True),
    "windows-whole": (WINDOWS, False),
}
TARGETED = ("autoregressive", "windows")  # the cases the target is about


def run(pool: h.Pool, *, case: str, nx: int, steps: int, members: int, stride: int) -> tuple[float, float]:
    """One run of ``case`` through bench_ingest's datamove case: (samples/s, foreign load)."""
    keys, steps_once = CASES[case]
    m = bench_ingest.run_datamove(pool, nx=nx, steps=steps, members=members, trainer={**keys, "sample_stride": stride},
                                  store_of=lambda cfg: bench_ingest.buffer_for(cfg, steps_once=steps_once))
    return m.rate, m.foreign_cores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nx", type=int, nargs="+", default=[64, 128], help="field sizes nx x nx (default 64 128)")
    parser.add_argument("--steps", type=int, default=3000, help="steps each member streams (default 3000)")
    parser.add_argument("--members", type=int, default=4, help="member streams at once (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each case per size (default 5)")
    parser.add_argument("--stride", type=int, default=1,
                        help="trainer.sample_stride of the pairs and windows (default 1)")
    args = parser.parse_args(argv)
    print(
        f"{args.members} contract writers flat out, {args.steps} steps each, into the member feed (default ingest "
        f"workers and slots) and its intake into the trainer's buffer; {args.repeats} interleaved runs per case; "
        f"stride {args.stride}; {os.cpu_count()} cores here."
    )
    header = f"{'nx':>5} {'case':<15} {'samples/s':>10} {'min..max':>17} {'ratio':>6} {'others':>6}"
    print(header)
    print("-" * len(header))
    ratios: dict[str, list[float]] = {c: [] for c in CASES if c != "direct"}
    noise = 0.0
    with h.Pool(args.members) as pool:
        for nx in args.nx:
            rates: dict[str, list[float]] = {c: [] for c in CASES}
            for r in range(args.repeats):
                for case in list(CASES) if r % 2 == 0 else reversed(CASES):
                    rate, foreign = run(pool, case=case, nx=nx, steps=args.steps, members=args.members,
                                        stride=args.stride)
                    rates[case].append(rate)
                    noise = max(noise, foreign)
            med = {c: h.median(v) for c, v in rates.items()}
            for case in CASES:
                v = rates[case]
                ratio = med[case] / med["direct"]
                if case != "direct":
                    ratios[case].append(ratio)
                print(f"{nx:>5} {case:<15} {med[case]:>10,.0f} {f'{min(v):,.0f}..{max(v):,.0f}':>17} "
                      f"{(f'{ratio:.2f}' if case != 'direct' else ''):>6} {noise:>6.2f}", flush=True)
    ok = all(r >= RATIO_TARGET for c in TARGETED for r in ratios[c])
    verdict, code = h.verdict(ok, noise, NOISE_WARN_CORES)
    print(f"target: autoregressive / direct and windows / direct >= {RATIO_TARGET:g} at every size; "
          + "; ".join(f"{c} {' / '.join(f'{r:.2f}' for r in v)}" for c, v in ratios.items()) + f" -> {verdict}"
          + " (pairs-whole, windows-whole: the storage before, not targets)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
