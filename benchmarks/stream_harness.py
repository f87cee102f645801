"""Shared machinery of the streaming benchmarks (bench_ingest.py, bench_isolation.py).

Producers here are not the solver: each writer process pre-computes a small pool of random float32
fields before it opens its stream, so that the producer is never the bottleneck, and writes them by
the stream contract (datamove.streaming.writer.MemberWriter). The consumer side is the online
trainer's own member feed (datamove.streaming.feed.MemberFeed: an IngestPool of spawned ingest
processes, shared-memory slots, a pipe each; the dispatch of appearing streams, the ledger, the
batched intake into the buffer), run the way datamove.training.online.train_online runs it.

The spawned writer, reader and ingest processes import this module (and the benchmark script, as
``__mp_main__``): neither imports anything at module level that the children do not need.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datamove.config import StudyConfig, validate_config
from datamove.streaming.contract import join_names

# Distinct random fields each writer cycles through: enough that no two consecutive steps carry the
# same bytes, few enough that a 512 x 512 run does not need gigabytes per writer.
FIELD_POOL = 16
CTX = mp.get_context("spawn")  # as online.py: no fork of a process that may hold torch threads


def study_config(*, nx: int, ny: int, n_steps: int, n_members: int, **sections) -> StudyConfig:
    """A validated study config (every default filled in) for an n_members x n_steps ensemble."""
    raw = {
        "solver": {"nx": nx, "ny": ny, "n_steps": n_steps},
        "ensemble": {"n_members": n_members},
        # The benchmarks never connect late: fail fast instead of hanging for minutes.
        "stream": {"open_timeout_s": 120, "member_timeout_s": 60},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return StudyConfig.from_dict(validate_config(raw))


def member_attributes(cfg: StudyConfig, member: int) -> dict:
    """The contract attributes of a member: random parameters in the configured ranges, and the
    problem's constants (as ``datamove simulate`` publishes them)."""
    rng = np.random.default_rng(1000 + member)
    lows = np.array([lo for lo, _ in cfg.ensemble.ranges])
    highs = np.array([hi for _, hi in cfg.ensemble.ranges])
    return {
        "member": member,
        "params": lows + rng.random(len(lows)) * (highs - lows),
        "param_names": join_names(cfg.ensemble.names),
        "solver": cfg.problem.name,
        **cfg.problem.constants(),
    }


def field_pool(member: int, ny: int, nx: int) -> list[np.ndarray]:
    rng = np.random.default_rng(member)
    return [(100.0 + 400.0 * rng.random((ny, nx))).astype(np.float32) for _ in range(FIELD_POOL)]


# ------------------------------------------------------------------------------ worker processes
#
# Starting a process costs seconds here (adios2 imports torch when it can, datamove.config imports
# scipy), so the writers and bare readers are persistent: a Pool of spawned processes, each of which
# runs the jobs sent to it, one at a time, for every run and repeat of a benchmark.


def contract_writer(job: dict, jobs, results) -> None:
    """Job: write ``n_steps`` steps of pre-computed fields through MemberWriter (the stream contract).

    Generates its fields, reports ("ready", member), waits for "go" on its job queue, then opens.
    """
    from datamove.streaming.writer import MemberWriter

    member, shape, names = job["member"], job["shape"], job["fields"]
    fields = field_pool(member, *shape)
    results.put(("ready", member))
    if jobs.get() != "go":
        return
    delay = job.get("step_delay_s", 0.0)
    with MemberWriter(
        stream=job["stream"], stream_dir=job["stream_dir"], member=member, attributes=job["attributes"]
    ) as w:
        for k in range(job["n_steps"]):
            step = {name: fields[(k + i) % FIELD_POOL] for i, name in enumerate(names)}  # heat: {"u": ...}
            w.write_step(time=(k + 1) * job["dt"], fields=step)
            if delay:
                time.sleep(delay)
    results.put(("written", member))


def _plain_io(parameters: dict):
    import adios2

    adios = adios2.Adios()
    io = adios.declare_io("bare")
    io.set_engine("SST")
    io.set_parameters({str(k): str(v) for k, v in parameters.items()})
    return adios, io


