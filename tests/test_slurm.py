"""The Slurm profile (profiles/slurm): a dry run, and the tiny online study on a real Slurm cluster.

The real run needs the one-node cluster of `.ci/slurm-up`. Without one it fails in CI (CI=true: the
cluster is part of CI, so a missing one is a broken CI, not a reason to pass) and skips elsewhere.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SNAKEMAKE
from datamove.config import StudyConfig

PROFILE = REPO / "profiles" / "slurm"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Hard limit of the whole study through Slurm (it takes about a minute here): CI never hangs.
STUDY_TIMEOUT_S = 600


def default_partition() -> tuple[str | None, str]:
    """(the default partition, "") if sinfo answers with one that is up, else (None, why not)."""
    if shutil.which("sinfo") is None:
        return None, "no `sinfo` on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return None, "`sinfo` did not answer within 20 s"
    if proc.returncode != 0:
        return None, f"`sinfo` failed: {proc.stderr.strip()}"
    up = [line.split() for line in proc.stdout.splitlines() if line.split()[-1:] == ["up"]]
    if not up:
        return None, f"no partition is up: {proc.stdout.strip()!r}"
    default = [name for name, _ in up if name.endswith("*")]
    return (default or [up[0][0]])[0].rstrip("*"), ""


@pytest.fixture
def slurm_partition() -> str:
    partition, why = default_partition()
    if partition is None:
        msg = f"no Slurm cluster: {why}; start one with .ci/slurm-up"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return partition


def test_profile_dry_run(tiny_config, tmp_path):
    """`snakemake --profile profiles/slurm -n`: the profile parses and its resources reach the jobs
    (that the gate runs locally shows only in a real run: test_tiny_online_study_through_slurm)."""
    path = tiny_config()
    proc = subprocess.run(
        [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(path), "--profile", str(PROFILE), "-n"],
        capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "rule open_gate:" in out and "rule train_online:" in out and "rule simulate_member:" in out
    assert "slurm_partition=your_partition" in out and "slurm_account=your_account" in out
    assert "member_slots=1" in out


def test_profile_dry_run_members_per_job(tiny_config, tmp_path):
    """ensemble.members_per_job > 1: simulate_members jobs, with their own resources."""
    path = tiny_config(ensemble={"n_members": 5, "members_per_job": 2})
    proc = subprocess.run(
        [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(path), "--profile", str(PROFILE), "-n"],
        capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("rule simulate_members:") == 3 and "rule simulate_member:" not in out
    assert "runtime=120" in out and "member_slots=1" in out


def local_profile(tmp_path: Path, partition: str, prefix: str) -> Path:
    """profiles/slurm with what README tells a user to edit, set for the local cluster.

    Partition: the cluster's default. Account: none (the local cluster has no accounting, so there
    is nothing to validate one against). Status from squeue (no slurmdbd, so no sacct), checked every
    2 s so that a tiny study is not mostly waiting. A job name prefix of this test's own, to cancel
    its jobs whatever happens. Everything else (resources, the gate, retries) is the profile's.
    """
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    resources = profile["default-resources"]
    resources["slurm_partition"] = partition
    del resources["slurm_account"]
    profile["slurm-status-command"] = "squeue"
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["slurm-jobname-prefix"] = prefix
    profile["slurm-keep-successful-logs"] = True
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def cancel_jobs(prefix: str) -> None:
    """scancel every job of this test that is still queued or running."""
    proc = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30)
    ids = [line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:2] and line.split()[1].startswith(prefix)]
    if ids:
        subprocess.run(["scancel", *ids], timeout=30)


def read_ledger(path):
    with open(path) as fh:
        return {int(r["member"]): r for r in csv.DictReader(fh)}


@pytest.mark.slurm
@pytest.mark.slow
def test_tiny_online_study_through_slurm(slurm_partition, tiny_config, tmp_path):
    # sampler adaptive: the members, in Slurm jobs, draw from the trainer's proposals in the study folder.
    path = tiny_config(parameters={"sampler": "adaptive", "adaptive": {"publish_every": 5}})
    cfg = StudyConfig.load(path)
    prefix = f"dmtest_{uuid.uuid4().hex[:8]}"
    profile = local_profile(tmp_path, slurm_partition, prefix)
    log = tmp_path / "snakemake.log"
    t0 = time.monotonic()
    with log.open("w") as fh:  # a file, not a pipe: nobody reads a pipe while it runs
        # A session of its own: on a timeout the local gate job goes with Snakemake.
        proc = subprocess.Popen(
            [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(path), "--profile", str(profile)],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=STUDY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()  # Snakemake cancels its Slurm jobs on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            rc = None
        finally:
            cancel_jobs(prefix)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of it: the gate, a stuck Snakemake
            except ProcessLookupError:
                pass
            proc.wait()
    elapsed = time.monotonic() - t0
    out = log.read_text()
    assert rc is not None, f"the study did not end within {STUDY_TIMEOUT_S} s:\n{out[-6000:]}"
    assert rc == 0, out[-6000:]
    print(f"tiny online study through Slurm: {elapsed:.1f} s")

    # Every job but the gate went through Slurm: write_config, make_heldout, the trainer, the members.
    submitted = out.count("has been submitted with SLURM jobid")
    assert submitted == 3 + cfg.ensemble.n_members, out[-6000:]
    assert "localrule open_gate:" in out
    # The gate: the trainer was submitted, and the gate had opened (the trainer was reading streams),
    # before the first member was submitted.
    first_member = out.index("rule simulate_member:")
    assert out.index("rule train_online:") < out.index("(Rule: open_gate)") < first_member

    ledger = read_ledger(cfg.study_dir / "ledger.csv")
    assert len(ledger) == cfg.ensemble.n_members
    assert [r["status"] for r in ledger.values()] == ["complete"] * cfg.ensemble.n_members
    assert sum(int(r["steps_received"]) for r in ledger.values()) == cfg.ensemble.n_members * cfg.problem.n_steps
    assert (cfg.study_dir / "model.pt").stat().st_size > 0
    assert not list(Path(cfg.results_dir).rglob("*.sst"))
    # Each member's draw is recorded (a proposal's, or its base point if it started before the
    # first one), and the ledger has it.
    for member, row in ledger.items():
        draw = json.loads((cfg.study_dir / "members" / f"member-{member:06d}.draw.json").read_text())
        assert row["draw"] == draw["source"] in ("base", "proposal") and int(row["proposal_version"]) == draw["version"]
