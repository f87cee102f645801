"""Model inputs of a sample."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def direct_inputs(params: Sequence[float], times: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Inputs of direct samples, [n, n_params + 1]: one member's parameters, then each of ``n`` times."""
    t = torch.as_tensor(times, dtype=torch.float32).reshape(-1, 1)
    p = torch.as_tensor(params, dtype=torch.float32).reshape(1, -1).expand(t.shape[0], -1)
    return torch.cat([p, t], dim=1)