def bare_writer(job: dict, jobs, results) -> None:
    """Job: a plain adios2.Stream SST writer, same variables (time float64, u float32 [ny, nx]),
    with TCP_NODELAY on its sockets as MemberWriter sets it (unless job["nodelay"] is False)."""
    import adios2

    from datamove.streaming.adios import disable_nagle

    member = job["member"]
    fields = field_pool(member, *job["shape"])
    results.put(("ready", member))
    if jobs.get() != "go":
        return
    adios, io = _plain_io(job["parameters"])
    with adios2.Stream(io, job["path"], "w") as s:
        for k, _ in enumerate(s.steps(job["n_steps"])):
            s.write("time", np.float64((k + 1) * job["dt"]))
            s.write("u", fields[k % FIELD_POOL])
            if k <= 1 and job.get("nodelay", True):
                # As MemberWriter does (datamove.streaming.adios.disable_nagle): the pair then
                # differs from datamove's path by the ingest side alone.
                disable_nagle()
    results.put(("written", member))


def bare_reader(job: dict, jobs, results) -> None:
    """Job: a plain adios2.Stream SST reader with the blocking ``for _ in stream.steps()`` loop.

    Reports ("read", member, stamps): the perf_counter (CLOCK_MONOTONIC, comparable between
    processes) at which each step had been read.
    """
    import adios2

    adios, io = _plain_io(job["parameters"])
    stamps, check = [], 0.0
    with adios2.Stream(io, job["path"], "r") as s:
        for _ in s.steps():
            s.read("time")
            u = s.read("u")
            check += float(u[0, 0])  # touch the data
            stamps.append(time.perf_counter())
    results.put(("read", job["member"], stamps))


JOBS = {"contract_writer": contract_writer, "bare_writer": bare_writer, "bare_reader": bare_reader}


def _serve(index: int, jobs, results) -> None:
    import traceback

    results.put(("up", index))
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            JOBS[job["kind"]](job, jobs, results)
        except Exception:
            results.put(("error", job.get("member"), traceback.format_exc()))


class Pool:
    """``size`` persistent worker processes; ``submit(i, job)`` runs a job on worker i."""

    def __init__(self, size: int):
        self.results = CTX.Queue()
        self.jobs = [CTX.Queue() for _ in range(size)]
        self.procs = [
            CTX.Process(target=_serve, args=(i, q, self.results), name=f"bench-worker-{i}", daemon=True)
            for i, q in enumerate(self.jobs)
        ]
        for p in self.procs:
            p.start()
        self.expect({"up": size}, timeout_s=180.0)

    def submit(self, index: int, job: dict) -> None:
        self.jobs[index].put(job)

    def go(self, indices) -> None:
        for i in indices:
            self.jobs[i].put("go")

    def expect(self, counts: dict[str, int], *, timeout_s: float = 120.0) -> dict[str, list[tuple]]:
        """Collect results until ``counts[kind]`` of each kind came; raise on a job's error or a timeout."""
        out: dict[str, list[tuple]] = {kind: [] for kind in counts}
        deadline = time.monotonic() + timeout_s
        while any(len(out[k]) < n for k, n in counts.items()):
            try:
                msg = self.results.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                got = {k: len(v) for k, v in out.items()}
                raise RuntimeError(f"benchmark workers: got {got} of {counts} after {timeout_s:g} s") from None
            if msg[0] == "error":
                raise RuntimeError(f"benchmark job for member {msg[1]} failed:\n{msg[2]}")
            if msg[0] not in out:
                raise RuntimeError(f"benchmark workers: unexpected {msg!r} while waiting for {counts}")
            out[msg[0]].append(msg)
        return out

    def close(self) -> None:
        for q in self.jobs:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def writer_job(cfg: StudyConfig, member: int, stream_dir: Path, *, step_delay_s: float = 0.0) -> dict:
    """A contract_writer job for ``member`` of the study ``cfg``."""
    return {
        "kind": "contract_writer",
        "member": member,
        "stream": cfg.stream,
        "stream_dir": str(stream_dir),
        "attributes": member_attributes(cfg, member),
        "fields": cfg.problem.field_names,
        "shape": cfg.problem.field_shape,
        "n_steps": cfg.problem.n_steps,
        "dt": time_step(cfg),
        "step_delay_s": step_delay_s,
    }


def time_step(cfg: StudyConfig) -> float:
    """The time between two steps of a member of the study's problem (the heat solver's ``dt``)."""
    return float(cfg.problem.constants()["dt"])


# ------------------------------------------------------------------------------ ingest machinery


def trainer_config(
    cfg: StudyConfig, root: Path, *, ingest_workers: int | None = None, slots: int | None = None, nice: int = 0
) -> StudyConfig:
    """``cfg`` as a benchmark's trainer runs it: its study folder, and so its stream folder
    (``.stream_dir``), under ``root``; ``ingest_workers``, ``slots`` (None: the config's) and ingest
    niceness ``nice``; no reruns of a lost member (nothing reruns a benchmark's writer: a loss ends
    the member at once and the benchmark reports it, instead of waiting stream.member_timeout_s)."""
    t = cfg.trainer
    return dataclasses.replace(
        cfg,
        results_dir=Path(root),
        retries=0,
        trainer=dataclasses.replace(
            t,
            ingest_workers=t.ingest_workers if ingest_workers is None else ingest_workers,
            slots=t.slots if slots is None else slots,
            ingest_nice=nice,
        ),
    )


