"""Training-buffer costs: drawing a batch against a train step, and the trainer's peak memory.

(a) draw: a full buffer of ``--capacity`` samples of ``--side`` x ``--side`` fields (default 10,000
    of 64 x 64) of every policy; the time of ``buffer.sample(--batch)`` (default 256; a consuming
    policy is refilled, untimed, before each draw so that it is full) against one ``train_step`` of
    the default model (``fc``, hidden 256, 2 layers, built by ``build_surrogate`` from a validated
    config) on a batch of the same size, measured in the same process with the same threads. The
    time of one ``put`` into the full buffer is shown too. Medians of ``--repeats`` timings.
    Target: draw / train step < 10 % for every policy.

(b) memory: the real online trainer (``datamove.training.online.train_online``, reservoir policy,
    64 x 64 fields) in a process of its own, fed by real ``datamove simulate`` solvers over SST until
    the buffer has been full for a while (and checkpointed every 200 batches where the config knows
    ``trainer.checkpoint_every``), once per capacity in ``--capacities``. Peak = the trainer
    process's VmHWM (the kernel's resident high-water mark, read by the trainer itself at its end;
    the ingest processes are separate and do not depend on the capacity). The smallest capacity
    gives the constant K (interpreter, torch, model, optimiser, validation set, hand-off slots).
    Target: peak(C) <= 1.5 x C x sample_bytes + K for every capacity C.

    python benchmarks/bench_reservoir.py [--part draw memory] [--capacity 10000] [--side 64]
                                         [--batch 256] [--repeats 50] [--threads 1] [--device cpu]
                                         [--capacities 100 5000 10000 20000]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from datamove.config import StudyConfig, load_schema, validate_config
from datamove.reservoir import POLICIES, make_buffer
from datamove.training.step import build_surrogate, make_optimizer, surrogate_args, train_step

DRAW_TARGET = 0.10
MEMORY_FACTOR = 1.5
N_STEPS = 2000  # steps per member in the memory runs: few solver processes, buffer fills fast
MIB = 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # time the work, not its launch


def median_s(fn, repeats: int, device: torch.device, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------- (a) draw cost


def aten_ops(fn) -> int:
    """Number of aten ops `fn()` dispatches, nested ones included (one call, under torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name.startswith("aten::") for e in prof.events())


def bench_draw(args) -> bool:
    device = torch.device(args.device)
    cfg = StudyConfig.from_dict(validate_config({"solver": {"nx": args.side, "ny": args.side}}))
    problem = cfg.problem
    # The heat problem declares the bounds of its fields and inputs: the data are not looked at.
    norm = problem.normalisation(times=np.zeros(1), fields=np.zeros((1, *problem.sample_shape), np.float32))
    margs = surrogate_args(cfg, norm)
    model = build_surrogate(margs).to(device)
    optimizer, _ = make_optimizer(model, cfg)
    x_dim, shape = margs["in_dim"], problem.sample_shape  # a sample: [n_fields, side, side]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, x_dim, generator=gen).to(device)
    y = (100 + 400 * torch.rand(args.batch, *shape, generator=gen)).to(device)
    for _ in range(5):
        train_step(model, optimizer, x, y)  # warm-up: allocator, Adam state
    step_s = median_s(lambda: train_step(model, optimizer, x, y), args.repeats, device)
    step_ops = aten_ops(lambda: train_step(model, optimizer, x, y))

    sample_x, sample_y = torch.rand(x_dim), torch.rand(*shape)
    rows = []
    for policy in sorted(POLICIES):
        buf = make_buffer(policy, capacity=args.capacity, watermark=1, x_dim=x_dim, y_shape=shape, seed=0,
                          device=device)
        k = 0

        def put_one() -> None:
            nonlocal k
            buf.put(sample_x, sample_y, member=k % 100, step=k)  # 100 members, as a small ensemble
            k += 1

        while len(buf) < args.capacity:
            put_one()

        def refill() -> None:
            while len(buf) < args.capacity:
                put_one()

        draw_s = median_s(lambda: buf.sample(args.batch), args.repeats, device,
                          before=refill if buf.consumes else None)
        refill()
        ops = aten_ops(lambda: buf.sample(args.batch))
        refill()
        # A put into the full buffer: replacing policies evict; a consuming one takes it into the
        # slot its last draw freed (refilled after each timing).
        put_s = median_s(put_one, args.repeats, device, before=(lambda: buf.sample(1)) if buf.consumes else None)
        rows.append((policy, draw_s, put_s, ops))
        del buf

    sample_mib = args.capacity * (4 * (x_dim + math.prod(shape))) / MIB
    print(
        f"(a) draw of {args.batch} from a full buffer of {args.capacity:,} samples of {args.side}x{args.side} "
        f"({sample_mib:.0f} MiB) vs one train step of the default model (fc 256x2, batch {args.batch}); "
        f"device {device}, torch threads {torch.get_num_threads()}, medians of {args.repeats}"
    )
    print(f"train step: {step_s * 1e3:.2f} ms")
    header = f"{'policy':<10} {'draw [ms]':>10} {'draw/step':>10} {'aten ops':>8} {'put [us]':>9}  result"
    print(header)
    print("-" * len(header))
    ok = True
    for policy, draw_s, put_s, ops in rows:
        ratio = draw_s / step_s
        ok &= ratio < DRAW_TARGET
        print(f"{policy:<10} {draw_s * 1e3:>10.3f} {ratio * 100:>9.1f}% {ops:>8} {put_s * 1e6:>9.1f}  "
              f"{'PASS' if ratio < DRAW_TARGET else 'FAIL'}")
    print(f"aten ops: torch ops one draw dispatches (nested ones included; torch.profiler), step: {step_ops}. "
          "On a GPU a small draw's host time is mostly their dispatch.")
    print(f"target: draw / train step < {DRAW_TARGET:.0%} for every policy -> {'PASS' if ok else 'FAIL'}")
    return ok


