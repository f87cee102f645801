"""Shared fixtures: tiny studies written under tmp_path, and the markers CI selects on."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a whole workflow or several processes (seconds to a minute)")
    config.addinivalue_line("markers", "study: a study of studies end to end, each run a nested workflow (minutes; slow too)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("markers", "slurm: needs the local Slurm cluster (.ci/slurm-up)")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


TINY = {
    "study": "tiny",
    "solver": {"nx": 12, "ny": 10, "n_steps": 20},
    "ensemble": {"n_members": 3},
    "heldout": {"n_members": 2},
    "reservoir": {"capacity": 40, "watermark": 10},
    "trainer": {"batch_size": 8, "extra_batches": 30, "log_every": 10, "device": "cpu",
                "model_args": {"hidden": 32, "layers": 2}},
    "stream": {"open_timeout_s": 60, "member_timeout_s": 60},
}


@pytest.fixture
def tiny_config(tmp_path):
    """Factory: write a tiny study config under tmp_path, with overrides; returns its path."""

    def make(name: str = "config.yaml", **overrides) -> Path:
        cfg = _merge(TINY, {"results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data")})
        cfg = _merge(cfg, overrides)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make


def write_study(tmp_path: Path, *, solver: dict, parameters: dict | None = None, **overrides) -> Path:
    """A tiny study of another problem than heat: TINY's sizes with ``solver`` (and ``parameters``)
    in place of its heat sections, written to tmp_path/config.yaml; returns the path."""
    cfg = _merge({k: v for k, v in TINY.items() if k != "solver"}, {
        "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"), "solver": solver,
        **({"parameters": parameters} if parameters else {}),
    })
    cfg = _merge(cfg, overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(workdir: Path, config: Path, *args, timeout=300) -> subprocess.CompletedProcess:
    """Run the workflow on a study config, in ``workdir`` (its .snakemake/ goes there)."""
    return subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(config), *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )


def planned_jobs(output: str) -> dict[str, int]:
    """The job counts of a Snakemake plan (its "Job stats" table): rule -> jobs, and "total"."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0] if "Job stats:" in output else ""
    return {words[0]: int(words[1]) for words in map(str.split, table.splitlines())
            if len(words) == 2 and words[1].isdigit()}


def run_keys(kind, cfg) -> list[tuple]:
    """The fields of every run that a study of studies (a datamove.studies kind) selects, in the
    order of its key, run by run."""
    return [run.key(kind.key) for run in kind.runs(cfg)]


def summary_and_members(kind, runs) -> tuple:
    """The summary and per test member frames that ``kind`` collects from ``runs``' folders."""
    frames = kind.collect(runs)
    return frames["summary"], frames["members"]


def pids_running(study_dir, *needles: str) -> list[int]:
    """The Python processes whose command line names ``study_dir`` and every needle ("datamove
    simulate", "--member 000001"): a test's own, never those of a test running beside it (tests run
    in parallel processes, and every study's members have the same numbers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        cmd = " ".join(argv)
        if Path(argv[0]).name.startswith("python") and all(n in cmd for n in (str(study_dir), *needles)):
            found.append(int(pid))
    return found


def kill_member_when_streaming(stream_dir: Path, member: int, killed: list, deadline: float) -> None:
    """SIGKILL ``member``'s solver once its stream appears (run in a thread): its Python processes
    (it and its watchdog), not the shell around them, and the study's own (its folder holds the
    stream folder). The pids go into ``killed``; gives up at monotonic time ``deadline``."""
    from datamove.streaming.contract import contact_file  # here: conftest imports no datamove at load

    while time.monotonic() < deadline and not killed:
        if contact_file(stream_dir, member).exists():
            victims = pids_running(stream_dir.parent, "datamove simulate", f"--member {member:06d}")
            if victims:
                # Let a few steps through (the open itself takes up to ~0.5 s on a loaded machine):
                # killed mid-stream, with most of its steps still to come.
                time.sleep(1.2)
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(victims)
                return
        time.sleep(0.02)


def datamove(*args, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run the datamove CLI in a fresh process (the way the workflow does)."""
    return subprocess.run(
        [sys.executable, "-m", "datamove", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, check=check, **kw,
    )


class Background:
    """A datamove command running in the background, its output going to a file.

    A file, not a pipe: a long-running trainer prints progress, and an unread pipe would fill and
    block it (and with it the streams it reads).
    """

    def __init__(self, args, log: Path):
        self.log = Path(log)
        with self.log.open("w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "datamove", *map(str, args)], stdout=fh, stderr=subprocess.STDOUT
            )

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def popen_datamove(*args, log: Path) -> Background:
    return Background(args, log)


@pytest.fixture
def one_thread():
    """Torch in one thread for the test, as before it afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def env_no_gpu():
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def model_args(cfg):
    """surrogate_args of a study without reading its held-out members: for the heat problem, whose
    normalisation comes from declared bounds, any data give the same scales."""
    import numpy as np

    from datamove.training.step import surrogate_args

    ny, nx = cfg.problem.field_shape
    norm = cfg.problem.normalisation(times=np.ones(1), fields=np.zeros((1, len(cfg.problem.fields), ny, nx)))
    return surrogate_args(cfg, norm)


def read_member(cfg, path, member):
    """A whole member file, with the problem's fields: (info, times [n], fields [n, n_fields, ny, nx])."""
    from datamove.streaming.files import MemberFile

    with MemberFile(path, member, fields=cfg.problem.field_names) as mf:
        return mf.info, mf.times, mf.read_all()
