"""Training isolation: train-step times of the trainer's loop while member streams arrive, vs from memory.

The model, optimiser, train step and buffer are the real ones (datamove.training.step, a StudyConfig
from validate_config of a small dict, datamove.reservoir.make_buffer); the trainer process runs with
torch.set_num_threads(1) in every case, and with glibc malloc's thresholds pinned (see pin_malloc).
A step is timed with perf_counter around ``buffer.sample`` + ``train_step``.

memory:    the buffer is filled from memory (random samples) before the loop; nothing streams.
           Run before and after the streaming runs; the reference is the two runs pooled.
streaming: the same loop (same seed, same pre-filled buffer) while ``--writers`` processes stream
           ``--steps`` steps each by the stream contract (MemberWriter, pre-computed random fields,
           flat out unless --step-delay) into datamove's ingest process(es) (IngestSpec + run_ingest,
           shared-memory slots, queues), and the loop drains the events into the buffer between
           steps as datamove.training.online.train_online does (its drain is copied here: it is
           inline in train_online). Only steps that start between the first and the last sample's
           arrival count; ``--repeats`` runs are pooled.

Ratio = p99 streaming / p99 memory; target <= 1.25.

    python benchmarks/bench_isolation.py [--nx 64] [--writers 4 [2 1 ...]] [--steps 3000] [--repeats 2]
                                         [--memory-steps 400] [--step-delay 0] [--nice N]

Exit code: 0 PASS, 1 FAIL, 2 not conclusive (other processes used more than NOISE_WARN_CORES of the
machine during a run: it is shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # stream_harness, also in spawned children

import stream_harness as h  # noqa: E402

P99_RATIO_TARGET = 1.25
WARMUP_STEPS = 20
RUN_TIMEOUT_S = 300.0
NOISE_WARN_CORES = 0.25  # foreign CPU load above which the results are flagged as disturbed


@dataclass(frozen=True)
class Run:
    label: str
    step_ms: np.ndarray  # sample + train_step of each timed step
    drain_ms: np.ndarray  # the event drain and buffer puts before each timed step (streaming only)
    samples: int = 0  # samples streamed into the buffer
    stream_s: float = 0.0  # first to last sample's arrival
    trainer_cores: float = 0.0  # CPU load of the training process over the timed window
    all_cores: float = 0.0  # CPU load of every process of the case over the timed window
    foreign_cores: float = 0.0  # CPU load of all other processes on the machine then (noise)

    @property
    def batches_per_s(self) -> float:
        """Trainer throughput: batches/s if the loop did nothing but these steps and drains."""
        drain = self.drain_ms.mean() if len(self.drain_ms) else 0.0
        return 1e3 / (self.step_ms.mean() + drain)

    def pct(self, q: float, which: str = "step") -> float:
        values = self.step_ms if which == "step" else self.drain_ms
        return float(np.percentile(values, q)) if len(values) else float("nan")


def merge(runs: list[Run]) -> Run:
    """Repeats of one case as one run: step times pooled, loads averaged over the timed time."""
    w = np.array([r.stream_s for r in runs])
    return Run(
        runs[0].label,
        np.concatenate([r.step_ms for r in runs]),
        np.concatenate([r.drain_ms for r in runs]),
        samples=sum(r.samples for r in runs),
        stream_s=float(w.sum()),
        trainer_cores=float(np.average([r.trainer_cores for r in runs], weights=w)),
        all_cores=float(np.average([r.all_cores for r in runs], weights=w)),
        foreign_cores=max(r.foreign_cores for r in runs),
    )


class Trainer:
    """The training side of ``train_online``: model, optimiser, scheduler and buffer of a study."""

    def __init__(self, cfg, seed: int = 0):
        import torch

        from datamove.reservoir import make_buffer
        from datamove.training.step import build_surrogate, make_optimizer, surrogate_args

        torch.manual_seed(seed)
        self.cfg = cfg
        margs = surrogate_args(cfg)
        self.model = build_surrogate(margs)
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg)
        ny, nx = cfg.solver.ny, cfg.solver.nx
        self.buffer = make_buffer(
            cfg.reservoir.policy,
            capacity=cfg.reservoir.capacity,
            watermark=cfg.reservoir.watermark,
            x_dim=margs["in_dim"],
            y_shape=(ny, nx),
            seed=seed,
        )
        # Fill the buffer from memory: random inputs in the parameter ranges, random fields.
        gen = torch.Generator().manual_seed(seed)
        low, high = torch.tensor(margs["x_low"]), torch.tensor(margs["x_high"])
        for i in range(cfg.reservoir.capacity):
            x = low + torch.rand(len(low), generator=gen) * (high - low)
            y = margs["y_low"] + torch.rand((ny, nx), generator=gen) * (margs["y_high"] - margs["y_low"])
            self.buffer.put(x, y, member=-1, step=i)
        self.loss_sum = torch.zeros(())

    def step(self) -> float:
        """One batch as train_online runs it; returns its time (sample + train_step) in ms."""
        from datamove.training.step import train_step

        t0 = time.perf_counter()
        b = self.buffer.sample(self.cfg.trainer.batch_size)
        loss = train_step(self.model, self.optimizer, b.x, b.y)
        dt = time.perf_counter() - t0
        self.scheduler.step()
        self.loss_sum += loss
        return dt * 1e3


def pin_malloc() -> bool:
    """Fix glibc malloc's mmap and trim thresholds in this (the trainer's) process.

    Left dynamic, they make the same train step take ~6 or ~10 ms here depending on the process's
    allocation history: MiB-sized tensors allocated and freed every step (gradients with
    zero_grad(set_to_none=True), batches) are either reused from the heap or mmapped/trimmed and
    page-faulted in again (costly in this VM). The streaming loop's small allocations can flip the
    regime, so without pinning the comparison would measure the allocator, not the streams.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def run_memory(cfg, n_steps: int, label: str) -> Run:
    trainer = Trainer(cfg)
    for _ in range(WARMUP_STEPS):
        trainer.step()
    with h.CpuMonitor([os.getpid()]) as mon:
        t0 = time.perf_counter()
        steps = np.array([trainer.step() for _ in range(n_steps)])
        t1 = time.perf_counter()
    return Run(
        label, steps, np.array([]), trainer_cores=mon.load(t0, t1), all_cores=mon.load(t0, t1),
        foreign_cores=mon.foreign_load(t0, t1),
    )


