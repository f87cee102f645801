"""Held-out members: written once with BP5, read back as the validation set (one-step samples) and,
for rollout validation, as whole trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from datamove.config import StudyConfig
from datamove.data import load_members
from datamove.data.files import StoredMember
from datamove.problems.samples import direct_inputs, SampleSpec


def heldout_members(cfg: StudyConfig) -> list[StoredMember]:
    """Every held-out member read whole, once (the samples and the trajectories are cut from these).

    Raises DatasetError naming a missing or mismatched member file (run ``datamove make-heldout``).
    """
    return list(load_members(cfg, cfg.heldout_dir, cfg.heldout, missing="run `datamove make-heldout --config ...` first"))


def load_heldout(cfg: StudyConfig, members: Sequence[StoredMember] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All held-out samples of the study's kind (trainer.sample): x [N, n_params + 1], y [N, n_fields,
    ny, nx] (autoregressive: windows of one application, [N, (h + K) x n_fields, ny, nx], input and
    target steps, whatever trainer.unroll), N = members x samples per member (steps, or steps -
    (h + K - 1) sample_stride). ``members``: as :func:`heldout_members` gives them
    (read here when None).

    Raises DatasetError naming a missing or mismatched member file (run ``datamove make-heldout``).
    """
    spec = SampleSpec.of(cfg, unroll=1)  # one application: validation's one-step error, and less memory
    xs, ys = [], []
    for m in heldout_members(cfg) if members is None else members:
        x, y, _ = spec.member_samples(m.params, m.times, torch.from_numpy(m.fields))
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@dataclass(frozen=True)
class Trajectories:
    """The held-out members as whole trajectories, all of one length (solver.n_steps).

    Attributes:
        x: [M, n_steps, n_params + 1] raw inputs of each step (parameters, t_k).
        fields: [M, n_steps, n_fields, ny, nx] the true steps (raw).
    """

    x: torch.Tensor
    fields: torch.Tensor

    @classmethod
    def of(cls, members: Sequence[StoredMember], device: torch.device | str = "cpu") -> Trajectories:
        lengths = {len(m.times) for m in members}
        if len(lengths) != 1:
            raise ValueError(f"held-out members of different lengths {sorted(lengths)}: no batched rollout")
        x = torch.stack([direct_inputs(m.params, m.times) for m in members])
        fields = torch.stack([torch.from_numpy(m.fields) for m in members])
        return cls(x=x.to(device), fields=fields.to(device))
