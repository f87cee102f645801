"""The few lines a study ends with: what each arm trained on, its test error, and where to look next.

``datamove summary`` writes them to ``<study>/summary.txt`` (the workflow's rule ``summarize``), which
the workflow prints once every output exists (``onsuccess``, after Snakemake's own lines, so that
they are the last thing a user sees) and the HTML report shows on its front page. They are read
from the study's files (``results.csv``, the arms' ``ledger.csv`` and ``config.yaml``), never from a
run in memory, so they say the same whenever they are printed.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path

import pandas as pd

from datamove.config import StudyConfig
from datamove.evaluation.arms import arm_dirs

WIDTH = 72  # prose lines wrap here (a terminal, and the report's front page)


def _size(path: Path) -> int:
    """Bytes under ``path`` (a BP5 member is a folder of files); 0 if it is not there."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def _relative(path: Path) -> str:
    """``path`` relative to the working directory where it is under it (what a user types)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _arm(folder: Path) -> tuple[StudyConfig, int]:
    """An arm's config and the members it trained on (complete in its ledger)."""
    ledger = pd.read_csv(folder / "ledger.csv")
    return StudyConfig.load(folder / "config.yaml"), int((ledger["status"] == "complete").sum())


def _on_disk(cfg: StudyConfig, arms: dict[str, tuple[StudyConfig, int]]) -> str:
    """What of the study's members the disk holds: each file-based arm's stored members, the
    validation and test members; and that the streamed ones were never written."""
    parts, streamed = [], []
    for name, (arm, members) in arms.items():
        if arm.stream.engine.upper() == "SST":
            streamed.append(f"the {name} arm's {members} members were streamed and never written")
        else:
            stored = sorted(arm.stream_dir.glob("*.bp"))
            parts.append(f"the {name} arm's {len(stored)} members ({_mb(sum(map(_size, stored)))}, "
                         f"{_relative(arm.stream_dir)}/)")
    parts.append(f"the {cfg.heldout.n_members} validation and {cfg.test.n_members} test members "
                 f"({_relative(cfg.test_dir.parent)}/)")
    return "On disk: " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] + \
        ("; " + "; ".join(streamed) if streamed else "") + "."


def report_command(cfg: StudyConfig, configfiles: list[str] = ()) -> str:
    """The command that writes the study's HTML report: this Python's snakemake, the study's
    config files (those given after --configfile), ``<study>/report.html``."""
    snakemake = Path(sys.executable).parent / "snakemake"
    command = [_relative(snakemake) if snakemake.exists() else "snakemake"]
    for path in configfiles:
        command += ["--configfile", _relative(Path(path))]
    return shlex.join([*command, "--report", f"{_relative(cfg.study_dir)}/report.html"])


def study_summary(cfg: StudyConfig, *, report: str | None = None) -> str:
    """The summary of the evaluated study ``cfg`` (a comparison study or a study of one arm with
    ``evaluation.enabled``), from its ``results.csv``; a ValueError names the file that is missing.
    ``report``: the command that writes its report (default: :func:`report_command` without config
    files)."""
    table_path = cfg.study_dir / "results.csv"
    if not table_path.exists():
        raise ValueError(f"no {table_path}: the study has not been evaluated yet (evaluation.enabled or "
                         f"comparison.enabled, then snakemake)")
    table = pd.read_csv(table_path).set_index("quantity")
    arms = {name: _arm(folder) for name, folder in arm_dirs(cfg).items()}
    batches = int(float(table.loc["batches trained"].iloc[0]))
    both = "online vs offline" in table.columns
    shape = " x ".join(map(str, cfg.problem.field_shape))
    head = (f"DATAMOVE study '{cfg.study}': a {cfg.trainer.model} surrogate of {cfg.problem.name} ({shape}, "
            f"{cfg.problem.n_steps} steps a member), "
            + ("online against offline training, " if both else "")
            + f"{batches:,} batches of {cfg.trainer.batch_size}" + (" each." if both else "."))
    lines = [*textwrap.wrap(head, WIDTH, break_on_hyphens=False), ""]
    rows = [("arm", "members trained on", "test relative L2")]
    for name, (arm, members) in arms.items():
        error = float(table.at["test relative L2 error", name])
        rows.append((f"{name} ({arm.stream.engine.upper()})", f"{members}", f"{error:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  " + "   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append("")
    tested = f"{cfg.test.n_members} test members that no arm trained on"
    if both:
        rel = str(table.at["test relative L2 error", "online vs offline"]).strip()
        mse = str(table.at["test MSE (normalised)", "online vs offline"]).strip()
        word = "less" if rel.startswith("-") else "more"
        prose = f"Online training is {rel.lstrip('+-')} {word} accurate than offline on {tested} (relative L2; {mse} in MSE)."
    else:
        prose = f"Tested on {tested}."
    for text in (prose, _on_disk(cfg, arms)):
        lines += textwrap.wrap(text, WIDTH, break_on_hyphens=False)
    study = _relative(cfg.study_dir)
    lines += [
        "",
        f"  figures: {study}/figures/*.png",
        f"  table:   {study}/results.md",
        f"  report:  {report or report_command(cfg)}",
    ]
    return "\n".join(lines)
