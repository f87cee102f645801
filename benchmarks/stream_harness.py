"""Shared machinery of the streaming benchmarks (bench_ingest.py, bench_isolation.py).

Producers here are not the solver: each writer process pre-computes a small pool of random float32
fields before it opens its stream, so that the producer is never the bottleneck, and writes them by
the stream contract (datamove.streaming.writer.MemberWriter). The consumer side is datamove's own
ingest machinery (IngestSpec + run_ingest in spawned processes, shared-memory slots, free-slot,
event and command queues), started and fed the way datamove.training.online.train_online does.

The spawned writer, reader and ingest processes import this module (and the benchmark script, as
``__mp_main__``): neither imports anything at module level that the children do not need.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datamove.config import StudyConfig, validate_config
from datamove.streaming.contract import join_names
from datamove.streaming.ingest import streams_present
from datamove.streaming.pool import IngestPool
from datamove.streaming.reader import Expectation

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
    """The contract attributes of a member: five random parameters in the configured ranges."""
    rng = np.random.default_rng(1000 + member)
    lows = np.array([lo for lo, _ in cfg.ensemble.ranges])
    highs = np.array([hi for _, hi in cfg.ensemble.ranges])
    return {
        "member": member,
        "params": lows + rng.random(len(lows)) * (highs - lows),
        "param_names": join_names(cfg.ensemble.names),
        "solver": cfg.solver_name,
        "nx": cfg.solver.nx,
        "ny": cfg.solver.ny,
        "dt": cfg.solver.dt,
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

    member, shape = job["member"], job["shape"]
    fields = field_pool(member, *shape)
    results.put(("ready", member))
    if jobs.get() != "go":
        return
    delay = job.get("step_delay_s", 0.0)
    with MemberWriter(
        stream=job["stream"], stream_dir=job["stream_dir"], member=member, attributes=job["attributes"]
    ) as w:
        for k in range(job["n_steps"]):
            w.write_step(time=(k + 1) * job["dt"], fields={"u": fields[k % FIELD_POOL]})
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
        "shape": (cfg.solver.ny, cfg.solver.nx),
        "n_steps": cfg.solver.n_steps,
        "dt": cfg.solver.dt,
        "step_delay_s": step_delay_s,
    }


# ------------------------------------------------------------------------------ ingest machinery


@dataclass
class Ingest:
    """datamove's ingest side for ``members``, set up as ``train_online`` sets it up: an
    :class:`~datamove.streaming.pool.IngestPool` (shared-memory slots, a pipe per ingest process) and
    the trainer's dispatch of each member whose stream has appeared to an idle worker.

    The consumer calls :meth:`dispatch` in its loop, :meth:`poll` for events, :meth:`release` for each
    slot it has copied and :meth:`handle_end` on each "end" event, as train_online does.
    """

    cfg: StudyConfig
    members: list[int]
    n_workers: int
    n_slots: int
    stream_dir: Path
    nice: int = 0
    pool: IngestPool = field(init=False)
    unassigned: list[int] = field(init=False, default_factory=list)
    ended: dict[int, tuple] = field(init=False, default_factory=dict)
    _next_scan: float = field(init=False, default=0.0)

    def start(self) -> Ingest:
        ny, nx = self.cfg.solver.ny, self.cfg.solver.nx
        expect = Expectation(field_shape=(ny, nx), param_names=self.cfg.ensemble.names, solver=self.cfg.solver_name)
        self.pool = IngestPool(
            stream=self.cfg.stream,
            stream_dir=self.stream_dir,
            expect=expect,
            n_steps=self.cfg.solver.n_steps,
            n_workers=min(self.n_workers, max(len(self.members), 1)),
            n_slots=self.n_slots,
            nice=self.nice,
        ).start()
        self.unassigned = list(self.members)
        return self

    @property
    def slots(self) -> np.ndarray:
        return self.pool.slots

    @property
    def pids(self) -> list[int]:
        return self.pool.pids

    def poll(self, timeout: float = 0.0) -> list[tuple]:
        """Events that have arrived; raises if an ingest process died (ADIOS2 crash: no event)."""
        events = self.pool.poll(timeout)
        for ev in events:
            if ev[0] == "end" and ev[3].startswith("ingest process crashed"):
                raise RuntimeError(f"ingest worker {ev[5]} died before every member ended: {ev[3]}")
        return events

    def release(self, slot: int) -> None:
        self.pool.release(slot)

    def dispatch(self) -> None:
        """Hand members whose stream has appeared to idle workers (a scan every 20 ms at most)."""
        if self.unassigned and self.pool.idle and time.monotonic() >= self._next_scan:
            self._next_scan = time.monotonic() + 0.02
            for member in streams_present(self.cfg.stream, self.stream_dir, self.unassigned)[: len(self.pool.idle)]:
                self.unassigned.remove(member)
                self.pool.assign(member)

    def handle_end(self, ev: tuple) -> None:
        """An ("end", member, status, reason, steps, worker) event: the member is over."""
        _, member, status, reason, steps, _worker = ev
        self.ended[member] = (status, reason, steps)

    @property
    def all_ended(self) -> bool:
        return len(self.ended) == len(self.members)

    def close(self) -> None:
        self.pool.close()


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
