"""What a training sample is: model inputs and targets of a member's steps, direct or autoregressive.

Two kinds (``trainer.sample``), one stored layout so that the reservoir, the offline dataset and the
validation set hold either without knowing which:

- ``direct``: x = (params..., t_k) [n_params + 1], y = the fields of step k [n_fields, ny, nx].
- ``autoregressive``: a *window* of L = h + n K steps of one member, s apart (``trainer.history``
  h, ``trainer.bundle`` K, ``trainer.unroll`` n, ``trainer.sample_stride`` s), stacked in time
  order on the field axis: y [L x n_fields, ny, nx]. The first h steps are the model's input; each
  of the n applications of the model predicts the next K steps from the h before them (its own
  predictions after the first, :meth:`SampleSpec.split`). x = (params..., the time of each
  application's last input step) [n_params + n]. h = K = n = 1 is a pair: step k -> step k + s.
  A member of N steps gives N - (L - 1) s windows; its first (L - 1) s steps end none. A window
  belongs to its *last* step (the ledger counts it there, the reservoir records that step).

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
        stride: s, steps between two consecutive steps of a window (0 for direct samples).
        n_fields: F, fields of one step.
        history: h, input steps of one application of the model (1 for direct samples).
        bundle: K, steps one application predicts (1 for direct samples).
        unroll: n, applications of the model a sample trains (1 for direct samples).
    """

    kind: str
    stride: int
    n_fields: int
    history: int = 1
    bundle: int = 1
    unroll: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"trainer.sample must be one of {KINDS}, got {self.kind!r}")
        if self.autoregressive and self.stride < 1:
            raise ValueError(f"trainer.sample_stride must be >= 1 for autoregressive samples, got {self.stride}")
        for key in ("history", "bundle", "unroll"):
            value = getattr(self, key)
            if value < 1:
                raise ValueError(f"trainer.{key} must be >= 1, got {value}")
            if value > 1 and not self.autoregressive:
                raise ValueError(f"trainer.{key} {value} needs autoregressive samples (trainer.sample is {self.kind})")

    @classmethod
    def of(cls, cfg, *, unroll: int | None = None) -> SampleSpec:
        """The spec of a :class:`~datamove.config.StudyConfig` (``unroll``: another n, e.g. 1 for
        the one-application validation samples)."""
        t = cfg.trainer
        return cls.make(t.sample, t.sample_stride, n_fields=len(cfg.problem.field_names), history=t.history,
                        bundle=t.bundle, unroll=t.unroll if unroll is None else unroll)

    @classmethod
    def make(cls, kind: str, stride: int, *, n_fields: int, history: int = 1, bundle: int = 1,
             unroll: int = 1) -> SampleSpec:
        if kind != "autoregressive":
            return cls(kind=kind, stride=0, n_fields=n_fields)
        return cls(kind=kind, stride=stride, n_fields=n_fields, history=history, bundle=bundle, unroll=unroll)

    def with_unroll(self, unroll: int) -> SampleSpec:
        """This spec with n = ``unroll`` (windows of h + unroll K steps)."""
        return SampleSpec.make(self.kind, self.stride, n_fields=self.n_fields, history=self.history,
                               bundle=self.bundle, unroll=unroll)

    @property
    def autoregressive(self) -> bool:
        return self.kind == "autoregressive"

    @property
    def window(self) -> int:
        """L, steps of one sample: h + n K (1 for direct samples)."""
        return self.history + self.unroll * self.bundle if self.autoregressive else 1

    @property
    def span(self) -> int:
        """Steps from a window's first step to its last: (L - 1) s; a member's first ``span`` steps
        end no window."""
        return (self.window - 1) * self.stride

    @property
    def in_fields(self) -> int:
        """Fields the model takes with x: h x n_fields for autoregressive samples, else 0."""
        return self.history * self.n_fields if self.autoregressive else 0

    @property
    def out_fields(self) -> int:
        """Fields one application of the model predicts: K x n_fields."""
        return self.bundle * self.n_fields

    @property
    def n_times(self) -> int:
        """Times in a sample's x: one per application (n), after the parameters."""
        return self.unroll if self.autoregressive else 1

    @property
    def time_positions(self) -> list[int]:
        """Window positions (0-based) of the steps whose times x holds: each application's last
        input step, h - 1 + j K for j < n (direct: the step itself)."""
        if not self.autoregressive:
            return [0]
        return [self.history - 1 + j * self.bundle for j in range(self.unroll)]

    def stored_shape(self, step_shape: Sequence[int]) -> tuple[int, ...]:
        """The stored y of one sample: ``step_shape`` [n_fields, ny, nx] times L on the field axis."""
        n_fields, *grid = step_shape
        return (self.window * n_fields, *grid)

    def x_dim(self, n_inputs: int) -> int:
        """The length of a sample's x, for a problem of ``n_inputs`` (parameters, then t)."""
        return n_inputs - 1 + self.n_times

    def samples_per_member(self, n_steps: int) -> int:
        return n_steps - self.span

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Stored y [B, L x n_fields, ny, nx] -> (input fields [B, h x n_fields, ny, nx] or None,
        targets [B, n K x n_fields, ny, nx]: the steps the n applications predict, in order); views,
        no copy."""
        if not self.autoregressive:
            return None, y
        return y[:, : self.in_fields], y[:, self.in_fields :]

    def window_offsets(self) -> torch.Tensor:
        """[L] 0-based step offsets of a window's steps from its last step: -(L-1)s, ..., -s, 0."""
        return torch.arange(-(self.window - 1), 1) * max(self.stride, 1) if self.autoregressive else torch.zeros(1, dtype=torch.int64)

    def window_steps(self, n_steps: int) -> torch.Tensor:
        """[N, L] the 0-based steps of every window of a member of ``n_steps``, in order of their
        last steps (direct: [n_steps, 1]); N = n_steps - (L - 1) s."""
        if n_steps <= self.span:
            raise ValueError(f"a member of {n_steps} steps has no window of {self.window} steps {self.stride} apart")
        return torch.arange(self.span, n_steps)[:, None] + self.window_offsets()[None, :]

    def member_inputs(self, params: Sequence[float], times: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """x of every sample of one member, in step order: [N, n_params + n_times], the member's
        parameters then the times at :attr:`time_positions` of each window; ``times`` [n_steps]."""
        times = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
        idx = self.window_steps(len(times))
        p = torch.as_tensor(params, dtype=torch.float32).reshape(1, -1).expand(len(idx), -1)
        return torch.cat([p, times[idx[:, self.time_positions]]], dim=1)

    def member_samples(
        self, params: Sequence[float], times: Sequence[float] | torch.Tensor, fields: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every sample of one member's steps, in step order.

        Args:
            params: [n_params]; times: [n_steps]; fields: [n_steps, n_fields, ny, nx].

        Returns:
            x [N, n_params + n_times], y [N, L x n_fields, ny, nx] and the 0-based index of each
            sample's last step [N]; N = n_steps - (L - 1) s.
        """
        idx = self.window_steps(fields.shape[0])  # [N, L] steps of each window
        y = fields[idx].flatten(1, 2)  # [N, L, F, ny, nx] -> [N, L F, ny, nx]
        return self.member_inputs(params, times), y, idx[:, -1]
