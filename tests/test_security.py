"""Closed by default (docs/security.md): on one host a study's SST streams listen on loopback only,
and its folders and files are their owner's only (real processes, real sockets)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import SNAKEMAKE, datamove
from datamove.config import StudyConfig


def listeners(root: psutil.Process) -> set[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of ``root`` and its descendants: this
    test's own processes, never those of a test running beside it."""
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            found |= {(proc.pid, c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="tcp")
                      if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # ended between the listing and the look
    return found


def open_to_others(*folders: Path) -> dict[str, str]:
    """Every folder and file under ``folders`` (themselves included) that its group or others may
    read, write or enter: path -> mode."""
    found = {}
    for top in folders:
        for folder, dirs, files in os.walk(top):  # a folder removed meanwhile is skipped
            for path in [folder, *(os.path.join(folder, name) for name in dirs + files)]:
                try:
                    mode = os.lstat(path).st_mode
                except FileNotFoundError:
                    continue  # a temporary, renamed meanwhile
                if mode & 0o077:
                    found[path] = oct(mode & 0o777)
    return found


def not_loopback(found) -> list:
    return [(pid, ip, port) for pid, ip, port in found if not ipaddress.ip_address(ip).is_loopback]


@pytest.mark.slow
def test_a_study_listens_on_loopback_and_its_files_are_the_owners(tiny_config, tmp_path):
    # Members long enough to be seen streaming; a study folder left open by an earlier run.
    path = tiny_config(solver={"nx": 12, "ny": 10, "n_steps": 100})
    cfg = StudyConfig.load(path)
    cfg.study_dir.mkdir(parents=True)
    cfg.study_dir.chmod(0o755)
    log = tmp_path / "snakemake.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(path), "--cores", "2"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    root = psutil.Process(proc.pid)
    heard, open_during, contacts = set(), {}, set()
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        heard |= listeners(root)
        # While members stream: contact files, the checkpoint, heartbeat, receipts, logs.
        # (The study folder itself is tightened once Snakemake starts: checked after the study.)
        open_during |= {p: m for p, m in open_to_others(cfg.study_dir).items() if p != str(cfg.study_dir)}
        contacts |= {p.name for p in cfg.stream_dir.glob("*.sst")} if cfg.stream_dir.exists() else set()
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    assert proc.wait() == 0, log.read_text()[-3000:]
    # Both ends of the streams were seen listening: solvers (writers) and ingest workers (readers).
    assert contacts and len({pid for pid, _, _ in heard}) >= 2, (contacts, heard)
    assert not not_loopback(heard), f"listening on a non-loopback address: {not_loopback(heard)}"
    assert not open_during, f"open to group or others while the study ran: {open_during}"
    after = open_to_others(cfg.study_dir, Path(cfg.data_dir))  # results/ itself is this test's
    assert not after, f"open to group or others after the study: {after}"


WRITER = """
import sys, time
from datamove.config import StreamConfig
from datamove.streaming.adios import make_io
import adios2
params = {"RendezvousReaderCount": "0", "QueueLimit": "1", "QueueFullPolicy": "Discard",
          **dict(a.split("=") for a in sys.argv[2:])}
_, io = make_io(StreamConfig(engine="SST", parameters=params, xml_config=None, open_timeout_s=5, member_timeout_s=5))
with adios2.Stream(io, sys.argv[1], "w"):  # no reader to wait for (RendezvousReaderCount 0)
    print(open(sys.argv[1] + ".sst").read().splitlines()[0], flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("extra, loopback", [((), True), (("NetworkInterface=lo",), False)])
def test_an_sst_writer_listens_on_loopback_unless_told_an_interface(tmp_path, extra, loopback):
    # make_io keeps a stream on loopback; naming an interface (stream.parameters) leaves ADIOS2's
    # own choice, every interface, to a study that wants it.
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "s"), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()  # the contact file's first line, once the writer listens
        if not first.startswith("#ADIOS2-SST"):
            proc.kill()
            pytest.fail(first + proc.stdout.read())
        heard = listeners(psutil.Process(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert heard
    assert bool(not_loopback(heard)) != loopback, heard


def test_a_datamove_command_writes_owner_only_files(tiny_config, tmp_path):
    # The CLI on its own (a manual run, not under the workflow), from a shell whose umask is 022.
    path = tiny_config()
    old = os.umask(0o022)
    try:
        datamove("make-heldout", "--config", path)
    finally:
        os.umask(old)
    written = list((tmp_path / "data").rglob("*"))
    assert written and not open_to_others(tmp_path / "data"), open_to_others(tmp_path / "data")


def test_a_read_only_slot_is_patched_and_left_read_only():
    """Libraries linked with full RELRO (conda-forge's ADIOS2) have read-only slots: the store goes
    through mprotect, and the page is read-only again after it."""
    import ctypes
    import mmap

    from datamove.streaming.sockets import _write_slot

    page = mmap.mmap(-1, mmap.PAGESIZE)
    slot = ctypes.addressof(ctypes.c_char.from_buffer(page)) + 64
    ctypes.c_void_p.from_address(slot).value = 1234
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = slot & ~(mmap.PAGESIZE - 1)
    assert libc.mprotect(start, mmap.PAGESIZE, 1) == 0  # PROT_READ

    def perms():
        for line in Path("/proc/self/maps").read_text().splitlines():
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= slot < hi:
                return line.split()[1]

    assert perms().startswith("r--")
    _write_slot(slot, 5678, writable=False)
    assert ctypes.c_void_p.from_address(slot).value == 5678
    assert perms().startswith("r--")
    libc.mprotect(start, mmap.PAGESIZE, 3)  # writable again, for mmap's own clean-up