def run_streaming(pool: h.Pool, cfg, *, writers: int, ingest_workers: int, step_delay_s: float, nice: int) -> Run:
    """The trainer's loop while ``writers`` members stream in (the drain copies online.py's loop)."""
    trainer = Trainer(cfg)
    members = list(range(writers))
    with h.ScratchDir() as stream_dir:
        ingest = h.Ingest(cfg, members, ingest_workers, cfg.trainer.slots, stream_dir, nice=nice).start()
        try:
            h.wait_settled(ingest.pids)  # the trainer is up before the solvers
            for _ in range(WARMUP_STEPS):
                trainer.step()
            for m in members:
                pool.submit(m, h.writer_job(cfg, m, stream_dir, step_delay_s=step_delay_s))
            pool.expect({"ready": writers})
            others = [pool.procs[m].pid for m in members] + ingest.pids
            with h.CpuMonitor([os.getpid(), *others]) as mon:
                pool.go(members)
                steps, arrivals = _loop(trainer, ingest)
                pool.expect({"written": writers})
        finally:
            ingest.close()
    bad = {m: e for m, e in ingest.ended.items() if e[0] != "complete"}
    if bad or len(arrivals) != writers * cfg.solver.n_steps:
        raise RuntimeError(f"streaming lost data: {len(arrivals)} samples, ends {ingest.ended}")
    first, last = arrivals[0], arrivals[-1]
    timed = [(s, d) for (t, s, d) in steps if first <= t <= last]
    if not timed:
        raise RuntimeError("no train step fell inside the streaming window: stream more steps (--steps)")
    step_ms, drain_ms = (np.array(v) for v in zip(*timed))
    t0 = min(t for (t, _, _) in steps if first <= t <= last)
    return Run(
        f"streaming, {writers} writer(s)",
        step_ms,
        drain_ms,
        samples=len(arrivals),
        stream_s=last - first,
        trainer_cores=mon.load(t0, last, [os.getpid()]),
        all_cores=mon.load(t0, last),
        foreign_cores=mon.foreign_load(t0, last),
    )


