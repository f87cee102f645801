"""Member files (BP5) of a study: finding them, checking them against the config, reading them.

One reader for every stored member (training members of the offline arm, held-out and test members):
:class:`datamove.streaming.files.MemberFile`, opened with the problem's fields. A file that was not
written for this config is refused with a :class:`DatasetError` that names the file and what differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamove.config import SamplingConfig, StudyConfig
from datamove.sampling.proposals import expected_params
from datamove.streaming.contract import StreamError, stream_path
from datamove.streaming.files import MemberFile


class DatasetError(ValueError):
    """A stored member that cannot be used with this config; the message names the file."""


@dataclass(frozen=True)
class StoredMember:
    """One member read whole from its file.

    Attributes:
        member: its id.
        params: float64 [n_params].
        times: float64 [n_steps].
        fields: float32 [n_steps, n_fields, ny, nx], the problem's fields in order.
    """

    member: int
    params: np.ndarray
    times: np.ndarray
    fields: np.ndarray


def member_file(cfg: StudyConfig, folder: str | Path, member: int) -> MemberFile:
    """The (unopened) file of ``member`` in ``folder``, read with the problem's fields."""
    return MemberFile(stream_path(folder, member, "BP5"), member, fields=cfg.problem.field_names)


def check_member_file(mf: MemberFile, cfg: StudyConfig, *, sampling: SamplingConfig | None = None) -> None:
    """Refuse a member file (opened) that was not written for this config.

    Checks solver, parameter names, field shape, the problem's constants (grid, time step, ...),
    the step count (fewer steps: a truncated file) and, when ``sampling`` is given, the member's
    parameters.
    """
    problem, info, where = cfg.problem, mf.info, mf.path
    problems = []
    if info.solver != problem.name:
        problems.append(f"solver '{info.solver}' (config: solver.name '{problem.name}')")
    if tuple(info.param_names) != tuple(problem.param_names):
        problems.append(f"param_names {list(info.param_names)} (config: {list(problem.param_names)})")
    if tuple(mf.field_shape) != tuple(problem.field_shape):
        problems.append(
            f"fields of {' x '.join(map(str, mf.field_shape))} (config: {' x '.join(map(str, problem.field_shape))})"
        )
    problems += problem.check_constants(info.constants)
    if problems:
        raise DatasetError(f"{where} does not match the config: " + "; ".join(problems))
    if mf.n_steps != problem.n_steps:
        kind = "truncated" if mf.n_steps < problem.n_steps else "longer than expected"
        raise DatasetError(f"{where} is {kind}: {mf.n_steps} steps, the config expects solver.n_steps = {problem.n_steps}")
    if sampling is not None:
        # A training member of sampler adaptive carries its recorded draw (datamove.sampling.proposals).
        expected = expected_params(cfg, mf.member) if sampling is cfg.ensemble else sampling.params(mf.member)
        if info.params.shape != expected.shape or not np.allclose(info.params, expected, rtol=1e-9, atol=0.0):
            raise DatasetError(
                f"{where} was written with params {info.params.tolist()}, but member {mf.member} of this "
                f"config has {expected.tolist()} (parameter ranges, sampler or seed changed?): rerun its simulation"
            )
    try:
        mf.read_step(mf.n_steps - 1)  # a data file cut short fails here, not mid-training
    except StreamError as exc:
        raise DatasetError(f"{where} is truncated or corrupt: {exc.reason}") from exc


def open_checked(cfg: StudyConfig, folder: str | Path, member: int, *, sampling: SamplingConfig | None,
                 missing: str) -> MemberFile:
    """Open and check ``member``'s file in ``folder``; ``missing`` says how to make a missing one.

    Raises DatasetError naming the file: missing, unreadable, not the contract, or not this config's.
    """
    mf = member_file(cfg, folder, member)
    if not mf.path.exists():
        raise DatasetError(f"member file {mf.path} not found: {missing}")
    try:
        mf.open()
        check_member_file(mf, cfg, sampling=sampling)
    except StreamError as exc:  # unreadable, or not the stream contract
        mf.close()
        raise DatasetError(f"member file {mf.path}: {exc.reason}") from exc
    except DatasetError:
        mf.close()
        raise
    return mf


def load_members(cfg: StudyConfig, folder: str | Path, sampling: SamplingConfig, *, missing: str) -> Iterator[StoredMember]:
    """Every member of ``sampling`` stored in ``folder``, checked against the config, read whole."""
    for member in range(sampling.n_members):
        mf = open_checked(cfg, folder, member, sampling=sampling, missing=missing)
        try:
            yield StoredMember(member=member, params=mf.info.params, times=mf.times, fields=mf.read_all())
        except StreamError as exc:
            raise DatasetError(f"member file {mf.path}: {exc.reason}") from exc
        finally:
            mf.close()
