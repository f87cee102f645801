"""Where a member's stream overhead goes (issue 32's profile): the phases of one SST stream per member.

One writer process streams ``--members`` members in turn, one SST stream each (as a job of
``ensemble.members_per_job`` does), ``--steps`` steps of one nx x nx float32 field; one reader
process (as an ingest worker) waits for each member's contact file, opens, reads every step and
closes. ``adios2.Stream`` with the study's default stream parameters (the schema's
``stream.parameters``), TCP_NODELAY set on the writer's sockets once open, as ``datamove simulate``
does (``datamove.streaming.adios.disable_nagle``); the cases, run in fresh processes:

  before:      as DATAMOVE streamed before TCP_NODELAY was set from the first message: ADIOS2's
               sockets as it makes them (Nagle on until the writer's open returns);
  nodelay:     as ``datamove.streaming.adios.make_io`` prepares a process
               (``datamove.streaming.sockets.prepare_sockets``: TCP_NODELAY from the first
               message, loopback only);
  outside:     a solver of the user's own (its sockets as ADIOS2 makes them) streaming to
               DATAMOVE's reader (prepared);
  scalable:    nodelay, and ControlTransport=scalable (EVPath's reliable UDP, ENet);
  job:         nodelay, and the members in ONE stream (the many-members form of the contract, as
               ``datamove simulate --job`` sends them now): one open and one close for all, each
               step naming its member.

Phases, median ms over the members, on each side: open (writer: Stream(..., "w") returns once the
reader has connected; reader: from the contact file's appearance to Stream(..., "r") returning),
steps (all steps written / read), close. member = writer's wall time per member (open + steps +
close), without any solve; mean = the writer's whole wall time over the members (the job case pays
its one open and close in its first and last member: its median hides them, its mean does not).

    python benchmarks/bench_member_phases.py [--members 12] [--steps 100] [--nx 32] [--repeats 3]

Measured on this 2-core machine: docs/offline.md ("Where the stream's share goes").
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time

import numpy as np

# case -> (parameters added, the writer's sockets prepared as make_io does, the reader's)
CASES = {"before": ({}, False, False), "nodelay": ({}, True, True), "outside": ({}, False, True),
         "scalable": ({"ControlTransport": "scalable"}, True, True), "job": ({}, True, True)}
CTX = mp.get_context("spawn")


def _params(extra: dict[str, str]) -> dict[str, str]:
    from datamove.config import validate_config

    params = dict(validate_config({})["stream"]["parameters"])
    params.update(extra)
    return params


def _io(adios, name: str, params: dict[str, str], prepared: bool):
    io = adios.declare_io(name)
    io.set_engine("SST")
    io.set_parameters(params)
    if prepared:
        from datamove.streaming.sockets import prepare_sockets

        prepare_sockets(io.parameters())  # as datamove.streaming.adios.make_io
    return io


def _job_writer(folder: str, params, members: int, steps: int, field, out) -> None:
    import adios2

    from datamove.streaming.adios import disable_nagle

    rows = []
    t0 = time.perf_counter()
    stream = adios2.Stream(_io(adios2.Adios(), "w", params, True), f"{folder}/job-000000", "w")
    stream.write_attribute("members", np.arange(members, dtype=np.int64))
    disable_nagle()
    opened = time.perf_counter() - t0
    for m in range(members):
        t1 = time.perf_counter()
        for k in range(steps):
            stream.begin_step()
            stream.write("time", np.float64(k))
            stream.write("member", m)
            if k == 0:
                stream.write("params", np.zeros(2))
            stream.write("u", field)
            stream.end_step()
        t2 = time.perf_counter()
        closed = 0.0
        if m == members - 1:
            stream.close()
            closed = time.perf_counter() - t2
        first = opened if m == 0 else 0.0
        rows.append((first, t2 - t1, closed, first + t2 - t1 + closed))
    out.put(("w", rows))


def _writer(folder: str, params, prepared: bool, members: int, steps: int, nx: int, out, job: bool = False) -> None:
    import adios2

    from datamove.streaming.adios import disable_nagle

    field = np.random.default_rng(0).random((nx, nx), dtype=np.float32)
    if job:
        return _job_writer(folder, params, members, steps, field, out)
    rows = []
    for m in range(members):
        t0 = time.perf_counter()
        stream = adios2.Stream(_io(adios2.Adios(), f"w{m}", params, prepared), f"{folder}/member-{m:06d}", "w")
        disable_nagle()
        t1 = time.perf_counter()
        for k in range(steps):
            stream.begin_step()
            stream.write("time", np.float64(k))
            stream.write("u", field)
            stream.end_step()
        t2 = time.perf_counter()
        stream.close()
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    out.put(("w", rows))


def _reader(folder: str, params, prepared: bool, members: int, out, job: bool = False) -> None:
    import adios2

    rows = []
    for m in range(1 if job else members):
        path = f"{folder}/job-000000" if job else f"{folder}/member-{m:06d}"
        while not os.path.exists(path + ".sst"):
            time.sleep(0.0005)
        t0 = time.perf_counter()
        stream = adios2.Stream(_io(adios2.Adios(), f"r{m}", params, prepared), path, "r")
        t1 = time.perf_counter()
        n = 0
        while stream.begin_step() == adios2.bindings.StepStatus.OK:
            stream.read("u")
            stream.end_step()
            n += 1
        t2 = time.perf_counter()
        stream.close()
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, n))
    out.put(("r", rows))


def run(case: str, *, members: int, steps: int, nx: int) -> dict[str, list[tuple]]:
    extra, writer_prepared, reader_prepared = CASES[case]
    params = _params(extra)
    with tempfile.TemporaryDirectory(prefix="datamove-phases-") as folder:
        out = CTX.Queue()
        job = case == "job"
        procs = [CTX.Process(target=_reader, args=(folder, params, reader_prepared, members, out, job)),
                 CTX.Process(target=_writer, args=(folder, params, writer_prepared, members, steps, nx, out, job))]
        for p in procs:
            p.start()
        got = dict(out.get(timeout=600) for _ in procs)
        for p in procs:
            p.join()
    if any(n != steps * (members if case == "job" else 1) for *_, n in got["r"]):
        raise RuntimeError(f"{case}: the reader lost steps: {[n for *_, n in got['r']]}")
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=12)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--nx", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case, interleaved (default 3)")
    args = parser.parse_args(argv)
    print(f"{args.members} members in turn, one SST stream each, {args.steps} steps of {args.nx}x{args.nx} float32; "
          f"{args.repeats} interleaved runs per case; median ms over all members of all runs; {os.cpu_count()} cores.")
    rows: dict[str, dict[str, list[tuple]]] = {c: {"w": [], "r": []} for c in CASES}
    for r in range(args.repeats):
        for case in CASES if r % 2 == 0 else reversed(list(CASES)):
            got = run(case, members=args.members, steps=args.steps, nx=args.nx)
            rows[case]["w"] += got["w"]
            rows[case]["r"] += got["r"]
    header = (f"{'case':<10} {'w open':>8} {'w steps':>8} {'w close':>8} {'member':>8} {'mean':>8} | "
              f"{'r open':>8} {'r steps':>8} {'r close':>8}")
    print(header)
    print("-" * len(header))
    for case, sides in rows.items():
        w = [1000 * statistics.median(col) for col in zip(*sides["w"])]
        mean = 1000 * statistics.fmean(row[3] for row in sides["w"])
        r = [1000 * statistics.median(col) for col in list(zip(*sides["r"]))[:3]]
        print(f"{case:<10} {w[0]:>8.1f} {w[1]:>8.1f} {w[2]:>8.1f} {w[3]:>8.1f} {mean:>8.1f} | "
              f"{r[0]:>8.1f} {r[1]:>8.1f} {r[2]:>8.1f}")
    if "nodelay" in rows and "job" in rows:
        one, job = (statistics.fmean(row[3] for row in rows[c]["w"]) for c in ("nodelay", "job"))
        print(f"\none stream a job: {1000 * job:.1f} ms a member against {1000 * one:.1f} with one stream each "
              f"({one / job:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
