"""Data-parallel training with torch.distributed (torchrun): what a trainer needs to know and do.

Online, each rank ingests its own share of the members (member id modulo world size) into its own
reservoir; offline, each rank reads its own shard of the stored samples every epoch. Every rank
trains the same model; gradients are averaged across ranks after each backward pass, so the
replicas stay identical. gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, members: list[int]) -> list[int]:
        """This rank's members: member id modulo world size."""
        return [m for m in members if m % self.world == self.rank]

    # Collectives: no-ops for a single process, so the trainer has one code path.
    def all_min(self, *flags: bool) -> list[bool]:
        if not self.active:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return [bool(v) for v in t.tolist()]

    def all_sum(self, *values: float) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``t`` over ranks (a copy; ``t`` itself is left as it is)."""
        out = t.clone()
        if self.active:
            dist.all_reduce(out)
        return out

    def gather(self, obj):
        """All ranks' ``obj`` on every rank (a list indexed by rank)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def average_gradients(self, model: torch.nn.Module) -> None:
        """One all-reduce of every gradient, flattened (what DDP does, in one bucket)."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def init_from_env(device_name: str) -> Dist:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, ...), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank)


def relaunch_under_torchrun(world_size: int, argv: list[str]) -> int:
    """Run ``datamove <argv>`` as ``world_size`` ranks on this node; returns torchrun's exit code."""
    import subprocess

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
        "-m", "datamove", *argv,
    ]
    print(f"[train] data-parallel: {shlex.join(cmd)}", flush=True)
    return subprocess.call(cmd)