def _say(msg: str) -> None:
    print(f"[feed] {msg}", file=sys.stderr, flush=True)


@dataclass
class Ingest:
    """The online trainer's ingest side for ``members``: its :class:`~datamove.streaming.feed.MemberFeed`
    (an :class:`~datamove.streaming.pool.IngestPool`: shared-memory slots, a pipe per ingest process;
    the dispatch of each member whose stream has appeared to an idle worker; the ledger) over a
    study config from :func:`trainer_config` (``cfg.stream_dir`` is where the writers write).

    The consumer calls :meth:`take` in its loop (the feed's poll, then its intake: one gather of the
    slots that arrived, their release, one ``put_many`` into the buffer), until :attr:`ended`.
    """

    cfg: StudyConfig
    members: list[int]
    clean: bool = True  # remove stale contact files (one rank does)
    feed: object = field(init=False, default=None)
    ledger: object = field(init=False, default=None)

    def start(self) -> Ingest:
        # Imported here: the spawned writer and ingest processes import this module, and the feed
        # imports torch.
        from datamove.streaming.feed import MemberFeed
        from datamove.training.records import Ledger

        self.ledger = Ledger(members=self.members, steps_expected=self.cfg.problem.n_steps)
        self.feed = MemberFeed(
            cfg=self.cfg, members=self.members, ledger=self.ledger, clean=self.clean, say=_say
        ).start()
        return self

    @property
    def slots(self) -> np.ndarray:
        return self.feed.pool.slots

    @property
    def pids(self) -> list[int]:
        return self.feed.pool.pids

    def take(self, buffer, timeout: float = 0.0) -> int:
        """The feed's poll (events, waiting up to ``timeout`` s for the first; dispatch; timeouts)
        and its intake into ``buffer``; returns how many samples went into it. Raises
        ``IngestFailed`` if an ingest worker hit a bug."""
        self.feed.poll(timeout=timeout)
        return self.feed.intake(buffer)

    @property
    def quiet(self) -> bool:
        """Nothing received waits to go into the buffer: the consumer may wait in :meth:`take`."""
        return self.feed.quiet

    @property
    def ended(self) -> bool:
        """Every member complete or lost, and every step received put into the buffer."""
        return self.feed.ended

    @property
    def ends(self) -> dict[int, tuple[str, str, int]]:
        """member -> (status, reason, steps received)."""
        return {m: (r.status, r.reason, r.steps_received) for m, r in self.ledger.records.items()}

    @property
    def lost(self) -> dict[int, tuple[str, str, int]]:
        """The members that did not complete."""
        return {m: e for m, e in self.ends.items() if e[0] != "complete"}

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()


class Store:
    """Preallocated storage in place of the trainer's buffer, for a consumer that does not train:
    ``put_many`` copies the samples into a ring of ``size`` as ``Buffer.put_many`` copies them
    into a CPU storage (the same ``RowCopier``: the fields gathered from the pool ``y`` at
    ``y_rows``, or from each of its parts at theirs, into the ring's slots) and never displaces
    anything."""

    window = 1  # a sample's y is stored whole (Buffer's window)

    def __init__(self, size: int, x_dim: int, sample_shape):
        import torch
        from datamove.reservoir.base import RowCopier

        self.x = torch.empty((size, x_dim), dtype=torch.float32)
        self.y = torch.empty((size, *sample_shape), dtype=torch.float32)
        self._x, self._y = self.x.numpy(), self.y.numpy()
        self._copier = RowCopier()
        self.n = 0

    def put_capacity(self) -> int:
        return sys.maxsize

    def ready(self, *, final: bool = False) -> bool:
        return True  # a trainer's buffer past its watermark: the feed may batch its intakes

    def put_many(self, x, y, *, member, step, y_rows=None):
        from datamove.reservoir.base import Displacements

        x = np.asarray(x)
        if isinstance(y, (list, tuple)):  # parts along the field axis, each with its rows
            parts, start = [], 0
            for source, rows in zip(y, y_rows):
                source = np.asarray(source)
                parts.append((source, np.asarray(rows, dtype=np.int64), slice(start, start + source.shape[1])))
                start += source.shape[1]
        else:
            y = np.asarray(y)
            parts = [(y, np.arange(len(x)) if y_rows is None else np.asarray(y_rows, dtype=np.int64), slice(None))]
        n, size = len(x), len(self._y)
        for i in range(0, n, size):  # more than the ring holds: it wraps, as often as it takes
            chunk = min(size, n - i)
            idx = np.arange(self.n, self.n + chunk) % size
            self._x[idx] = x[i : i + chunk]
            for k, (source, rows, fields) in enumerate(parts):
                self._copier.copy(self._y[:, fields], idx, source, rows[i : i + chunk], f"y{k}")
            self.n += chunk
        return Displacements.none()


