"""Time one implicit Euler heat step: exact DST-I solve (HeatSolver.step) vs conjugate gradient.

Both methods solve the identical system ``heat_matrix @ u_next = heat_rhs(u)`` on the same steps
(each step starts from the same previous field), and both are compared with a sparse LU direct
solve of that system. The conjugate gradient settings are the reference framework's: rtol 1e-4,
warm-started from the previous field.

    python benchmarks/bench_solver.py [--n 1000] [--steps 3] [--direct-n N]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse.linalg as spla

from datamove.solvers import HeatConfig, HeatSolver, heat_matrix, heat_rhs

PARAMS = (300.0, 100.0, 500.0, 200.0, 400.0)  # t_init, then walls x=0, x=Lx, y=0, y=Ly
CG_RTOL = 1e-4
SPEEDUP_TARGET = 20.0
# splu of the 1000 x 1000 system takes ~6 s and ~2 GB here; beyond that the fill-in grows too fast.
MAX_DIRECT_N = 1000
# The exact step is cheap, so it is timed several times per step: a median over more samples is
# less at the mercy of whatever else shares the 2 cores.
DST_REPEATS = 5


@dataclass(frozen=True, kw_only=True)
class Result:
    """Per-step medians (times) and maxima (errors) over the steps of one grid size."""

    n: int
    dst_s: float
    cg_s: float
    cg_iters: float
    cg_vs_dst: float  # max |u_cg - u_dst|
    dst_vs_direct: float | None  # max |u_dst - u_direct|; None when no direct solve was run
    cg_vs_direct: float | None
    direct_note: str


def run(*, n: int, n_steps: int, direct: bool) -> Result:
    """Step an n x n member ``n_steps`` times with both methods (and a direct solve if ``direct``)."""
    config = HeatConfig(nx=n, ny=n, n_steps=n_steps)
    solver = HeatSolver(config=config, params=PARAMS)
    matrix = heat_matrix(config)

    direct_note = "no direct solve at this size"
    lu = None
    if direct:
        t0 = time.perf_counter()
        lu = spla.splu(matrix.tocsc(), permc_spec="MMD_AT_PLUS_A")
        direct_note = (
            f"direct = scipy.sparse.linalg.splu at {n} x {n}: factorised once in "
            f"{time.perf_counter() - t0:.1f} s, {lu.L.nnz + lu.U.nnz:,} nonzeros in L+U"
        )

    u = solver.initial_field()
    solver.step(u)  # warm-up: scipy.fft plans and caches its twiddle factors on the first call

    dst_times, cg_times, cg_iters = [], [], []
    cg_vs_dst, dst_vs_direct, cg_vs_direct = 0.0, 0.0, 0.0
    for _ in range(n_steps):
        # Both timings include building the right-hand side, which the solver does inside step().
        for _ in range(DST_REPEATS):
            t0 = time.perf_counter()
            u_dst = solver.step(u)
            dst_times.append(time.perf_counter() - t0)

        iters = [0]

        def count(_xk, iters=iters):
            iters[0] += 1

        t0 = time.perf_counter()
        rhs = heat_rhs(config, u, PARAMS).ravel()
        u_cg, info = spla.cg(matrix, rhs, x0=u.ravel(), rtol=CG_RTOL, callback=count)
        cg_times.append(time.perf_counter() - t0)
        if info != 0:
            raise RuntimeError(f"cg did not converge (info={info})")
        cg_iters.append(iters[0])
        u_cg = u_cg.reshape(u.shape)

        cg_vs_dst = max(cg_vs_dst, float(np.abs(u_cg - u_dst).max()))
        if lu is not None:
            u_direct = lu.solve(rhs).reshape(u.shape)
            dst_vs_direct = max(dst_vs_direct, float(np.abs(u_dst - u_direct).max()))
            cg_vs_direct = max(cg_vs_direct, float(np.abs(u_cg - u_direct).max()))
        # The exact field carries the trajectory, so both methods always solve the same step.
        u = u_dst

    return Result(
        n=n,
        dst_s=float(np.median(dst_times)),
        cg_s=float(np.median(cg_times)),
        cg_iters=float(np.mean(cg_iters)),
        cg_vs_dst=cg_vs_dst,
        dst_vs_direct=dst_vs_direct if lu is not None else None,
        cg_vs_direct=cg_vs_direct if lu is not None else None,
        direct_note=direct_note,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="grid is n x n interior nodes (default 1000)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    parser.add_argument(
        "--direct-n",
        type=int,
        default=None,
        help=f"grid size of the direct-solve comparison (default: n, capped at {MAX_DIRECT_N})",
    )
    args = parser.parse_args(argv)
    direct_n = min(args.n, MAX_DIRECT_N) if args.direct_n is None else args.direct_n

    timed = run(n=args.n, n_steps=args.steps, direct=direct_n == args.n)
    accuracy = timed if direct_n == args.n else run(n=direct_n, n_steps=args.steps, direct=True)

    config = HeatConfig(nx=args.n, ny=args.n)
    speedup = timed.cg_s / timed.dst_s
    print(
        f"heat step at {args.n} x {args.n} ({args.n**2:,} unknowns): D={config.diffusivity}, "
        f"dt={config.dt}, L={config.lx} x {config.ly}, params={PARAMS}; "
        f"median time of {args.steps} steps (x{DST_REPEATS} repeats for DST) after one warm-up DST step"
    )
    print(accuracy.direct_note)
    if direct_n != args.n:
        print(f"NOTE: the max|u - u_direct| column comes from a separate run at {direct_n} x {direct_n}")
    header = f"{'method':<34} {'time/step [ms]':>14} {'speed-up':>9} {'max|u - u_direct|':>18} {'max|u - u_dst|':>15}"
    print(header)
    print("-" * len(header))

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2e}"

    print(
        f"{'HeatSolver.step (DST-I, exact)':<34} {timed.dst_s * 1e3:>14.1f} {speedup:>8.1f}x "
        f"{fmt(accuracy.dst_vs_direct):>18} {fmt(0.0):>15}"
    )
    print(
        f"{f'cg rtol={CG_RTOL:g}, x0=prev ({timed.cg_iters:.0f} it)':<34} {timed.cg_s * 1e3:>14.1f} "
        f"{1.0:>8.1f}x {fmt(accuracy.cg_vs_direct):>18} {fmt(timed.cg_vs_dst):>15}"
    )
    passed = speedup >= SPEEDUP_TARGET
    print(f"speed-up target >= {SPEEDUP_TARGET:g}x: {speedup:.1f}x -> {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
