"""What a training sample is: model inputs and targets of a member's steps, direct or autoregressive.

Two kinds (``trainer.sample``), one stored layout so that the reservoir, the offline dataset and the
validation set hold either without knowing which:

- ``direct``: x = (params..., t_k) [n_params + 1], y = the fields of step k [n_fields, ny, nx].
- ``autoregressive`` with stride s (``trainer.sample_stride``): x = (params..., t_k), and y = the
  fields of step k and of step k + s stacked on the field axis, [2 * n_fields, ny, nx]: the first
  half is the model's input, the second its target (:meth:`SampleSpec.split`). A member of n steps
  gives n - s pairs; its first s steps are inputs only. A pair belongs to its *target* step (the
  ledger counts it there, the reservoir records that step).

Here, beside the problems whose steps it cuts into samples, so that the member feed (streaming/),
the stored members (data/) and training/ read one layout without a lower layer importing a higher
one. Not imported by ``datamove.problems`` itself: it needs torch, and the config does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

KINDS = ("direct", "autoregressive")


def direct_inputs(params: Sequence[float], times: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Inputs of direct samples, [n, n_params + 1]: one member's parameters, then each of ``n`` times."""
    t = torch.as_tensor(times, dtype=torch.float32).reshape(-1, 1)
    p = torch.as_tensor(params, dtype=torch.float32).reshape(1, -1).expand(t.shape[0], -1)
    return torch.cat([p, t], dim=1)


@dataclass(frozen=True, kw_only=True)
class SampleSpec:
    """The sample kind of a study, and the shapes it gives.

    Attributes:
        kind: ``direct`` or ``autoregressive``.
        stride: s, steps from input to target (0 for direct samples).
        n_fields: fields of one step.
    """

    kind: str
    stride: int
    n_fields: int

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"trainer.sample must be one of {KINDS}, got {self.kind!r}")
        if self.autoregressive and self.stride < 1:
            raise ValueError(f"trainer.sample_stride must be >= 1 for autoregressive samples, got {self.stride}")

    @classmethod
    def of(cls, cfg) -> SampleSpec:
        """The spec of a :class:`~datamove.config.StudyConfig`."""
        t = cfg.trainer
        return cls.make(t.sample, t.sample_stride, n_fields=len(cfg.problem.field_names))

    @classmethod
    def make(cls, kind: str, stride: int, *, n_fields: int) -> SampleSpec:
        return cls(kind=kind, stride=stride if kind == "autoregressive" else 0, n_fields=n_fields)

    @property
    def autoregressive(self) -> bool:
        return self.kind == "autoregressive"

    @property
    def in_fields(self) -> int:
        """Fields the model takes with x: n_fields for autoregressive samples, else 0."""
        return self.n_fields if self.autoregressive else 0

    def stored_shape(self, step_shape: Sequence[int]) -> tuple[int, ...]:
        """The stored y of one sample: ``step_shape`` [n_fields, ny, nx], doubled on the field axis
        for autoregressive samples."""
        n_fields, *grid = step_shape
        return (2 * n_fields if self.autoregressive else n_fields, *grid)

    def samples_per_member(self, n_steps: int) -> int:
        return n_steps - self.stride

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Stored y [B, stored fields, ny, nx] -> (input fields [B, n_fields, ny, nx] or None, target
        [B, n_fields, ny, nx]); views, no copy."""
        if not self.autoregressive:
            return None, y
        return y[:, : self.n_fields], y[:, self.n_fields :]

    def member_samples(
        self, params: Sequence[float], times: Sequence[float] | torch.Tensor, fields: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every sample of one member's steps, in step order.

        Args:
            params: [n_params]; times: [n_steps]; fields: [n_steps, n_fields, ny, nx].

        Returns:
            x [n, n_params + 1], y [n, stored fields, ny, nx] and the 0-based index of each sample's
            target step [n]; n = n_steps - stride.
        """
        s = self.stride
        times = torch.as_tensor(times, dtype=torch.float32)
        n_steps = fields.shape[0]
        if n_steps <= s:
            raise ValueError(f"a member of {n_steps} steps has no sample with stride {s}")
        target = torch.arange(s, n_steps)
        x = direct_inputs(params, times[: n_steps - s])
        y = fields if not self.autoregressive else torch.cat([fields[: n_steps - s], fields[s:]], dim=1)
        return x, y, target
