"""Streams between hosts: the trainer on one host, the members on another, SST over TCP across a
bridge (.ci/hosts-up: each host a network namespace with its own address and hostname, sharing the
file system, with no loopback between them).

They need the hosts of `.ci/hosts-up` (root). Without them they fail in CI (CI=true: the hosts are
part of CI, so missing ones are a broken CI, not a reason to pass) and skip elsewhere.
"""

from __future__ import annotations

import base64
import csv
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, TINY

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ON_HOST = str(REPO / ".ci" / "on-host")
HOST_A, HOST_B = "dm-a", "dm-b"  # .ci/hosts-up's default hosts
ADDRESS_B = "10.77.0.12"


@pytest.fixture(scope="module")
def hosts():
    """The hosts of .ci/hosts-up, or a skip (a failure in CI) saying why not."""
    why = None
    if os.geteuid() != 0:
        why = "not root (network namespaces)"
    else:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        if HOST_A not in listed or HOST_B not in listed:
            why = f"hosts {HOST_A}, {HOST_B} are not up (.ci/hosts-up)"
    if why:
        if IN_CI:
            pytest.fail(f"CI runs the tests across hosts: {why}")
        pytest.skip(why)
    return HOST_A, HOST_B


def on(host: str, *args, log=None) -> subprocess.Popen:
    """``args`` run on ``host``; its output to ``log`` (a long-running trainer: a pipe nobody reads
    would fill and block it), else to pipes."""
    out = subprocess.PIPE if log is None else open(log, "w")
    return subprocess.Popen([ON_HOST, host, *map(str, args)], stdout=out,
                            stderr=subprocess.PIPE if log is None else subprocess.STDOUT, text=True)


def test_hosts_reach_each_other_over_the_bridge_and_not_over_loopback(hosts):
    """What makes these tests mean something: host A reaches B at B's address, and B's loopback is
    not A's (a listener on B's 127.0.0.1 cannot be reached from A)."""
    code = ("import socket, sys, time; s = socket.socket(); s.bind((sys.argv[1], 47011)); s.listen(); "
            "print('up', flush=True); time.sleep(8)")
    for where, expect in ((ADDRESS_B, True), ("127.0.0.1", False)):
        server = on(HOST_B, sys.executable, "-c", code, where)
        try:
            assert server.stdout.readline().strip() == "up"
            probe = ("import socket, sys; s = socket.socket(); s.settimeout(2); "
                     "print(s.connect_ex((sys.argv[1], 47011)) == 0)")
            reached = on(HOST_A, sys.executable, "-c", probe, where).communicate(timeout=30)[0].strip()
            assert reached == str(expect), (where, reached)
        finally:
            server.kill()
            server.wait()
    names = [on(h, "hostname").communicate(timeout=30)[0].strip() for h in hosts]
    assert names == list(hosts)


def _study(tmp_path, **stream) -> tuple:
    cfg = {
        **TINY,
        "results_dir": str(tmp_path / "results"),
        "data_dir": str(tmp_path / "data"),
        "stream": {**TINY["stream"], "open_timeout_s": 30, "member_timeout_s": 30, **stream},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "datamove", "make-heldout", "--config", path], check=True,
                   capture_output=True, timeout=120)
    return path, tmp_path / "results" / cfg["study"]


def _published(contact_file) -> bytes:
    """The bytes of an SST contact file's contact string (EVPath's attribute list, base64)."""
    line = contact_file.read_text().splitlines()[1]
    return base64.b64decode(line.split(":", 1)[1])


def test_a_study_across_hosts_trainer_on_one_members_on_another(hosts, tmp_path):
    """stream.interface eth0: each member's writer on host B listens on B's bridge address only and
    publishes it; the trainer on host A reads every member; the ledger equals the markers."""
    path, study = _study(tmp_path, interface="eth0")
    log = tmp_path / "train.log"
    trainer = on(HOST_A, sys.executable, "-m", "datamove", "train", "--config", path, "--threads", 1, log=log)
    try:
        members = TINY["ensemble"]["n_members"]
        for m in range(members):
            marker = tmp_path / f"member-{m}.json"
            writer = on(HOST_B, sys.executable, "-m", "datamove", "simulate", "--config", path, "--member", m,
                        "--wait-trainer", "--marker", marker)
            if m == 0:  # while it streams: its contact file publishes B's address
                contact = study / "streams" / "member-000000.sst"
                deadline = time.monotonic() + 60
                while not contact.exists() and time.monotonic() < deadline and writer.poll() is None:
                    time.sleep(0.01)
                assert contact.exists(), "member 0's writer never published its contact file"
                published = _published(contact)
                assert socket.inet_aton(ADDRESS_B)[::-1] in published or socket.inet_aton(ADDRESS_B) in published
                assert socket.inet_aton("127.0.0.1")[::-1] not in published
            out, err = writer.communicate(timeout=120)
            assert writer.returncode == 0, err
            assert marker.exists()
        trainer.wait(timeout=120)
        assert trainer.returncode == 0, log.read_text()[-3000:]
    finally:
        trainer.kill()
    with open(study / "ledger.csv") as fh:
        ledger = list(csv.DictReader(fh))
    assert [(r["status"], int(r["steps_received"])) for r in ledger] == \
        [("complete", TINY["solver"]["n_steps"])] * TINY["ensemble"]["n_members"]


def test_a_writer_on_another_host_that_publishes_loopback_fails_fast_naming_the_key(hosts, tmp_path):
    """Without stream.interface a writer publishes 127.0.0.1: the trainer on another host cannot
    reach it. The member fails well within stream.open_timeout_s, never hangs, and says why: the
    address and the key to set."""
    path, _ = _study(tmp_path)
    trainer = on(HOST_A, sys.executable, "-m", "datamove", "train", "--config", path, "--threads", 1,
                 log=tmp_path / "train.log")
    try:
        t0 = time.monotonic()
        writer = on(HOST_B, sys.executable, "-m", "datamove", "simulate", "--config", path, "--member", 0,
                    "--wait-trainer")
        _, err = writer.communicate(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        trainer.kill()
        trainer.wait()
    assert writer.returncode != 0
    assert elapsed < 30, elapsed  # stream.open_timeout_s
    assert "publishes 127.0.0.1" in err and "set stream.interface" in err, err[-2000:]


def test_an_interface_the_host_lacks_is_refused_naming_the_key(hosts, tmp_path):
    path, _ = _study(tmp_path, interface="ib7")
    proc = on(HOST_B, sys.executable, "-m", "datamove", "simulate", "--config", path, "--member", 0)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert f"key 'stream.interface': 'ib7' is no network interface with an IPv4 address on host {HOST_B} " \
           "(its interfaces: lo, eth0)" in err, err
