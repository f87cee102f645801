"""Time the built-in solvers' steps.

Heat: one implicit Euler step, exact DST-I solve (HeatSolver.step) vs conjugate gradient. Both
methods solve the identical system ``heat_matrix @ u_next = heat_rhs(u)`` on the same steps (each
step starts from the same previous field), and both are compared with a sparse LU direct solve of
that system. The conjugate gradient settings are the reference framework's: rtol 1e-4,
warm-started from the previous field.

Navier-Stokes: one internal step of NavierStokesSolver against its FFT floor, the time of the
scipy.fft calls the pseudo-spectral step cannot do without, made alone with the same sizes and
workers setting. ``step_hat`` (the Fourier-space step ``steps()`` runs) evaluates the nonlinear term
twice (Heun), each time 2 irfft2 (ux, uy) and 2 rfft2 (ux uy, uy^2 - ux^2): 4 + 4 transforms.
``step`` (physical field in and out) adds one rfft2 and one irfft2: 5 + 5.

    python benchmarks/bench_solver.py [--solver {heat,navier-stokes,both}] [--n 1000] [--steps 3]
        [--direct-n N] [--ns-n 256 1024] [--ns-repeats 20]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.sparse.linalg as spla

from datamove.solvers import HeatConfig, HeatSolver, heat_matrix, heat_rhs
from datamove.solvers.navier_stokes import NavierStokesConfig, NavierStokesSolver

PARAMS = (300.0, 100.0, 500.0, 200.0, 400.0)  # t_init, then walls x=0, x=Lx, y=0, y=Ly
CG_RTOL = 1e-4
SPEEDUP_TARGET = 20.0
# splu of the 1000 x 1000 system takes ~6 s and ~2 GB here; beyond that the fill-in grows too fast.
MAX_DIRECT_N = 1000
# The exact step is cheap, so it is timed several times per step: a median over more samples is
# less at the mercy of whatever else shares the 2 cores.
DST_REPEATS = 5

NS_PARAMS = (1e-3, 0.1, 1.0)  # viscosity, forcing_amplitude, ic_amplitude: the least viscous default
NS_RATIO_TARGET = 3.0
# A few steps first: scipy.fft plans on its first calls, and the field should be a flow, not the IC.
NS_WARMUP_STEPS = 5
# (irfft2, rfft2) calls of one step at the least: two nonlinear evaluations of 2 + 2 each; step()
# transforms its physical input and output on top.
NS_FLOOR_FFTS = {"step_hat": (4, 4), "step": (5, 5)}


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


@dataclass(frozen=True, kw_only=True)
class NSResult:
    """Median seconds per Navier-Stokes step, and of its FFT floor, at one grid size."""

    n: int
    step_hat_s: float
    floor_hat_s: float
    step_s: float
    floor_s: float


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


def run_navier_stokes(*, n: int, repeats: int) -> NSResult:
    """Median times of ``step_hat``, ``step`` and their FFT floors at n x n, each timed ``repeats`` times."""
    solver = NavierStokesSolver(config=NavierStokesConfig(n=n), params=NS_PARAMS, seed=0)
    w_hat = scipy.fft.rfft2(solver.initial_vorticity(), workers=-1)
    for _ in range(NS_WARMUP_STEPS):
        w_hat = solver.step_hat(w_hat)
        solver.step(scipy.fft.irfft2(w_hat, s=(n, n), workers=-1))

    def floor(n_inverse: int, n_forward: int, coefficients: np.ndarray, field: np.ndarray) -> float:
        """Seconds for ``n_inverse`` irfft2 of ``coefficients`` [n, n//2+1] and ``n_forward`` rfft2 of ``field`` [n, n].

        The calls run once untimed first: right after a step they are ~10% slower (allocator and
        caches), and the floor should be the FFTs at their best, not flattered ratios.
        """

        def calls() -> None:
            for _ in range(n_inverse):
                scipy.fft.irfft2(coefficients, s=(n, n), workers=-1)
            for _ in range(n_forward):
                scipy.fft.rfft2(field, workers=-1)

        calls()
        t0 = time.perf_counter()
        calls()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"step_hat": [], "step": [], "floor_hat": [], "floor": []}
    for _ in range(repeats):
        # Interleaved, so a burst of load from whatever shares the cores hits a step and its floor alike.
        w = scipy.fft.irfft2(w_hat, s=(n, n), workers=-1)
        t0 = time.perf_counter()
        w_next_hat = solver.step_hat(w_hat)
        times["step_hat"].append(time.perf_counter() - t0)
        times["floor_hat"].append(floor(*NS_FLOOR_FFTS["step_hat"], w_hat, w))
        t0 = time.perf_counter()
        solver.step(w)
        times["step"].append(time.perf_counter() - t0)
        times["floor"].append(floor(*NS_FLOOR_FFTS["step"], w_hat, w))
        w_hat = w_next_hat
    if not np.all(np.isfinite(w_hat)):
        raise RuntimeError(f"Navier-Stokes state not finite after {NS_WARMUP_STEPS + repeats} steps at n={n}")
    medians = {name: float(np.median(samples)) for name, samples in times.items()}
    return NSResult(n=n, step_hat_s=medians["step_hat"], floor_hat_s=medians["floor_hat"],
                    step_s=medians["step"], floor_s=medians["floor"])


def bench_heat(args: argparse.Namespace) -> bool:
    """Time and print the heat step; True when it meets the speed-up target."""
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
    return passed


def bench_navier_stokes(args: argparse.Namespace) -> bool:
    """Time and print the Navier-Stokes step against its FFT floor; True when every grid meets the target."""
    results = [run_navier_stokes(n=n, repeats=args.ns_repeats) for n in args.ns_n]
    config = NavierStokesConfig()
    print(
        f"Navier-Stokes internal step (IF-Heun, 2/3 de-aliased, Basdevant nonlinear term): "
        f"params (viscosity, forcing_amplitude, ic_amplitude)={NS_PARAMS}, h=dt/substeps={config.internal_dt:g}; "
        f"median of {args.ns_repeats} interleaved repeats after {NS_WARMUP_STEPS} warm-up steps; "
        f"scipy.fft workers=-1 ({len(os.sched_getaffinity(0))} CPUs)"
    )
    print("FFT floor = that many irfft2 + rfft2 calls of the grid's size alone, nothing else")
    header = (
        f"{'grid':<12} {'method':<30} {'time/step [ms]':>14} {'FFTs (inv+fwd)':>15} "
        f"{'FFT floor [ms]':>14} {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for method, step_s, floor_s, key in (
            ("step_hat (Fourier state)", r.step_hat_s, r.floor_hat_s, "step_hat"),
            ("step (physical in/out)", r.step_s, r.floor_s, "step"),
        ):
            n_inverse, n_forward = NS_FLOOR_FFTS[key]
            print(
                f"{f'{r.n} x {r.n}':<12} {method:<30} {step_s * 1e3:>14.2f} {f'{n_inverse}+{n_forward}':>15} "
                f"{floor_s * 1e3:>14.2f} {step_s / floor_s:>6.2f}x"
            )
    worst = max(r.step_hat_s / r.floor_hat_s for r in results)
    passed = worst <= NS_RATIO_TARGET
    print(
        f"NS step / FFT floor: {worst:.2f} -> {'PASS' if passed else 'FAIL'} "
        f"(step_hat, worst grid; target <= {NS_RATIO_TARGET:g}x)"
    )
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--solver",
        choices=("heat", "navier-stokes", "both"),
        default="both",
        help="which solver's step to time (default both)",
    )
    parser.add_argument("--n", type=int, default=1000, help="heat: grid is n x n interior nodes (default 1000)")
    parser.add_argument("--steps", type=int, default=3, help="heat: timed steps (default 3)")
    parser.add_argument(
        "--direct-n",
        type=int,
        default=None,
        help=f"heat: grid size of the direct-solve comparison (default: n, capped at {MAX_DIRECT_N})",
    )
    parser.add_argument(
        "--ns-n", type=int, nargs="+", default=[256, 1024], help="Navier-Stokes: grid sizes n (default 256 1024)"
    )
    parser.add_argument(
        "--ns-repeats", type=int, default=20, help="Navier-Stokes: timed steps per grid size (default 20)"
    )
    args = parser.parse_args(argv)
    passed = True
    if args.solver in ("heat", "both"):
        passed &= bench_heat(args)
    if args.solver == "both":
        print()
    if args.solver in ("navier-stokes", "both"):
        passed &= bench_navier_stokes(args)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
