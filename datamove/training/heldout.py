"""Held-out members: written once with BP5, read back as the validation set."""

from __future__ import annotations

import torch

from datamove.config import StudyConfig
from datamove.data import load_members
from datamove.problems.samples import SampleSpec


def load_heldout(cfg: StudyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """All held-out samples of the study's kind (trainer.sample): x [N, n_params + 1], y [N, n_fields,
    ny, nx] (autoregressive: [N, 2 x n_fields, ny, nx], input and target), N = members x samples
    per member (steps, or steps - sample_stride).

    Raises DatasetError naming a missing or mismatched member file (run ``datamove make-heldout``).
    """
    spec = SampleSpec.of(cfg)
    xs, ys = [], []
    for m in load_members(cfg, cfg.heldout_dir, cfg.heldout, missing="run `datamove make-heldout --config ...` first"):
        x, y, _ = spec.member_samples(m.params, m.times, torch.from_numpy(m.fields))
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)
