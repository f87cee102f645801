"""A network wrapped with the normalisation of its inputs and outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Surrogate(nn.Module):
    """Maps raw inputs (parameters, t) to raw fields, through a network working on [0, 1] scales.

    The bounds come from the problem (:meth:`datamove.problems.Problem.normalisation`): inputs by
    their ranges, each field by its own low and high. Losses are computed on the normalised scale so
    that they read alike across studies and fields.

    An autoregressive surrogate (``in_fields`` > 0) also takes the fields of its last ``history``
    steps (h, each ``stride`` s apart), in physical units, normalised like its outputs, and
    predicts the next ``bundle`` steps (K) at once; a stored sample's y then holds input and target
    steps stacked in time order on the field axis (:meth:`split`, see
    :mod:`datamove.problems.samples`). h = K = 1: one step from the one before.

    With ``delta_scale`` (``trainer.target: delta``, autoregressive only) the network predicts the
    change of each of its K steps from its last input step, on a per-field scale, and the surrogate
    adds it back: a prediction is ``last + delta_scale * network(x, fields)``, a state as with
    ``target: state``, so that whatever calls the surrogate (validation, evaluation, rollout,
    figures) sees no difference.

    Args:
        network: maps [batch, in_dim] (and fields [batch, h x n_fields, ny, nx]) to [batch, K x
            n_fields, ny, nx] (direct: [batch, n_fields, ny, nx]).
        x_low, x_high: [in_dim] bounds of the inputs.
        y_low, y_high: [n_fields] bounds of each field (a scalar: one field).
        in_fields: fields the network takes (0: direct samples; else h x n_fields).
        stride: autoregressive samples: steps between two consecutive steps of a window (0: direct).
        history: h, the steps it takes (autoregressive).
        bundle: K, the steps it predicts (autoregressive).
        delta_scale: [n_fields] the scale of a field's change over ``stride`` steps (raw units,
            :func:`datamove.training.step.delta_scale`): the network then predicts changes; None:
            states.
    """

    def __init__(
        self,
        *,
        network: nn.Module,
        x_low: Sequence[float],
        x_high: Sequence[float],
        y_low: Sequence[float] | float,
        y_high: Sequence[float] | float,
        in_fields: int = 0,
        stride: int = 0,
        history: int = 1,
        bundle: int = 1,
        delta_scale: Sequence[float] | None = None,
    ):
        super().__init__()
        self.network = network
        self.in_fields, self.stride = int(in_fields), int(stride)
        self.history, self.bundle = int(history), int(bundle)
        x_low_t = torch.as_tensor(x_low, dtype=torch.float32)
        span = torch.as_tensor(x_high, dtype=torch.float32) - x_low_t
        # A parameter held fixed (low == high) carries no information; avoid dividing by zero.
        self.register_buffer("x_low", x_low_t)
        self.register_buffer("x_span", torch.where(span > 0, span, torch.ones_like(span)))
        # [n_fields, 1, 1]: broadcast over a sample's grid, one scale per field.
        y_low_t = torch.as_tensor(y_low, dtype=torch.float32).reshape(-1, 1, 1)
        y_span = torch.as_tensor(y_high, dtype=torch.float32).reshape(-1, 1, 1) - y_low_t
        self.register_buffer("y_low", y_low_t)
        self.register_buffer("y_span", torch.clamp(y_span, min=1e-12))
        self.n_fields = y_low_t.shape[0]
        if self.history < 1 or self.bundle < 1:
            raise ValueError(f"history and bundle must be >= 1, got {history} and {bundle}")
        if self.in_fields not in (0, self.history * self.n_fields):
            raise ValueError(
                f"in_fields must be 0 or history x the {self.n_fields} field(s) of a step "
                f"({self.history * self.n_fields}), got {in_fields}"
            )
        if not self.in_fields and (self.history, self.bundle) != (1, 1):
            raise ValueError("history and bundle above 1 need autoregressive samples (in_fields > 0)")
        self.delta = delta_scale is not None
        if self.delta:
            if not self.in_fields:
                raise ValueError("delta targets need autoregressive samples (in_fields > 0): a change from what?")
            scale = torch.as_tensor(delta_scale, dtype=torch.float32).reshape(-1, 1, 1)
            if scale.shape[0] != self.n_fields or not bool(torch.all(scale > 0)):
                raise ValueError(f"delta_scale must hold one positive scale per field, got {list(delta_scale)}")
            self.register_buffer("delta_scale", scale)  # [n_fields, 1, 1]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As torch's, less the entries that are neither tensors nor a module's extra state: a
        library's network may put its own in the state dict it writes (neuraloperator's models add
        a ``_metadata`` dict of their constructor arguments, at the top level of the whole dict),
        which a strict load would refuse as unexpected. Missing or unexpected weights still fail."""
        kept = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor) or k.endswith("_extra_state")}
        return super().load_state_dict(kept, strict=strict, assign=assign)

    @property
    def out_fields(self) -> int:
        """Channels of one prediction: K x n_fields."""
        return self.bundle * self.n_fields

    @property
    def warmup(self) -> int:
        """True steps a rollout starts from: h x s (0 for a direct surrogate)."""
        return self.history * self.stride if self.in_fields else 0

    def _tile(self, t: torch.Tensor, channels: int) -> torch.Tensor:
        """A per-field [n_fields, 1, 1] tensor repeated over ``channels`` (steps x fields)."""
        return t if channels == self.n_fields else t.repeat(channels // self.n_fields, 1, 1)

    def _last(self, fields: torch.Tensor) -> torch.Tensor:
        """The last input step of ``fields`` [B, h x n_fields, ...], repeated K times: [B, K x n_fields, ...]."""
        last = fields[:, -self.n_fields :]
        return last if self.bundle == 1 else last.repeat(1, self.bundle, 1, 1)

    def normalise_y(self, y: torch.Tensor) -> torch.Tensor:
        """Raw steps [B, c x n_fields, ny, nx] (any whole number c of steps) -> normalised."""
        c = y.shape[1]
        return (y - self._tile(self.y_low, c)) / self._tile(self.y_span, c)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A stored sample's y [B, L x n_fields, ny, nx] -> (input fields [B, h x n_fields, ny, nx]
        or None, targets [B, (L - h) x n_fields, ny, nx]), raw."""
        if not self.in_fields:
            return None, y
        return y[:, : self.in_fields], y[:, self.in_fields :]

    def application_x(self, x: torch.Tensor, j: int = 0) -> torch.Tensor:
        """A sample's x [B, n_params + n] (parameters, then the time of each application's last
        input step) -> the network's x of application ``j`` [B, in_dim] (parameters, t)."""
        n_params = self.x_low.shape[0] - 1
        if x.shape[1] == n_params + 1 and j == 0:
            return x
        return torch.cat([x[:, :n_params], x[:, n_params + j : n_params + j + 1]], dim=1)

    def next_fields(self, fields: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """The input of the next application: the last h steps of ``fields`` [B, h x n_fields, ...]
        followed by ``pred`` [B, K x n_fields, ...] (raw)."""
        return torch.cat([fields, pred], dim=1)[:, -self.in_fields :]

    def network_output(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim] raw (and fields [batch, h x n_fields, ny, nx] raw) -> what the network
        predicts, [batch, K x n_fields, ny, nx]: the normalised states, or with delta targets the
        changes from the last step of ``fields`` divided by ``delta_scale``."""
        xn = (x - self.x_low) / self.x_span
        if fields is None:
            return self.network(xn)
        return self.network(xn, self.normalise_y(fields))

    def network_target(self, fields: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        """What :meth:`network_output` should be for raw ``target`` [B, K x n_fields, ny, nx]
        reached from raw ``fields`` (the loss the train step minimises is the MSE of the two)."""
        if self.delta:
            return (target - self._last(fields)) / self._tile(self.delta_scale, target.shape[1])
        return self.normalise_y(target)

    def state_weight(self) -> torch.Tensor | None:
        """[K x n_fields, 1, 1] (delta_scale / y_span)^2: an error of the network output times this
        is the error on the normalised state scale (None: the two scales are one)."""
        if not self.delta:
            return None
        return self._tile((self.delta_scale / self.y_span).square(), self.out_fields)

    def from_network_output(self, out: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """What the network gave (:meth:`network_output`) -> raw states [batch, K x n_fields, ny, nx]."""
        if self.delta:  # added in raw units: no round trip of the input through the normalised scale
            return self._last(fields) + out * self._tile(self.delta_scale, out.shape[1])
        c = out.shape[1]
        return out * self._tile(self.y_span, c) + self._tile(self.y_low, c)

    def forward_normalised(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim] raw (and fields [batch, h x n_fields, ny, nx] raw) -> normalised
        states [batch, K x n_fields, ny, nx]."""
        out = self.network_output(x, fields)
        if self.delta:
            return self.normalise_y(self._last(fields)) + out * self._tile(self.delta_scale / self.y_span, out.shape[1])
        return out

    def forward(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, in_dim] raw (and fields [batch, h x n_fields, ny, nx] raw) -> states
        [batch, K x n_fields, ny, nx] in physical units (direct: [batch, n_fields, ny, nx])."""
        return self.from_network_output(self.network_output(x, fields), fields)

    def sample_error(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Squared error on the normalised scale of the first application to stored samples: x
        [B, n_params + n] raw, y [B, L x n_fields, ny, nx] raw -> [B, K x n_fields, ny, nx] (direct:
        [B, n_fields, ny, nx]). The steps it predicts from the true history: the one-step error."""
        fields, target = self.split(y)
        target = target[:, : self.out_fields] if self.in_fields else target
        return (self.forward_normalised(self.application_x(x), fields) - self.normalise_y(target)).square()