def _loop(trainer: Trainer, ingest: h.Ingest):
    """train_online's loop body (event drain, dispatch of appearing streams to idle ingest workers,
    buffer puts, one batch), without the ledger, logging and validation.

    Returns (steps, arrivals): steps = (start time, step ms, drain ms before it) of each batch;
    arrivals = when each streamed sample was in the buffer. Member ends are in ``ingest.ended``."""
    import torch

    buffer, slots = trainer.buffer, ingest.slots
    params: dict[int, torch.Tensor] = {}
    waiting: deque[tuple[int, int, float, int]] = deque()
    arrivals: list[float] = []
    steps: list[tuple[float, float, float]] = []
    fatal: list[str] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S

    def handle(ev) -> None:  # as train_online's handle, minus the ledger
        kind = ev[0]
        if kind == "step":
            _, member, step, t, slot = ev
            waiting.append((member, step, t, slot))
        elif kind == "info":
            params[ev[1]] = torch.as_tensor(ev[2], dtype=torch.float32)
        elif kind == "end":
            ingest.handle_end(ev)
        elif kind == "fatal":
            fatal.append(ev[2])
        elif kind == "done":
            fatal.append(f"ingest worker {ev[1]} exited early")

    while not ingest.all_ended or waiting:
        if time.monotonic() > deadline:
            raise RuntimeError(f"streaming run: no end after {RUN_TIMEOUT_S:g} s")
        t_drain = time.perf_counter()
        # ---- as train_online: bounded drain of the event queue, dispatch, buffer puts, slots back
        idle = not waiting and not buffer.ready()
        for ev in ingest.poll(timeout=0.05 if idle else 0.0):
            handle(ev)
        if fatal:
            raise RuntimeError("ingest process failed:\n" + fatal[0])
        ingest.dispatch()
        while waiting and buffer.can_put():
            member, step, t, slot = waiting.popleft()
            x = torch.cat([params[member], torch.tensor([t], dtype=torch.float32)])
            buffer.put(x, torch.from_numpy(slots[slot]), member=member, step=step)
            ingest.release(slot)
            arrivals.append(time.perf_counter())
        # ---- one batch (the buffer is full from the start, so always ready)
        t_step = time.perf_counter()
        drain_ms = (t_step - t_drain) * 1e3
        steps.append((t_step, trainer.step(), drain_ms))
    return steps, arrivals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nx", type=int, default=64, help="grid nx x nx (default 64)")
    parser.add_argument("--writers", type=int, nargs="+", default=[4], help="member streams at once; several values give several rows (default 4)")
    parser.add_argument("--steps", type=int, default=3000, help="steps each writer streams (default 3000)")
    parser.add_argument("--repeats", type=int, default=2, help="streaming runs per writer count, step times pooled (default 2)")
    parser.add_argument("--memory-steps", type=int, default=400, help="timed steps of each memory run (default 400)")
    parser.add_argument("--step-delay", type=float, default=0.0, help="sleep of each writer after each step, s (default 0: flat out)")
    parser.add_argument(
        "--nice", type=int, default=None,
        help="nice value of the writer and ingest processes (default: the config defaults ensemble.nice and "
        "trainer.ingest_nice, as datamove runs them; 0 shows the scheduler's default)",
    )
    parser.add_argument(
        "--no-pin-malloc", action="store_true",
        help="leave glibc malloc's thresholds dynamic in the trainer (see pin_malloc; default: pinned)",
    )
    parser.add_argument("--ingest-workers", type=int, default=None, help="ingest processes (default: the config default)")
    args = parser.parse_args(argv)

    pinned = False if args.no_pin_malloc else pin_malloc()

    import torch

    torch.set_num_threads(1)
    cfg_of = lambda n_members: h.study_config(  # noqa: E731
        nx=args.nx, ny=args.nx, n_steps=args.steps, n_members=n_members, trainer={"device": "cpu"}
    )
    cfg = cfg_of(max(args.writers))
    if args.nice is None:
        args.nice = cfg.trainer.ingest_nice
        if cfg.solver_nice != args.nice:
            raise SystemExit("ensemble.nice and trainer.ingest_nice defaults differ: pass --nice")
    workers = args.ingest_workers or cfg.trainer.ingest_workers
    t = cfg.trainer
    print(
        f"fc model {dict(t.model_args)} on a {args.nx}x{args.nx} grid, batch {t.batch_size}, Adam; "
        f"{cfg.reservoir.policy} buffer {cfg.reservoir.capacity} (pre-filled); torch.set_num_threads(1) in the "
        f"trainer; glibc malloc thresholds {'pinned' if pinned else 'dynamic'} in the trainer; "
        f"{os.cpu_count()} cores here.\nstreaming: writers flat out"
        + (f" (+{args.step_delay:g} s a step)" if args.step_delay else "")
        + f", {args.steps} steps each, min({workers}, writers) ingest process(es), {t.slots} slots, writers and ingest at nice "
        f"{args.nice}, {args.repeats} run(s) "
        "pooled.\nstep: buffer.sample + train_step (ms); drain: event drain + buffer puts before a step (ms); "
        "batch/s: 1000 / mean(step + drain);\ncores: CPU load of the trainer process / of all processes of "
        "the case over the timed window; others: CPU load of every other process on the machine then (noise)."
    )
    runs = [run_memory(cfg, args.memory_steps, "memory (before)")]
    with h.Pool(max(args.writers)) as pool:
        for proc in pool.procs:
            os.setpriority(os.PRIO_PROCESS, proc.pid, args.nice)
        streaming = [
            merge([
                run_streaming(
                    pool, cfg_of(w), writers=w, ingest_workers=workers, step_delay_s=args.step_delay, nice=args.nice
                )
                for _ in range(args.repeats)
            ])
            for w in args.writers
        ]
    runs += [run_memory(cfg, args.memory_steps, "memory (after)")]
    pooled = np.concatenate([runs[0].step_ms, runs[1].step_ms])
    ref_p99, ref_p50 = float(np.percentile(pooled, 99)), float(np.percentile(pooled, 50))

    header = (
        f"{'case':<24} {'steps':>6} {'median':>7} {'p90':>7} {'p99':>7} {'max':>7} {'p99/mem':>8} "
        f"{'med/mem':>8} {'drain p50':>9} {'drain p99':>9} {'batch/s':>8} {'samples/s':>10} {'cores':>10} {'others':>6}"
    )
    print(header)
    print("-" * len(header))

    def row(r: Run, ratio: str = "", ratio50: str = "") -> None:
        rate = f"{r.samples / r.stream_s:,.0f}" if r.samples else ""
        cores = f"{r.trainer_cores:.2f}/{r.all_cores:.2f}"
        drain = (f"{r.pct(50, 'drain'):>9.2f} {r.pct(99, 'drain'):>9.2f}") if len(r.drain_ms) else f"{'':>9} {'':>9}"
        print(
            f"{r.label:<24} {len(r.step_ms):>6} {r.pct(50):>7.2f} {r.pct(90):>7.2f} {r.pct(99):>7.2f} "
            f"{r.step_ms.max():>7.2f} {ratio:>8} {ratio50:>8} {drain} {r.batches_per_s:>8.1f} {rate:>10} {cores:>10} "
            f"{r.foreign_cores:>6.2f}"
        )

    row(runs[0])
    row(runs[1])
    print(
        f"{'memory (pooled)':<24} {len(pooled):>6} {ref_p50:>7.2f} {np.percentile(pooled, 90):>7.2f} "
        f"{ref_p99:>7.2f} {pooled.max():>7.2f} {'1.00':>8} {'1.00':>8} {'':>9} {'':>9} {1e3 / pooled.mean():>8.1f}"
    )
    verdicts = []
    for r in streaming:
        ratio = r.pct(99) / ref_p99
        verdicts.append((r.label, ratio))
        row(r, f"{ratio:.2f}", f"{r.pct(50) / ref_p50:.2f}")
    noise = max(r.foreign_cores for r in [*runs, *streaming])
    summary = ", ".join(f"{label}: {v:.2f}" for label, v in verdicts)
    verdict, code = h.verdict(all(v <= P99_RATIO_TARGET for _, v in verdicts), noise, NOISE_WARN_CORES)
    print(f"p99 step time streaming / memory, target <= {P99_RATIO_TARGET:g}: {summary} -> {verdict}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
