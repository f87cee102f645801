"""Intake cost of the training buffers: per-sample ``put`` against ``put_many`` in chunks.

For every policy, a buffer of ``--capacity`` samples (default 10,000) of ``--side`` x ``--side``
fields (default 64 x 64) with x_dim 6 on ``--device`` takes samples from host memory (pinned when
the device is a GPU, as a trainer's staging buffer would be): one by one with ``put``, and in chunks
of 1, 16, 64 and 256 with ``put_many``. A replacing policy (reservoir, balanced) is full, so every
sample evicts (or is turned away): the steady state of a trainer. A consuming policy (fifo, firo)
that blocks is filled, then drawn down to half full, and after each timed call the samples just put
are drawn again, untimed, so that the occupancy stays; with ``--on-full drop_oldest`` it stays full
and every sample drops the oldest. Each call is timed on its own (with a device sync on a GPU); the
table gives the median over calls of the time per sample, in microseconds, and the last line the
ratio of per-sample to batched cost at chunk 64 for reservoir.

    python benchmarks/bench_put.py [--device cpu|cuda] [--capacity 10000] [--side 64]
                                   [--samples 4096] [--threads 1] [--on-full block|drop_oldest]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from datamove.reservoir import POLICIES, Buffer, make_buffer

X_DIM = 6
CHUNKS = (1, 16, 64, 256)
RATIO_CHUNK = 64
N_MEMBERS = 100  # members cycle as in a small ensemble (balanced keeps per-member counts)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # time the copies, not their launch


def steady_buffer(policy: str, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> Buffer:
    """A buffer in the state the timed puts start from: full (replacing) or half full (consuming)."""
    buf = make_buffer(
        policy, capacity=args.capacity, watermark=1, x_dim=X_DIM, y_shape=(args.side, args.side),
        seed=0, device=args.device, on_full=args.on_full,
    )
    # Filled to capacity first: every page of the storage is then resident, and no timing
    # includes the first touch of one (torch.empty storage).
    for start in range(0, args.capacity, len(x)):
        k = min(len(x), args.capacity - start)
        ids = torch.arange(start, start + k)
        buf.put_many(x[:k], y[:k], member=ids % N_MEMBERS, step=ids)
    if refills(buf):
        buf.sample(args.capacity // 2)
    return buf


def refills(buf: Buffer) -> bool:
    """A blocking consuming buffer is kept half full (draws make room); the others stay full."""
    return buf.consumes and buf.on_full == "block"


def per_sample_us(policy: str, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, chunk: int | None) -> float:
    """Median time per sample (us) of one call: `put` of one sample (chunk None) or `put_many`."""
    buf = steady_buffer(policy, args, x, y)
    device = torch.device(args.device)
    size = 1 if chunk is None else chunk
    member, step = [k % N_MEMBERS for k in range(size)], list(range(size))
    times = []
    for start in range(0, args.samples, size):
        rows = slice(start % len(x), start % len(x) + size)
        sync(device)
        t0 = time.perf_counter()
        if chunk is None:
            buf.put(x[rows.start], y[rows.start], member=member[0], step=step[0])
        else:
            buf.put_many(x[rows], y[rows], member=member, step=step)
        sync(device)
        times.append((time.perf_counter() - t0) / size)
        if refills(buf):
            buf.sample(size)  # untimed: keep the occupancy
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--capacity", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4096, help="samples put per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--on-full", default="block", choices=("block", "drop_oldest"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    # A source of distinct samples (a multiple of every chunk), in host memory.
    x = torch.rand(max(CHUNKS) * 4, X_DIM)
    y = torch.rand(max(CHUNKS) * 4, args.side, args.side)
    if device.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()

    sample_kib = 4 * (X_DIM + args.side**2) / 1024
    print(
        f"intake cost per sample [us], medians over calls: capacity {args.capacity:,}, {args.side}x{args.side} "
        f"fields + x_dim {X_DIM} ({sample_kib:.1f} KiB a sample), device {device}, on_full {args.on_full}, "
        f"torch threads {args.threads}, {args.samples} samples per measurement"
    )
    header = f"{'policy':<10}{'put':>9}" + "".join(f"{f'many({c})':>11}" for c in CHUNKS) + f"{f'put/many({RATIO_CHUNK})':>15}"
    print(header)
    print("-" * len(header))
    ratio = {}
    for policy in sorted(POLICIES):
        put = per_sample_us(policy, args, x, y, None)
        many = {c: per_sample_us(policy, args, x, y, c) for c in CHUNKS}
        ratio[policy] = put / many[RATIO_CHUNK]
        print(f"{policy:<10}{put:>9.1f}" + "".join(f"{many[c]:>11.1f}" for c in CHUNKS) + f"{ratio[policy]:>14.1f}x")
    print(f"reservoir: per-sample put / put_many in chunks of {RATIO_CHUNK} = {ratio['reservoir']:.1f}x")


if __name__ == "__main__":
    main()
