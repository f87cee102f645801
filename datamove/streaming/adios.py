"""Configuring ADIOS2 IO objects from the study's stream settings."""

from __future__ import annotations

import os

import adios2

from datamove.config import StreamConfig
from datamove.streaming.sockets import prepare_sockets, set_nodelay

IO_NAME = "datamove"


def make_io(stream: StreamConfig, name: str = IO_NAME) -> tuple[adios2.Adios, adios2.IO]:
    """An Adios object and a configured IO.

    With ``stream.xml_config``, the XML file's ``<io name="datamove">`` decides engine and
    parameters (the same file configures a C++ or Fortran solver); otherwise the config does.
    The IO is configured before any Stream is opened (``Stream.set_parameters`` is broken in 2.12).
    An SST IO listens on loopback only, on ``stream.interface``'s address when it names one (a study
    across hosts), on every interface where its parameters name one themselves; its TCP sockets
    have Nagle's algorithm off from the first message (sockets.py).
    """
    if stream.xml_config:
        adios = adios2.Adios(str(stream.xml_config))
        io = adios.declare_io(name)
    else:
        adios = adios2.Adios()
        io = adios.declare_io(name)
        io.set_engine(stream.engine)
        if stream.engine.upper() == "SST":
            parameters = {str(k): str(v) for k, v in stream.parameters.items()}
            if stream.interface:  # across hosts: the contact file publishes that interface's address
                parameters.setdefault("NetworkInterface", stream.interface)
            io.set_parameters(parameters)
    if io.engine_type().upper() == "SST":
        prepare_sockets(io.parameters(), interface=stream.interface)
    return adios, io


def disable_nagle() -> int:
    """Set TCP_NODELAY on every TCP socket of this process; returns how many.

    Why: ADIOS2 2.12's SST (EVPath sockets) leaves Nagle's algorithm on. A writer that publishes
    small steps then stalls ~40 ms (Nagle waiting for the reader's delayed ACK) on ~1 % of its
    steps, which capped one 64x64 member stream at 1,100-1,500 steps/s; with TCP_NODELAY on the
    writer's sockets: 15,000-20,000 (measured on 2 cores, benchmarks/bench_ingest.py shows the
    effect on 4 streams). ADIOS2 has no parameter for it, so a writer sets it on its own sockets,
    which belong to ADIOS2 (a solver process has no others). Setting it on the reader's side alone
    made the stalls worse. Since ``make_io`` prepares a process's sockets (sockets.py: TCP_NODELAY
    from the first message, on both sides), this is what keeps a writer right where that could not
    be done (a platform it cannot patch) and catches any socket opened otherwise.
    """
    names = os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []
    return sum(set_nodelay(int(name)) for name in names if name.isdigit())
