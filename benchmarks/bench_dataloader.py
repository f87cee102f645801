"""Samples/s delivered to the train step: the offline BP5 loader against the online reservoir.

One run, one machine, the same samples (``--members`` members x ``--steps`` steps of an ``--nx``^2
heat field, written with BP5 by the real solver):

(a) reservoir: ``buffer.sample(B)`` from a reservoir holding every sample (the online trainer's
    source once its ingest has filled it), on ``--device``.
(b) offline loader: ``datamove.data.dataset.make_loader`` over ``MemberDataset`` (the offline
    trainer's source), for each reader (``memory``: each file read once, whole, per process;
    ``file``: every sample read with an ADIOS2 step selection) and number of DataLoader workers,
    with the files in the page cache (warm) and evicted from it with posix_fadvise(DONTNEED) (cold:
    the first pass over the files after eviction).

"data path": batches taken from the source and moved to the device, no training. "with train
step": the same source feeding ``train_step`` of the reference network (batches/s). The ratio
column divides the reservoir's rate by the loader's.

    python benchmarks/bench_dataloader.py [--nx 100] [--members 20] [--steps 100] [--batch 32]
                                          [--batches 300] [--device auto] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from datamove.config import StudyConfig, validate_config
from datamove.data.dataset import MemberDataset, make_loader
from datamove.ensemble.members import run_member
from datamove.reservoir import make_buffer
from datamove.training.step import build_surrogate, make_optimizer, pick_device, surrogate_args, train_step


def evict(folder: Path) -> None:
    """Drop the files' pages from the page cache (clean pages only: they were written and synced)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def make_study(root: Path, args) -> StudyConfig:
    raw = validate_config({
        "study": "bench", "results_dir": str(root / "results"), "data_dir": str(root / "data"),
        "solver": {"nx": args.nx, "ny": args.nx, "n_steps": args.steps},
        "ensemble": {"n_members": args.members},
        "stream": {"engine": "BP5"},
        "trainer": {"batch_size": args.batch, "device": args.device},
    })
    cfg = StudyConfig.from_dict(raw)
    for member in range(args.members):
        run_member(cfg, member, sampling=cfg.ensemble, stream=cfg.stream, stream_dir=cfg.stream_dir)
    return cfg


def time_source(next_batch, n: int, device, *, train=None) -> float:
    """Seconds for ``n`` batches from ``next_batch()`` moved to ``device`` (and trained on)."""
    t0 = time.perf_counter()
    for _ in range(n):
        x, y = next_batch()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if train is not None:
            train(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()  # the last copies and steps are done
    return time.perf_counter() - t0


def loader_batches(loader):
    """An endless stream of (x, y) batches from a DataLoader, epoch after epoch."""
    while True:
        for x, y, _ in loader:
            yield x, y


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nx", type=int, default=100)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=300, help="batches per warm measurement")
    parser.add_argument("--train-batches", type=int, default=100, help="batches per measurement with the train step")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    with tempfile.TemporaryDirectory(prefix="bench-dataloader-", dir=os.environ.get("BENCH_TMP")) as tmp:
        t0 = time.perf_counter()
        cfg = make_study(Path(tmp), args)
        n_samples = args.members * args.steps
        mib = n_samples * args.nx * args.nx * 4 / 2**20
        print(f"# {args.members} members x {args.steps} steps of {args.nx}x{args.nx} = {n_samples} samples "
              f"({mib:.0f} MiB, written in {time.perf_counter() - t0:.1f} s); batch {args.batch}; device {device}; "
              f"torch threads {args.threads}; {os.cpu_count()} CPUs", flush=True)
        rows = []

        # (a) the reservoir, holding every sample.
        problem = cfg.problem
        buffer = make_buffer("reservoir", capacity=n_samples, watermark=1, x_dim=problem.n_inputs,
                             y_shape=problem.sample_shape, seed=0, device=device)
        dataset = MemberDataset.from_config(cfg)
        for member in range(args.members):  # one member at a time: [steps, n_fields, ny, nx]
            idx = torch.arange(member * args.steps, (member + 1) * args.steps)
            x, y, _ = dataset.__getitems__(idx.tolist())
            buffer.put_many(x, y, member=idx // args.steps, step=idx % args.steps)
        dataset.close()
        held = buffer.held()
        norm = problem.normalisation(times=held.x[:, -1].cpu().numpy(), fields=held.y.cpu().numpy())
        del held
        margs = surrogate_args(cfg, norm)

        def reservoir_batch():
            b = buffer.sample(args.batch)
            return b.x, b.y

        time_source(reservoir_batch, 20, device)
        rate = args.batches * args.batch / time_source(reservoir_batch, args.batches, device)
        rows.append(("reservoir (online)", "memory", "-", rate))
        print(f"reservoir: {rate:,.0f} samples/s", flush=True)

        # (b) the offline loader.
        for reader in ("memory", "file"):
            for workers in args.workers:
                for cache in ("cold", "warm"):
                    ds = MemberDataset.from_config(cfg)
                    ds.reader = reader
                    loader = make_loader(ds, batch_size=args.batch, workers=workers, seed=0,
                                         pin_memory=device.type == "cuda")
                    batches = loader_batches(loader)
                    if cache == "cold":
                        evict(cfg.stream_dir)
                        n = len(ds) // args.batch  # one pass over every file, the first after eviction
                    else:
                        for _ in range(len(ds) // args.batch + 5):  # read everything once: cached
                            next(batches)
                        n = args.batches
                    rate = n * args.batch / time_source(lambda: next(batches), n, device)
                    rows.append((f"BP5 loader, {reader} reader", cache, str(workers), rate))
                    print(f"{reader} reader, {workers} worker(s), {cache}: {rate:,.0f} samples/s", flush=True)
                    del batches, loader
                    ds.close()

        # With the train step of the reference network (the loader warm).
        model = build_surrogate(margs).to(device)
        opt, _ = make_optimizer(model, cfg)

        def step(x, y):
            train_step(model, opt, x, y)

        train_rows = []
        time_source(reservoir_batch, 5, device, train=step)
        t = time_source(reservoir_batch, args.train_batches, device, train=step)
        train_rows.append(("reservoir (online)", args.train_batches / t))
        for reader in ("memory", "file"):
            for workers in sorted({min(args.workers), max(args.workers)}):
                ds = MemberDataset.from_config(cfg)
                ds.reader = reader
                loader = make_loader(ds, batch_size=args.batch, workers=workers, seed=0,
                                     pin_memory=device.type == "cuda")
                batches = loader_batches(loader)
                for _ in range(len(ds) // args.batch + 5):
                    next(batches)
                t = time_source(lambda: next(batches), args.train_batches, device, train=step)
                train_rows.append((f"BP5 loader, {reader} reader, {workers} worker(s), warm", args.train_batches / t))
                del batches, loader
                ds.close()

    base = rows[0][3]
    print("\n## Data path: samples/s delivered to the train step (no training)\n")
    print("| source | page cache | workers | samples/s | reservoir / source |")
    print("|---|---|---:|---:|---:|")
    for name, cache, workers, rate in rows:
        print(f"| {name} | {cache} | {workers} | {rate:,.0f} | {base / rate:.1f}x |")
    print(f"\n## With the train step (reference network, {args.nx}x{args.nx}, batch {args.batch}, {device})\n")
    print("| source | batches/s | reservoir / source |")
    print("|---|---:|---:|")
    for name, rate in train_rows:
        print(f"| {name} | {rate:,.1f} | {train_rows[0][1] / rate:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
