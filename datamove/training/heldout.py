"""Held-out members: written once with BP5, read back as the validation set."""

from __future__ import annotations

import torch

from datamove.config import StudyConfig
from datamove.data import load_members
from datamove.training.inputs import direct_inputs


def load_heldout(cfg: StudyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """All held-out samples: x [N, n_params + 1], y [N, n_fields, ny, nx], N = members x steps.

    Raises DatasetError naming a missing or mismatched member file (run ``datamove make-heldout``).
    """
    xs, ys = [], []
    for m in load_members(cfg, cfg.heldout_dir, cfg.heldout, missing="run `datamove make-heldout --config ...` first"):
        xs.append(direct_inputs(m.params, m.times))
        ys.append(torch.from_numpy(m.fields))
    return torch.cat(xs), torch.cat(ys)
