"""ADIOS2's SST sockets have Nagle's algorithm off from the first message (datamove.streaming.sockets):
a real writer and a real reader, in processes of their own, prepared by make_io as every DATAMOVE
process is; each reports, right after its Open returns and before anything else touches its
sockets, TCP_NODELAY on each of its TCP connections."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SIDE = r"""
import json, os, socket, sys
import numpy as np
import adios2
from datamove.config import StudyConfig, validate_config
from datamove.streaming.adios import make_io

path, mode, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = StudyConfig.from_dict(validate_config({"stream": {"parameters": extra}}))
_, io = make_io(cfg.stream)
stream = adios2.Stream(io, path, mode)

def nodelay():
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except (OSError, ValueError):
            continue
        try:
            if sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM:
                try:
                    sock.getpeername()
                except OSError:
                    continue  # a listener
                found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
        finally:
            sock.detach()
    return found

print(json.dumps(nodelay()), flush=True)  # before any step, any disable_nagle()
if mode == "w":
    stream.begin_step(); stream.write("u", np.zeros(4)); stream.end_step()
else:
    while stream.begin_step() == adios2.bindings.StepStatus.OK:
        stream.read("u"); stream.end_step()
stream.close()
"""


@pytest.mark.parametrize("extra", [{}, {"NetworkInterface": "lo"}], ids=["loopback", "interface named"])
def test_writer_and_reader_connections_have_nagle_off_when_open_returns(tmp_path, extra):
    path = str(tmp_path / "member-000000")
    args = [path, None, json.dumps(extra)]
    writer = subprocess.Popen([sys.executable, "-c", SIDE, *[a if a else "w" for a in args]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        reader = subprocess.run([sys.executable, "-c", SIDE, path, "r", json.dumps(extra)],
                                capture_output=True, text=True, timeout=60)
        out, err = writer.communicate(timeout=60)
    finally:
        writer.kill()
    assert reader.returncode == 0 and writer.returncode == 0, reader.stderr + err
    on_writer, on_reader = json.loads(out.splitlines()[0]), json.loads(reader.stdout.splitlines()[0])
    # Each side has its control connection (the writer: accepted from its listener); every one has
    # TCP_NODELAY, set before the handshake's first message (the writer's inherited from its listener).
    assert on_writer and all(on_writer), on_writer
    assert on_reader and all(on_reader), on_reader
