"""Held-out members: written once with BP5, read back as a validation set."""

from __future__ import annotations

import dataclasses

import torch

from datamove.config import StudyConfig
from datamove.streaming.contract import stream_path
from datamove.streaming.reader import Expectation, read_member_file
from datamove.training.step import inputs


def load_heldout(cfg: StudyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """All held-out samples: x [N, n_params + 1], y [N, ny, nx], N = members x steps.

    Raises FileNotFoundError naming the missing member file (run ``datamove make-heldout``).
    """
    stream = dataclasses.replace(cfg.stream, engine="BP5", xml_config=None)
    expect = Expectation(
        field_shape=(cfg.solver.ny, cfg.solver.nx), param_names=cfg.heldout.names, solver=cfg.solver_name
    )
    xs, ys = [], []
    for member in range(cfg.heldout.n_members):
        path = stream_path(cfg.heldout_dir, member, "BP5")
        if not path.exists():
            raise FileNotFoundError(
                f"held-out member {member} not found at {path}; run `datamove make-heldout --config ...` first"
            )
        info, times, fields = read_member_file(stream=stream, path=path, member=member, expect=expect)
        xs.append(inputs(info.params, times))
        ys.append(torch.from_numpy(fields))
    return torch.cat(xs), torch.cat(ys)
