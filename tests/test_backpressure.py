"""Solvers that outrun the trainer: memory stays bounded and no step is lost silently.

Real processes and real SST streams: `datamove train` with a consuming buffer (fifo, batch size 1,
so one batch is one sample) and three `datamove simulate` members of 128 x 128 fields started at
once. The solvers produce several times faster than the trainer consumes, so what happens to the
surplus is the subject:

* on_full=block (the default): the buffer refuses samples when full, the trainer stops freeing
  shared-memory slots, the ingest workers stop reading, the SST queues (QueueFullPolicy=Block) fill
  and the solvers wait. Every step is trained on exactly once and the memory of every process stays
  flat while ~90 MiB of fields go through.
* on_full=drop_oldest (lossy, chosen by the user): the solvers never wait, and every dropped step is
  counted, per member, in the ledger.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import threading
import time

import psutil
import pytest

from conftest import datamove, popen_datamove
from datamove.config import StudyConfig

N_MEMBERS = 3
N_STEPS = 500
SIDE = 128
CAPACITY = 16
SLOTS = 8
QUEUE_LIMIT = 4
# The lossy test's model: a training step that costs more than reading a step in. With hidden 32, a
# loaded machine (both cores busy, as in CI) slowed the ingest side more than the training loop: the
# SST queues, not the buffer, filled, the solvers waited and nothing was dropped (CI, 0 of 1500;
# reproduced with two busy loops). With 256, 814 of 1500 dropped under the same load, 1222 without.
HIDDEN = 256


def study(tiny_config, *, hidden=32, **reservoir):
    """128 x 128 fields (64 KiB a step), a trainer of about 300 samples/s on one thread (hidden 32)."""
    return tiny_config(
        solver={"nx": SIDE, "ny": SIDE, "n_steps": N_STEPS},
        # Niceness 0: a niced solver's solve time would include its wait for a core under load,
        # and the test tells waiting for the trainer from solving by that time.
        ensemble={"n_members": N_MEMBERS, "nice": 0},
        heldout={"n_members": 1},
        reservoir={"policy": "fifo", "capacity": CAPACITY, "watermark": 1, **reservoir},
        trainer={"batch_size": 1, "extra_batches": 10 * CAPACITY, "log_every": 100, "slots": SLOTS,
                 "ingest_workers": N_MEMBERS, "model_args": {"hidden": hidden, "layers": 1}},
        stream={"parameters": {"RendezvousReaderCount": "1", "QueueLimit": str(QUEUE_LIMIT),
                               "QueueFullPolicy": "Block", "DataTransport": "WAN"}},
    )


class RssMonitor:
    """Samples the resident memory (RSS, bytes) of process trees every 20 ms in a thread."""

    def __init__(self) -> None:
        self.trees: dict[str, psutil.Process] = {}
        self.series: dict[str, list[tuple[float, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int, *, children: bool = True) -> None:
        self.series[name] = []
        self.trees[name] = (psutil.Process(pid), children)

    @staticmethod
    def _rss(proc: psutil.Process, children: bool) -> int:
        total = 0
        for p in [proc, *(proc.children(recursive=True) if children else [])]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, (proc, children) in list(self.trees.items()):
                try:
                    self.series[name].append((time.monotonic(), self._rss(proc, children)))
                except psutil.NoSuchProcess:
                    continue
            self._stop.wait(0.02)

    def floor(self, name: str, t0: float, t1: float) -> int:
        """Lowest RSS of a tree in [t0, t1]: what it holds for good, not a transient peak (an
        exited process that is not yet reaped reads 0 and is left out)."""
        values = [rss for t, rss in self.series[name] if t0 <= t <= t1 and rss > 0]
        assert values, f"no RSS sample of {name} in the window"
        return min(values)

    def growth(self, name: str, t0: float, t1: float) -> int:
        """What a tree kept for good while data flowed from t0 to t1: the floor over 40-80 % of
        that span (every process alive, none tearing down) minus the floor over its first 0.5 s."""
        span = t1 - t0
        return self.floor(name, t0 + 0.4 * span, t0 + 0.8 * span) - self.floor(name, t0, t0 + 0.5)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclasses.dataclass
class Run:
    ledger: dict
    metrics: list[dict]
    members: list[dict]
    out: str
    first_row_t: float  # monotonic time at which metrics.csv got its first row (data has flowed)
    solvers_done_t: float  # monotonic time at which the last solver had exited


def run_study(path, tmp_path, monitor: RssMonitor) -> Run:
    """Trainer first, then every member at once (as `snakemake --cores 4` would start them)."""
    cfg = StudyConfig.load(path)
    datamove("make-heldout", "--config", path)
    trainer = popen_datamove("train", "--config", path, "--threads", 1, log=tmp_path / "train.log")
    monitor.watch("trainer", trainer.proc.pid)
    solvers = []
    metrics_path = cfg.study_dir / "metrics.csv"
    first_row_t = None
    try:
        datamove("wait-trainer", "--config", path, "--timeout", 60)
        for m in range(N_MEMBERS):
            proc = subprocess.Popen(
                [sys.executable, "-m", "datamove", "simulate", "--config", str(path), "--member", str(m),
                 "--marker", str(cfg.study_dir / "members" / f"member-{m:06d}.json")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            monitor.watch(f"solver-{m}", proc.pid, children=False)  # not its forked watchdog
            solvers.append(proc)
        while any(proc.poll() is None for proc in solvers):
            if first_row_t is None and metrics_path.exists() and len(metrics_path.read_text().splitlines()) > 1:
                first_row_t = time.monotonic()
            time.sleep(0.01)
        solvers_done_t = time.monotonic()
        for proc in solvers:
            assert proc.returncode == 0, proc.stderr.read()
        assert trainer.wait(timeout=180) == 0, trainer.output
    finally:
        for proc in solvers:
            proc.kill()
        trainer.kill()
    assert first_row_t is not None, "the solvers ended before the trainer's first log row"
    with open(cfg.study_dir / "ledger.csv") as fh:
        ledger = {int(r["member"]): r for r in csv.DictReader(fh)}
    with open(metrics_path) as fh:
        metrics = list(csv.DictReader(fh))
    members = [json.loads((cfg.study_dir / "members" / f"member-{m:06d}.json").read_text()) for m in range(N_MEMBERS)]
    return Run(ledger, metrics, members, trainer.output, first_row_t, solvers_done_t)


@pytest.mark.slow
def test_solvers_outrunning_the_trainer_wait_and_nothing_is_lost(tiny_config, tmp_path, monkeypatch):
    # glibc's mmap threshold rises to the size of the largest block freed (up to 32 MiB): once the
    # trainer frees a validation's transient (the held-out member's 500 steps, 31 MiB), the next one
    # comes from the heap and may stay resident after it is freed. The RSS then swung by +-31 MiB
    # between the two windows in about 1 run of 3 under load (either sign, before and after the
    # feed's changes of 94417fe; +31 failed the bound), never once with the threshold fixed (4 of 4).
    # Memory kept, not memory the allocator caches, is what the bound is about.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(2**20))
    with RssMonitor() as monitor:
        run = run_study(study(tiny_config), tmp_path, monitor)
    total = N_MEMBERS * N_STEPS
    last = run.metrics[-1]

    # No loss: every step of every member arrived, and was trained on exactly once (fifo, B = 1).
    assert [r["status"] for r in run.ledger.values()] == ["complete"] * N_MEMBERS, run.out
    assert [int(r["steps_received"]) for r in run.ledger.values()] == [N_STEPS] * N_MEMBERS
    assert int(last["batch"]) == total, run.out
    for key in ("n_put", "n_sampled"):  # filled once the trainer logs these buffer statistics
        if last.get(key):
            assert float(last[key]) == total
    if last.get("n_dropped"):
        assert float(last["n_dropped"]) == 0

    # The solvers waited for the trainer. At most `in_flight` samples can exist between a solver
    # and the training loop (buffer, hand-off slots, each writer's SST queue and each ingest worker's
    # step in hand), so the last solver cannot end before the trainer has consumed the rest.
    in_flight = CAPACITY + SLOTS + N_MEMBERS * (QUEUE_LIMIT + 1)
    rates = sorted(float(r["batches_per_s"]) for r in run.metrics[:-1])
    rate = rates[len(rates) // 2]  # samples/s, median over the log rows
    slowest = max(m["total_s"] for m in run.members)
    assert slowest > 0.5 * (total - in_flight) / rate, (slowest, rate, run.members)
    assert slowest > 3 * max(m["solve_s"] for m in run.members), run.members

    # Bounded memory: from the first log row (~1/6 of the data in) to the end of the last solver,
    # ~80 MiB of fields went through; neither the trainer (with its ingest workers) nor a solver
    # kept more than a few MiB of it. Without a bound (SST QueueLimit=0, measured) the trainer's
    # ingest side keeps tens of MiB, as would a trainer that never refused a sample.
    growth = {name: monitor.growth(name, run.first_row_t, run.solvers_done_t) for name in monitor.trees}
    bound = 8 * 2**20
    assert all(g < bound for g in growth.values()), {n: round(g / 2**20, 1) for n, g in growth.items()}


@pytest.mark.slow
def test_lossy_on_full_counts_every_dropped_step_in_the_ledger(tiny_config, tmp_path):
    with RssMonitor() as monitor:
        run = run_study(study(tiny_config, hidden=HIDDEN, on_full="drop_oldest"), tmp_path, monitor)
    total = N_MEMBERS * N_STEPS
    assert [int(r["steps_received"]) for r in run.ledger.values()] == [N_STEPS] * N_MEMBERS, run.out
    dropped = sum(int(r["steps_dropped"]) for r in run.ledger.values())
    assert dropped > 0  # the solvers outran the trainer and were not slowed down
    assert float(run.metrics[-1]["n_dropped"]) == dropped
    # Every step received was either trained on (once: fifo, B = 1) or dropped and counted; the
    # extra batches drained the buffer, and fifo evicts nothing.
    assert int(run.metrics[-1]["batch"]) + dropped == total
    assert all(int(r["steps_unused"]) == int(r["steps_evicted"]) == 0 for r in run.ledger.values()), run.ledger