# --------------------------------------------------------------------------- (b) peak memory


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _trainer_child(config_path: str, out_path: str) -> None:
    """The trainer process of one memory run: train_online, then report its own high-water mark."""
    from datamove.training.online import train_online

    torch.set_num_threads(1)
    cfg = StudyConfig.load(config_path)
    result = train_online(cfg)
    Path(out_path).write_text(json.dumps({
        "vm_hwm": _vm("VmHWM"), "vm_rss": _vm("VmRSS"), "batches": result.batches,
        "samples": result.samples_received, "wall_s": result.wall_s,
    }))


def _datamove(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datamove", *map(str, args)], check=True,
                          capture_output=True, text=True, **kw)


def memory_run(work: Path, capacity: int, side: int) -> dict:
    members = math.ceil(capacity / N_STEPS) + 1  # fills the buffer, then replaces for a member's worth
    raw = {
        "study": "bench-reservoir",
        "results_dir": str(work / f"results-{capacity}"),
        "data_dir": str(work / "data"),  # the held-out member is written once, shared by the runs
        "solver": {"nx": side, "ny": side, "n_steps": N_STEPS},
        "ensemble": {"n_members": members},
        "heldout": {"n_members": 1},
        "reservoir": {"policy": "reservoir", "capacity": capacity, "watermark": min(capacity, 100)},
        "trainer": {"batch_size": 32, "extra_batches": 50, "log_every": 200, "device": "cpu",
                    "ingest_workers": 2},
        "stream": {"open_timeout_s": 120, "member_timeout_s": 120},
    }
    if "checkpoint_every" in load_schema()["properties"]["trainer"]["properties"]:
        raw["trainer"]["checkpoint_every"] = 200
    path = work / f"config-{capacity}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(validate_config(raw)))
    cfg = StudyConfig.load(path)
    if not cfg.heldout_dir.exists():
        _datamove("make-heldout", "--config", path)
    out = work / f"peak-{capacity}.json"
    log = open(work / f"train-{capacity}.log", "w")
    ctx = mp.get_context("spawn")
    # The trainer's stdout goes to a file (the child inherits fd 1 from this redirect).
    saved = os.dup(1)
    os.dup2(log.fileno(), 1)
    try:
        trainer = ctx.Process(target=_trainer_child, args=(str(path), str(out)))
        trainer.start()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _datamove("wait-trainer", "--config", path, "--timeout", 120)
    solvers: list[subprocess.Popen] = []
    try:
        for m in range(members):  # two solvers at a time, beside the trainer
            while sum(p.poll() is None for p in solvers) >= 2:
                time.sleep(0.05)
            with open(work / f"solver-{capacity}-{m}.log", "w") as solver_log:
                solvers.append(subprocess.Popen(
                    [sys.executable, "-m", "datamove", "simulate", "--config", str(path), "--member", str(m)],
                    stdout=solver_log, stderr=subprocess.STDOUT))
        for m, p in enumerate(solvers):
            if p.wait() != 0:
                raise RuntimeError(f"solver {m} failed: {(work / f'solver-{capacity}-{m}.log').read_text()[-2000:]}")
        trainer.join(timeout=600)
    finally:
        if trainer.is_alive():
            trainer.terminate()
            trainer.join()
        log.close()
    if trainer.exitcode != 0:
        raise RuntimeError(f"trainer failed (exit {trainer.exitcode}); see {work}/train-{capacity}.log")
    report = json.loads(out.read_text())
    report["checkpoints"] = cfg.raw["trainer"].get("checkpoint_every", 0)
    return report


