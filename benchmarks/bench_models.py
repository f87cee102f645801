"""Train-step throughput of every registered model, and the reservoir's draw against that step.

At the size of ``--config`` (default config/workstation.yaml: 100x100 heat fields, batch 32, a
reservoir of 5,000 samples), for each model of the registry with its default arguments (built by
``build_surrogate`` from the validated config with ``trainer.model`` set to it): the time of one
``train_step`` (Adam, the shared step of both trainers) on a fixed batch, after warm-up steps, as
samples/s. Against it, the time of one ``Buffer.sample(batch)`` from a full buffer of the
reservoir policy (the online trainer's draw), measured in the same process with the same threads.
Medians of ``--repeats`` timings (``--draw-repeats`` for the draw).
Target: draw / train step < 10 % for every model.

    python benchmarks/bench_models.py [--config config/workstation.yaml] [--models fc fno mppde unet]
                                      [--repeats 5] [--warmup 2] [--draw-repeats 50] [--threads 1]
                                      [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import yaml

from datamove.config import StudyConfig, validate_config
from datamove.models import MODELS
from datamove.problems.samples import SampleSpec
from datamove.reservoir import make_buffer
from datamove.training.step import MixedPrecision, build_surrogate, make_optimizer, surrogate_args, train_step

DRAW_TARGET = 0.10
FILL_CHUNK = 500  # samples per put_many while filling the buffer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # time the work, not its launch


def median_s(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def study_of(raw: dict, model: str, sample: str = "direct") -> StudyConfig:
    """The benchmark's config with ``trainer.model`` = model and its default arguments."""
    trainer = {**raw.get("trainer", {}), "model": model, "model_args": {}, "sample": sample}
    return StudyConfig.from_dict(validate_config({**raw, "trainer": trainer}))


def step_time(cfg: StudyConfig, args, device: torch.device, precision: str = "fp32") -> tuple[float, int]:
    """Median seconds of one train step of cfg's model (its samples, ``precision``), and its number
    of parameters."""
    problem = cfg.problem
    # The heat problem declares the bounds of its fields and inputs: the data are not looked at.
    norm = problem.normalisation(times=np.zeros(1), fields=np.zeros((1, *problem.sample_shape), np.float32))
    torch.manual_seed(0)
    model = build_surrogate(surrogate_args(cfg, norm)).to(device)
    optimizer, _ = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    b = cfg.trainer.batch_size
    x = (model.x_low.cpu() + torch.rand(b, problem.n_inputs, generator=gen) * model.x_span.cpu()).to(device)
    shape = SampleSpec.of(cfg).stored_shape(problem.sample_shape)  # autoregressive: input and target
    y = (100 + 400 * torch.rand(b, *shape, generator=gen)).to(device)
    amp = MixedPrecision(precision, device)
    for _ in range(args.warmup):
        train_step(model, optimizer, x, y, precision=amp)  # allocator, Adam state, lazy inits
    seconds = median_s(lambda: train_step(model, optimizer, x, y, precision=amp), args.repeats, device)
    n_params = sum(p.numel() for p in model.parameters())
    return seconds, n_params


def draw_time(cfg: StudyConfig, args, device: torch.device) -> float:
    """Median seconds of one draw of a batch from a full reservoir-policy buffer of cfg's capacity."""
    problem, capacity = cfg.problem, cfg.reservoir.capacity
    buf = make_buffer("reservoir", capacity=capacity, watermark=1, x_dim=problem.n_inputs,
                      y_shape=problem.sample_shape, seed=0, device=device)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(FILL_CHUNK, problem.n_inputs, generator=gen)
    y = torch.rand(FILL_CHUNK, *problem.sample_shape, generator=gen)
    k = 0
    while len(buf) < capacity:
        idx = torch.arange(k, k + FILL_CHUNK)
        buf.put_many(x, y, member=idx // problem.n_steps, step=idx % problem.n_steps)
        k += FILL_CHUNK
    for _ in range(3):
        buf.sample(cfg.trainer.batch_size)
    return median_s(lambda: buf.sample(cfg.trainer.batch_size), args.draw_repeats, device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/workstation.yaml",
                        help="study whose grid, batch size and reservoir capacity are used")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="timed train steps per model (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed train steps first (default 2)")
    parser.add_argument("--draw-repeats", type=int, default=50, help="timed draws (default 50)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, as the workflow's trainer)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16", "fp16"], default=["fp32"],
                        help="trainer.precision of the train step; several give a row each (default fp32; fp16: cuda)")
    parser.add_argument("--sample", choices=["direct", "autoregressive"], default="direct",
                        help="trainer.sample: autoregressive models also take the fields of a step (default direct)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with open(args.config) as fh:
        raw = yaml.safe_load(fh)
    base = study_of(raw, "fc")
    n_fields, ny, nx = base.problem.sample_shape
    b = base.trainer.batch_size

    draw_s = draw_time(base, args, device)
    rows = [(name, p, *step_time(study_of(raw, name, args.sample), args, device, p))
            for name in args.models for p in args.precision]

    print(
        f"train step of each model (defaults) vs a draw from the reservoir; {args.config}: {n_fields} field(s) "
        f"of {ny}x{nx}, {args.sample} samples, batch {b}, reservoir of {base.reservoir.capacity:,}; device {device}, torch threads "
        f"{torch.get_num_threads()}, medians of {args.repeats} steps ({args.warmup} warm-up) and "
        f"{args.draw_repeats} draws; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"draw (Buffer.sample({b}), reservoir policy): {draw_s * 1e3:.2f} ms")
    header = (f"{'model':<6} {'precision':>9} {'parameters':>11} {'step [ms]':>10} {'samples/s':>10} "
              f"{'vs fp32':>7} {'draw/step':>10}  result")
    print(header)
    print("-" * len(header))
    ok = True
    fp32 = {name: step_s for name, p, step_s, _ in rows if p == "fp32"}
    for name, p, step_s, n_params in rows:
        ratio = draw_s / step_s
        ok &= ratio < DRAW_TARGET
        speedup = f"x{fp32[name] / step_s:.2f}" if name in fp32 and p != "fp32" else ""
        print(f"{name:<6} {p:>9} {n_params:>11,} {step_s * 1e3:>10.1f} {b / step_s:>10.1f} {speedup:>7} "
              f"{ratio * 100:>9.2f}%  {'PASS' if ratio < DRAW_TARGET else 'FAIL'}")
    print(f"target: draw / train step < {DRAW_TARGET:.0%} for every model -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
