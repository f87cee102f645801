"""A study's table: CSV files written once and read back, then its Markdown and figure built from
them alone, so that a study run in parts (``only``), in other folders or on other machines, is one
table again from its parts' CSV files (:func:`read_parts`, ``datamove study-table``).

Every CSV of a kind (``kind.tables``' ``*.csv`` roles) holds the run's fields (``kind.key``) in its
first columns; the summary (role ``summary``) has one row per run. The summary is written with 6
significant digits, the others with 10 (per test member sums, whose totals the statistics pool).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from datamove.evaluation.tables import write_csv
from datamove.studies.sweep import StudyKind


def csv_roles(kind: StudyKind) -> list[str]:
    return [role for role, name in kind.tables.items() if name.endswith(".csv")]


def paths(kind: StudyKind, folder: str | Path) -> dict[str, Path]:
    """Every file of the kind's table in ``folder``, by role."""
    return {role: Path(folder) / name for role, name in kind.tables.items()}


def write_table(kind: StudyKind, frames: Mapping[str, pd.DataFrame], folder: str | Path, **options) -> str:
    """The kind's CSV files from ``frames`` (role -> frame, from ``kind.collect`` or
    :func:`read_parts`), then its Markdown and figure from the CSVs as written; returns the text
    (the Markdown, or the summary as text where the kind has no Markdown)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    out = paths(kind, folder)
    written = {role: write_csv(frames[role], out[role], float_format="%.6g" if role == "summary" else "%.10g")
               for role in csv_roles(kind)}
    return kind.report(written, out, **options)


def read_parts(kind: StudyKind, folders: Sequence[str | Path]) -> dict[str, pd.DataFrame]:
    """The kind's CSV frames of a study run in parts: each role's file of every folder (a finished
    table's folder, or a copy of its CSV files), concatenated in the order given.

    Raises ValueError naming the file where one is missing or lacks a run's field, and naming both
    folders where a run is in two parts: which to keep would be a guess."""
    if not folders:
        raise ValueError("no parts to read")
    frames: dict[str, list[pd.DataFrame]] = {role: [] for role in csv_roles(kind)}
    where: dict[tuple, Path] = {}
    for folder in map(Path, folders):
        for role in frames:
            path = folder / kind.tables[role]
            if not path.is_file():
                names = ", ".join(kind.tables[r] for r in frames)
                raise ValueError(f"{path}: no such file (a part's folder holds {names})")
            frame = pd.read_csv(path)
            missing = [c for c in kind.key if c not in frame.columns]
            if missing:
                raise ValueError(f"{path}: no column {missing[0]!r}")
            frames[role].append(frame)
        # A run may have several rows (the models study's two arms): its rows are one part's.
        here = dict.fromkeys(map(tuple, frames["summary"][-1][list(kind.key)].itertuples(index=False)))
        for run in here:
            if run in where:
                name = kind.run_name.format(**dict(zip(kind.key, run)))
                raise ValueError(f"run {name} is in two parts: {where[run]} and {folder}; keep one")
        where.update(dict.fromkeys(here, folder))
    return {role: pd.concat(parts, ignore_index=True) for role, parts in frames.items()}
