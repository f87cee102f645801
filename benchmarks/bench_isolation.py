"""Training isolation: the trainer's batch rate and step times while member streams arrive, vs fed from memory.

The model, optimiser, train step and buffer are the real ones (datamove.training.step, a StudyConfig
from validate_config of a small dict, datamove.reservoir.make_buffer), on ``--device`` (model and
buffer); the trainer process runs with torch.set_num_threads(1) in every case, and with glibc
malloc's thresholds pinned (see pin_malloc). Both cases run the same loop, train_online's
(OnlineSource.poll and Training.run, copied here: the source's poll and intake, then one batch of
``buffer.sample`` + ``train_step``, with the intake of what arrived meanwhile on a second thread
beside the train step as trainer.overlap_intake does, or between the steps with
``--between-steps``), on the same model, batch size and kind of buffer, pre-filled from memory
with the same random samples: they differ only in what the intake takes in.

memory:    nothing arrives (the intake takes nothing). Run before and after the streaming runs;
           the reference is the two runs pooled.
streaming: ``--writers`` processes stream ``--steps`` steps each by the stream contract
           (MemberWriter, pre-computed random fields, flat out unless --step-delay) into the
           trainer's member feed (datamove.streaming.feed.MemberFeed: ingest process(es),
           shared-memory slots, a pipe each); an intake puts the steps that arrived into the
           buffer (one put_many that gathers their fields straight from the slots), once enough
           have come, a worker has half its slots waiting, or the oldest waited 50 ms
           (MemberFeed._due). Only batches that
           start between the first and the last sample's arrival count; ``--repeats`` runs are
           pooled.

Verdict: batch/s streaming / memory >= 0.9 (batches over the wall time of the timed loop: what
intake and the streaming processes cost training) and p99 step time streaming / memory <= 1.25.
Also printed: the intake cost per sample (time in the feed's poll + intake of the timed batches,
between and beside the steps, / the samples they took in).

    python benchmarks/bench_isolation.py [--nx 64] [--writers 4 [2 1 ...]] [--steps 3000] [--repeats 2]
                                         [--memory-steps 400] [--step-delay 0] [--nice N] [--device cpu]
                                         [--between-steps]

Exit code: 0 PASS, 1 FAIL, 2 not conclusive (other processes used more than NOISE_WARN_CORES of the
machine during a run: it is shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # stream_harness, also in spawned children

import stream_harness as h  # noqa: E402

BATCH_RATIO_TARGET = 0.9
P99_RATIO_TARGET = 1.25
WARMUP_STEPS = 20
RUN_TIMEOUT_S = 300.0
NOISE_WARN_CORES = 0.25  # foreign CPU load above which the results are flagged as disturbed

# Columns of the loop's record of each batch (see _loop).
START, INTAKE_MS, TAKEN, STEP_MS, END, BESIDE_MS = range(6)


@dataclass(frozen=True)
class Run:
    label: str
    step_ms: np.ndarray  # sample + train_step of each timed batch (with the wait for the intake beside it)
    intake_ms: np.ndarray  # the source's poll + intake before each timed batch
    beside_ms: np.ndarray  # the source's poll + intake beside each timed train step (0: none)
    taken: int  # samples the timed batches' intakes put into the buffer
    loop_s: float  # wall time of the timed batches, first start to last end
    samples: int = 0  # samples streamed into the buffer
    stream_s: float = 0.0  # first to last sample's arrival
    trainer_cores: float = 0.0  # CPU load of the training process over the timed window
    all_cores: float = 0.0  # CPU load of every process of the case over the timed window
    foreign_cores: float = 0.0  # CPU load of all other processes on the machine then (noise)

    @property
    def batches_per_s(self) -> float:
        """Trainer throughput: timed batches over the wall time they took (intake, step, and
        whatever the scheduler gave to other processes in between)."""
        return len(self.step_ms) / self.loop_s

    @property
    def intake_us_per_sample(self) -> float:
        return (self.intake_ms.sum() + self.beside_ms.sum()) * 1e3 / self.taken if self.taken else float("nan")

    def pct(self, q: float, which: str = "step") -> float:
        return float(np.percentile({"step": self.step_ms, "intake": self.intake_ms, "beside": self.beside_ms}[which], q))


def measured(label: str, rows: np.ndarray, mon: h.CpuMonitor, **streamed) -> Run:
    """The Run of the timed batches ``rows`` of a loop, with the CPU loads over their time."""
    t0, t1 = rows[0, START], rows[-1, END]
    return Run(
        label, rows[:, STEP_MS], rows[:, INTAKE_MS], rows[:, BESIDE_MS], int(rows[:, TAKEN].sum()), float(t1 - t0),
        **streamed,
        trainer_cores=mon.load(t0, t1, [os.getpid()]), all_cores=mon.load(t0, t1),
        foreign_cores=mon.foreign_load(t0, t1),
    )


def merge(runs: list[Run], label: str | None = None) -> Run:
    """Runs of one case as one run: batches pooled, loads averaged over the timed time."""
    w = np.array([r.loop_s for r in runs])
    return Run(
        label or runs[0].label,
        np.concatenate([r.step_ms for r in runs]),
        np.concatenate([r.intake_ms for r in runs]),
        np.concatenate([r.beside_ms for r in runs]),
        taken=sum(r.taken for r in runs),
        loop_s=float(w.sum()),
        samples=sum(r.samples for r in runs),
        stream_s=sum(r.stream_s for r in runs),
        trainer_cores=float(np.average([r.trainer_cores for r in runs], weights=w)),
        all_cores=float(np.average([r.all_cores for r in runs], weights=w)),
        foreign_cores=max(r.foreign_cores for r in runs),
    )


class Trainer:
    """The training side of ``train_online``: model, optimiser, scheduler and buffer of a study, on
    ``device``; the buffer pre-filled from memory (the same samples for every seed-0 trainer)."""

    def __init__(self, cfg, device, seed: int = 0):
        import torch

        from datamove.reservoir import make_buffer
        from datamove.training.step import build_surrogate, make_optimizer, surrogate_args

        torch.manual_seed(seed)
        self.cfg, self.device = cfg, device
        problem = cfg.problem
        # The heat problem declares the bounds of its fields and inputs: the data are not looked at.
        norm = problem.normalisation(times=np.zeros(1), fields=np.zeros((1, *problem.sample_shape), np.float32))
        margs = surrogate_args(cfg, norm)
        self.model = build_surrogate(margs).to(device)
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg)
        n = cfg.reservoir.capacity
        self.buffer = make_buffer(
            cfg.reservoir.policy,
            capacity=n,
            watermark=cfg.reservoir.watermark,
            x_dim=margs["in_dim"],
            y_shape=problem.sample_shape,
            seed=seed,
            device=device,
        )
        # Fill the buffer from memory: random inputs in the parameter ranges, random fields within
        # each field's bounds, as steps of the ensemble's members received earlier: streamed samples
        # that evict one never drawn are then counted in that member's ledger row, as in a real run.
        gen = torch.Generator().manual_seed(seed)
        low, high = torch.tensor(margs["x_low"]), torch.tensor(margs["x_high"])
        y_low = torch.tensor(margs["y_low"]).reshape(-1, 1, 1)
        y_high = torch.tensor(margs["y_high"]).reshape(-1, 1, 1)
        x = low + torch.rand((n, len(low)), generator=gen) * (high - low)
        y = y_low + torch.rand((n, *problem.sample_shape), generator=gen) * (y_high - y_low)
        members = cfg.ensemble.n_members
        self.buffer.put_many(x, y, member=torch.arange(n) % members, step=torch.arange(n) // members + 1)
        self.loss_sum = torch.zeros((), device=device)
        # On a GPU the loop would otherwise only queue kernels: a step's time would be its launch,
        # and the next intake's copy to the device would wait for the queued work and be charged
        # with it. One sync per batch, in both cases, keeps each figure its own.
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(self, beside=None, pool=None) -> tuple[float, int, float]:
        """One batch as train_online runs it, with ``beside()`` (-> samples taken in) on the thread
        ``pool`` during its train step, as Training.run does; returns its time (sample + train_step
        and the wait for ``beside``) in ms, and what ``beside`` took in, in how many ms."""
        from datamove.training.step import train_step

        t0 = time.perf_counter()
        b = self.buffer.sample(self.cfg.trainer.batch_size)
        job = pool.submit(_timed, beside) if beside is not None else None
        loss = train_step(self.model, self.optimizer, b.x, b.y)
        self.sync()
        n, beside_ms = job.result() if job is not None else (0, 0.0)
        dt = time.perf_counter() - t0
        self.scheduler.step()
        self.loss_sum += loss
        return dt * 1e3, n, beside_ms

    def warm_up(self) -> None:
        for _ in range(WARMUP_STEPS):
            self.step()


def _timed(work) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = work()
    return n, (time.perf_counter() - t0) * 1e3


class FromMemory:
    """The source of a loop fed from memory (the buffer, filled before the loop, is all it trains
    on): as the member feed to the loop, but its intake takes nothing in; ended after ``batches``."""

    quiet = False  # as a feed with steps waiting: the loop never waits in take

    def __init__(self, batches: int):
        self.left = batches

    def take(self, buffer, timeout: float = 0.0) -> int:
        return 0

    def trained(self) -> None:
        self.left -= 1

    @property
    def ended(self) -> bool:
        return self.left <= 0


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


def run_memory(cfg, device, n_batches: int, label: str, *, overlap: bool) -> Run:
    trainer = Trainer(cfg, device)
    trainer.warm_up()
    with h.CpuMonitor([os.getpid()]) as mon:
        rows, _ = _loop(trainer, FromMemory(n_batches), overlap=overlap)
    return measured(label, rows, mon)


def run_streaming(
    pool: h.Pool, cfg, device, *, writers: int, ingest_workers: int, step_delay_s: float, nice: int, overlap: bool
) -> Run:
    """The trainer's loop while ``writers`` members stream in (the feed's poll and intake as online.py)."""
    trainer = Trainer(cfg, device)
    members = list(range(writers))
    with h.ScratchDir() as root:
        feed_cfg = h.trainer_config(cfg, root, ingest_workers=ingest_workers, slots=cfg.trainer.slots, nice=nice)
        ingest = h.Ingest(feed_cfg, members).start()
        try:
            h.wait_settled(ingest.pids)  # the trainer is up before the solvers
            trainer.warm_up()
            for m in members:
                pool.submit(m, h.writer_job(cfg, m, feed_cfg.stream_dir, step_delay_s=step_delay_s))
            pool.expect({"ready": writers})
            others = [pool.procs[m].pid for m in members] + ingest.pids
            with h.CpuMonitor([os.getpid(), *others]) as mon:
                pool.go(members)
                rows, arrivals = _loop(trainer, ingest, overlap=overlap)
                pool.expect({"written": writers})
        finally:
            ingest.close()
    if ingest.lost or len(arrivals) != writers * cfg.problem.n_steps:
        raise RuntimeError(f"streaming lost data: {len(arrivals)} samples, ends {ingest.ends}")
    first, last = arrivals[0], arrivals[-1]
    timed = rows[(rows[:, START] >= first) & (rows[:, START] <= last)]
    if not len(timed):
        raise RuntimeError("no batch fell inside the streaming window: stream more steps (--steps)")
    return measured(
        f"streaming, {writers} writer(s)", timed, mon, samples=len(arrivals), stream_s=last - first
    )


def _loop(trainer: Trainer, source, *, overlap: bool) -> tuple[np.ndarray, list[float]]:
    """train_online's loop body (OnlineSource.poll: the source's poll, then its intake into the
    buffer, unless the last step's intake beside it just did; then one batch, with ``overlap`` the
    intake of what arrives meanwhile on a second thread beside its train step, as Training.run),
    without logging and validation, until ``source.ended``. ``source`` is the member feed
    (:class:`stream_harness.Ingest`: its poll takes the events, dispatches appearing streams to
    idle ingest workers and applies timeouts) or :class:`FromMemory`.

    Returns (rows, arrivals): rows [batches, 6], one per batch: START and END (perf_counter s),
    INTAKE_MS (poll + intake before it), TAKEN (samples the intakes before and beside it put into
    the buffer), STEP_MS, BESIDE_MS (poll + intake beside it); arrivals = when each streamed sample
    was in the buffer."""
    from concurrent.futures import ThreadPoolExecutor

    buffer = trainer.buffer
    arrivals: list[float] = []
    rows: list[tuple[float, float, int, float, float, float]] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    take = lambda: source.take(buffer)  # noqa: E731
    took = False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake") as pool:
        while not source.ended:
            if time.monotonic() > deadline:
                raise RuntimeError(f"loop: no end after {RUN_TIMEOUT_S:g} s")
            t_intake = time.perf_counter()
            # ---- as OnlineSource.poll: events, dispatch and timeouts, then the steps that arrived
            # into the buffer in one put_many when an intake is due (the buffer is full from the
            # start: training never waits for it)
            idle = source.quiet and not buffer.ready(final=source.ended)
            n = source.take(buffer, timeout=0.05 if idle else 0.0) if idle or not took else 0
            t_step = time.perf_counter()
            if n:
                arrivals.extend([t_step] * n)
            # ---- one batch (and the intake beside it)
            step_ms, n_beside, beside_ms = trainer.step(take if overlap else None, pool)
            t_end = time.perf_counter()
            took = overlap
            if n_beside:
                arrivals.extend([t_end] * n_beside)
            if hasattr(source, "trained"):
                source.trained()
            rows.append((t_intake, (t_step - t_intake) * 1e3, n + n_beside, step_ms, t_end, beside_ms))
    return np.array(rows, dtype=np.float64).reshape(-1, 6), arrivals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nx", type=int, default=64, help="grid nx x nx (default 64)")
    parser.add_argument("--writers", type=int, nargs="+", default=[4], help="member streams at once; several values give several rows (default 4)")
    parser.add_argument("--steps", type=int, default=3000, help="steps each writer streams (default 3000)")
    parser.add_argument("--repeats", type=int, default=2, help="streaming runs per writer count, batches pooled (default 2)")
    parser.add_argument("--memory-steps", type=int, default=400, help="timed batches of each memory run (default 400)")
    parser.add_argument("--step-delay", type=float, default=0.0, help="sleep of each writer after each step, s (default 0: flat out)")
    parser.add_argument(
        "--device", default="cpu",
        help="the trainer's device, where model and buffer live (trainer.device: cpu, cuda, cuda:N, auto; default cpu)",
    )
    parser.add_argument(
        "--nice", type=int, default=None,
        help="nice value of the writer and ingest processes (default: the config defaults ensemble.nice and "
        "trainer.ingest_nice, as datamove runs them; 0 shows the scheduler's default)",
    )
    parser.add_argument(
        "--no-pin-malloc", action="store_true",
        help="leave glibc malloc's thresholds dynamic in the trainer (see pin_malloc; default: pinned)",
    )
    parser.add_argument(
        "--between-steps", action="store_true",
        help="the intake between the train steps only (trainer.overlap_intake: false; default: as the config default)",
    )
    parser.add_argument("--ingest-workers", type=int, default=None, help="ingest processes (default: the config default)")
    args = parser.parse_args(argv)

    pinned = False if args.no_pin_malloc else pin_malloc()

    import torch

    from datamove.training.step import pick_device

    torch.set_num_threads(1)
    cfg_of = lambda n_members: h.study_config(  # noqa: E731
        nx=args.nx, ny=args.nx, n_steps=args.steps, n_members=n_members, trainer={"device": args.device}
    )
    cfg = cfg_of(max(args.writers))
    device = pick_device(cfg.trainer.device)
    if args.nice is None:
        args.nice = cfg.trainer.ingest_nice
        if cfg.solver_nice != args.nice:
            raise SystemExit("ensemble.nice and trainer.ingest_nice defaults differ: pass --nice")
    workers = args.ingest_workers or cfg.trainer.ingest_workers
    overlap = cfg.trainer.overlap_intake and not args.between_steps
    t = cfg.trainer
    on = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    print(
        f"fc model {dict(t.model_args)} on a {args.nx}x{args.nx} grid, batch {t.batch_size}, Adam, on {on}; "
        f"{cfg.reservoir.policy} buffer {cfg.reservoir.capacity} (pre-filled from memory) on {device}; "
        f"torch.set_num_threads(1) in the trainer; glibc malloc thresholds {'pinned' if pinned else 'dynamic'} "
        f"in the trainer; {os.cpu_count()} cores here.\nstreaming: writers flat out"
        + (f" (+{args.step_delay:g} s a step)" if args.step_delay else "")
        + f", {args.steps} steps each, min({workers}, writers) ingest process(es), {t.slots} slots, writers and ingest at nice "
        f"{args.nice}, {args.repeats} run(s) pooled; memory: the same loop, its intake takes nothing; "
        + ("the intake of what arrives during a train step beside it, on a second thread (trainer.overlap_intake)"
           if overlap else "the intake between the train steps only (--between-steps)")
        + ".\nstep: buffer.sample + train_step (ms, with the wait for the intake beside it); intake: the feed's "
        "poll + intake before a batch (ms); beside: the same beside its train step; "
        "us/sample: intake time (before and beside) / samples taken in;\nbatch/s: batches / wall time of the timed loop; "
        "cores: CPU load of the trainer process / of all processes of the case over the timed window; "
        "others: CPU load of every other process on the machine then (noise)."
    )
    runs = [run_memory(cfg, device, args.memory_steps, "memory (before)", overlap=overlap)]
    with h.Pool(max(args.writers)) as pool:
        for proc in pool.procs:
            os.setpriority(os.PRIO_PROCESS, proc.pid, args.nice)
        streaming = [
            merge([
                run_streaming(
                    pool, cfg_of(w), device, writers=w, ingest_workers=workers, step_delay_s=args.step_delay,
                    nice=args.nice, overlap=overlap,
                )
                for _ in range(args.repeats)
            ])
            for w in args.writers
        ]
    runs += [run_memory(cfg, device, args.memory_steps, "memory (after)", overlap=overlap)]
    ref = merge(runs, "memory (pooled)")

    header = (
        f"{'case':<24} {'batches':>7} {'step p50':>8} {'p99':>7} {'max':>7} {'p99/mem':>7} {'p50/mem':>7} "
        f"{'intake p50':>10} {'p99':>7} {'beside p50':>10} {'us/sample':>9} {'batch/s':>8} {'/mem':>5} {'samples/s':>9} "
        f"{'cores':>9} {'others':>6}"
    )
    print(header)
    print("-" * len(header))

    def row(r: Run) -> None:
        rate = f"{r.samples / r.stream_s:,.0f}" if r.samples else ""
        per_sample = f"{r.intake_us_per_sample:.1f}" if r.taken else ""
        print(
            f"{r.label:<24} {len(r.step_ms):>7} {r.pct(50):>8.2f} {r.pct(99):>7.2f} {r.step_ms.max():>7.2f} "
            f"{r.pct(99) / ref.pct(99):>7.2f} {r.pct(50) / ref.pct(50):>7.2f} {r.pct(50, 'intake'):>10.3f} "
            f"{r.pct(99, 'intake'):>7.3f} {r.pct(50, 'beside'):>10.3f} {per_sample:>9} {r.batches_per_s:>8.1f} "
            f"{r.batches_per_s / ref.batches_per_s:>5.2f} {rate:>9} {r.trainer_cores:>4.2f}/{r.all_cores:<4.2f} "
            f"{r.foreign_cores:>6.2f}"
        )

    for r in [*runs, ref, *streaming]:
        row(r)
    batch_ratio = [r.batches_per_s / ref.batches_per_s for r in streaming]
    p99_ratio = [r.pct(99) / ref.pct(99) for r in streaming]
    passed = all(b >= BATCH_RATIO_TARGET for b in batch_ratio) and all(p <= P99_RATIO_TARGET for p in p99_ratio)
    noise = max(r.foreign_cores for r in [*runs, *streaming])
    verdict, code = h.verdict(passed, noise, NOISE_WARN_CORES)
    joined = lambda values, spec: " / ".join(format(v, spec) for v in values)  # noqa: E731  (one per writer count)
    print(
        f"{'intake beside the steps' if overlap else 'intake between the steps'}; "
        f"targets: batch/s ratio >= {BATCH_RATIO_TARGET:g}, p99 ratio <= {P99_RATIO_TARGET:g}; "
        f"{joined(args.writers, 'd')} writer(s): intake {joined([r.intake_us_per_sample for r in streaming], '.1f')} "
        f"us/sample, p99 step streaming / memory: {joined(p99_ratio, '.2f')}; "
        f"batch/s streaming / memory: {joined(batch_ratio, '.2f')} -> {verdict}"
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