def bench_memory(args) -> bool:
    capacities = sorted(args.capacities)
    sample_bytes = 4 * (6 + args.side * args.side) + 4 * 8  # x, y float32; member, step, seen, order int64
    with tempfile.TemporaryDirectory(prefix="bench-reservoir-") as tmp:
        runs = {c: memory_run(Path(tmp), c, args.side) for c in capacities}
    base_c = capacities[0]
    k = runs[base_c]["vm_hwm"]
    ckpt = runs[base_c]["checkpoints"]
    print(
        f"(b) peak resident memory of the online trainer process (VmHWM) vs capacity x sample size; "
        f"reservoir policy, {args.side}x{args.side} fields, sample = {sample_bytes:,} bytes, real solvers "
        f"over SST ({N_STEPS} steps/member), "
        + (f"checkpoint (model, optimizer, buffer) every {ckpt} batches" if ckpt else "no buffer checkpoints")
    )
    print(f"K = peak at capacity {base_c:,} = {k / MIB:.0f} MiB")
    header = (f"{'capacity':>9} {'C x S [MiB]':>11} {'samples':>8} {'batches':>8} {'peak [MiB]':>10} "
              f"{'peak-K [MiB]':>12} {'(peak-K)/CxS':>12} {'bound [MiB]':>11}  result")
    print(header)
    print("-" * len(header))
    ok = True
    for c in capacities:
        r = runs[c]
        data = c * sample_bytes
        bound = MEMORY_FACTOR * data + k
        passed = r["vm_hwm"] <= bound
        ok &= passed
        excess = (r["vm_hwm"] - k) / data if c != base_c else float("nan")
        print(f"{c:>9,} {data / MIB:>11.1f} {r['samples']:>8,} {r['batches']:>8,} {r['vm_hwm'] / MIB:>10.0f} "
              f"{(r['vm_hwm'] - k) / MIB:>12.1f} {excess:>12.2f} {bound / MIB:>11.0f}  {'PASS' if passed else 'FAIL'}")
    print(f"target: peak <= {MEMORY_FACTOR} x C x S + K for every capacity -> {'PASS' if ok else 'FAIL'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=["draw", "memory"], default=["draw", "memory"])
    parser.add_argument("--capacity", type=int, default=10_000, help="(a) samples in the full buffer")
    parser.add_argument("--side", type=int, default=64, help="fields are side x side (default 64)")
    parser.add_argument("--batch", type=int, default=256, help="(a) batch size (default 256)")
    parser.add_argument("--repeats", type=int, default=50, help="(a) timings per median (default 50)")
    parser.add_argument("--threads", type=int, default=1,
                        help="(a) torch CPU threads (default 1, as the workflow's trainer)")
    parser.add_argument("--device", default="cpu", help="(a) cpu or cuda")
    parser.add_argument("--capacities", type=int, nargs="+", default=[100, 5000, 10000, 20000],
                        help="(b) capacities, the smallest gives K (default 100 5000 10000 20000)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ok = True
    if "draw" in args.part:
        ok &= bench_draw(args)
    if "memory" in args.part:
        if "draw" in args.part:
            print()
        ok &= bench_memory(args)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