class ScratchDir:
    """A fresh stream folder for one run, removed afterwards (contact files included)."""

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix="datamove-bench-"))
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def cpu_seconds(pids) -> np.ndarray:
    """User + system CPU seconds used so far by each of the processes ``pids`` (Linux /proc; 0 where
    unreadable). A process that has exited but is not yet joined still reports its total."""
    tick = os.sysconf("SC_CLK_TCK")
    out = np.zeros(len(pids))
    for i, pid in enumerate(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[i] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of stat)
    return out


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, all processes; Linux /proc/stat)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMonitor:
    """A thread that samples the CPU seconds of ``pids`` (and of the whole machine) every ``period`` s,
    so that the CPU load of a stretch of a run (e.g. its steady part) can be read afterwards with
    :meth:`load`, and the load of everything else on the machine with :meth:`foreign_load`."""

    def __init__(self, pids, period: float = 0.05):
        import threading

        self.pids, self.period = list(pids), period
        self.samples: list[tuple[float, np.ndarray, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-monitor")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), cpu_seconds(self.pids), machine_busy_seconds()))
            self._stop.wait(self.period)
        self.samples.append((time.perf_counter(), cpu_seconds(self.pids), machine_busy_seconds()))

    def __enter__(self) -> CpuMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _series(self, pids) -> tuple[np.ndarray, np.ndarray]:
        idx = [self.pids.index(p) for p in (self.pids if pids is None else pids)]
        t = np.array([s[0] for s in self.samples])
        c = np.array([s[1][idx].sum() for s in self.samples])
        return t, c

    def total(self, pids=None) -> float:
        """CPU seconds of ``pids`` (default: all) from start to stop."""
        _, c = self._series(pids)
        return float(c[-1] - c[0])

    def load(self, t0: float, t1: float, pids=None) -> float:
        """Mean busy cores of ``pids`` (default: all) between perf_counter times t0 and t1."""
        t, c = self._series(pids)
        return float((np.interp(t1, t, c) - np.interp(t0, t, c)) / max(t1 - t0, 1e-9))

    def foreign_load(self, t0: float | None = None, t1: float | None = None) -> float:
        """Mean busy cores of everything but ``pids`` on the machine (other users, the kernel):
        the noise a measurement suffered. Default: over the whole monitored time."""
        t = np.array([s[0] for s in self.samples])
        m = np.array([s[2] for s in self.samples])
        t0 = t[0] if t0 is None else t0
        t1 = t[-1] if t1 is None else t1
        machine = (np.interp(t1, t, m) - np.interp(t0, t, m)) / max(t1 - t0, 1e-9)
        return max(float(machine) - self.load(t0, t1), 0.0)


def wait_settled(pids, *, busy_below: float = 0.2, timeout_s: float = 60.0) -> None:
    """Wait until the processes ``pids`` use less than ``busy_below`` of a core each (0.2 s windows):
    a freshly spawned ingest process spends seconds importing (adios2 imports torch), and that must
    not fall into a measurement (the trainer is up before the solvers start)."""
    deadline = time.monotonic() + timeout_s
    last = cpu_seconds(pids).sum()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = cpu_seconds(pids).sum()
        if now - last < busy_below * 0.2 * max(len(pids), 1):
            return
        last = now
    raise RuntimeError(f"processes {list(pids)} still busy after {timeout_s:g} s")


def verdict(passed: bool, noise: float, noise_limit: float) -> tuple[str, int]:
    """A benchmark's verdict and exit code: PASS (0) or FAIL (1); flagged DISTURBED and exit 2 (not
    conclusive) when other processes used more than ``noise_limit`` cores during a run."""
    text = "PASS" if passed else "FAIL"
    if noise > noise_limit:
        text += (
            f" (DISTURBED: other processes used up to {noise:.2f} of the {os.cpu_count()} cores during a run; "
            "not conclusive, run again on a quiet machine)"
        )
        return text, 2
    return text, 0 if passed else 1


def median(values) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))
