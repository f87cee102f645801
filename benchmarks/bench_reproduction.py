"""The workstation reproduction of the SC23 heat experiment: improvement of online over offline.

Runs the whole comparison study (``config/workstation.yaml`` by default) with ``snakemake --cores 2``
in a fresh working folder, then prints its results table, the improvement of online over offline in
test error (the paper: 47 % for this model) and the batch-throughput ratio (the paper: 13x), with the
wall time of the run and the command that reproduces it.

    python benchmarks/bench_reproduction.py [--config config/workstation.yaml] [--cores 2]
                                            [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "config" / "workstation.yaml"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", help="run here (default: a temporary folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-reproduction-"))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(Path(args.config).resolve()), "--cores", str(args.cores)]
    print(f"# {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"snakemake failed (exit {proc.returncode}); see {workdir / 'snakemake.log'}")
        return 1
    study = next(p.parent for p in (workdir / "results").glob("*/results.md"))
    print(f"\n{study / 'results.md'} (run: {wall / 60:.1f} min with --cores {args.cores}):\n")
    print((study / "results.md").read_text())
    table = pd.read_csv(study / "results.csv").set_index("quantity")
    compare = table["online vs offline"]
    print(f"improvement of online over offline in test relative L2 error: {compare['test relative L2 error']} "
          f"(paper: 47 %); in test MSE: {compare['test MSE (normalised)']}")
    print(f"batch throughput online / offline: {compare['batch throughput (batches/s)']} (paper: x13)")
    print(f"figures: {study / 'figures'}; report: {shlex.join(cmd[:-2])} --report report.html")
    if not args.workdir and not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
