"""Reproducible parameter sampling for ensemble members.

Member k of a study gets the same parameters on every run and on every machine, whichever process
asks first: each member's simulation job calls ``member_params`` for itself, with no shared state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import qmc

SAMPLERS = ("uniform", "lhs", "halton")


def member_params(
    *,
    ranges: Sequence[Sequence[float]],
    sampler: str,
    seed: int,
    member: int,
    n_members: int,
) -> np.ndarray:
    """Parameters of ensemble member ``member``, float64 [n_params], inside ``ranges``.

    ``ranges``: one (low, high) pair per parameter, [n_params, 2]; low == high pins a parameter.
    Samplers:

    - ``uniform``: independent uniform draws from ``np.random.default_rng([seed, member])``;
      does not depend on ``n_members``.
    - ``halton``: point ``member`` of the scrambled Halton sequence seeded with ``seed``; does not
      depend on ``n_members``, so growing a study keeps its existing members.
    - ``lhs``: row ``member`` of a Latin hypercube design of ``n_members`` rows seeded with ``seed``.
      Depends on ``n_members``: the same member of a study of another size gets other parameters.
    """
    _check_member(member, n_members)
    return _sample(ranges=ranges, sampler=sampler, seed=seed, start=member, stop=member + 1,
                   n_members=n_members)[0]


def ensemble_params(
    *,
    ranges: Sequence[Sequence[float]],
    sampler: str,
    seed: int,
    n_members: int,
) -> np.ndarray:
    """Parameters of all members, float64 [n_members, n_params]; row k equals ``member_params(member=k)``."""
    return _sample(ranges=ranges, sampler=sampler, seed=seed, start=0, stop=n_members,
                   n_members=n_members)


def _sample(
    *,
    ranges: Sequence[Sequence[float]],
    sampler: str,
    seed: int,
    start: int,
    stop: int,
    n_members: int,
) -> np.ndarray:
    """Members ``start..stop-1`` scaled to ``ranges``, float64 [stop - start, n_params].

    The one implementation behind ``member_params`` and ``ensemble_params``, so a member drawn alone
    and drawn with its ensemble are the same by construction.
    """
    bounds = _check_ranges(ranges)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known samplers: {', '.join(SAMPLERS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _check_n_members(n_members)
    n_dims = bounds.shape[0]
    if sampler == "uniform":
        # One generator per member, keyed by (seed, member): no member's draw depends on another's.
        unit = np.stack([np.random.default_rng([seed, k]).random(n_dims) for k in range(start, stop)])
    elif sampler == "halton":
        # seed= (not rng=): the two give different scrambles, and seed= is the documented stream.
        engine = qmc.Halton(n_dims, scramble=True, seed=seed)
        engine.fast_forward(start)
        unit = engine.random(stop - start)
    else:
        # The whole design is needed to know which stratum each row got.
        unit = qmc.LatinHypercube(n_dims, seed=seed).random(n_members)[start:stop]
    low, high = bounds[:, 0], bounds[:, 1]
    return low + unit * (high - low)


def _check_n_members(n_members: int) -> None:
    if isinstance(n_members, bool) or not isinstance(n_members, (int, np.integer)) or n_members < 1:
        raise ValueError(f"n_members must be a positive integer, got {n_members!r}")


def _check_member(member: int, n_members: int) -> None:
    _check_n_members(n_members)
    if isinstance(member, bool) or not isinstance(member, (int, np.integer)):
        raise ValueError(f"member must be an integer, got {member!r}")
    if not 0 <= member < n_members:
        raise ValueError(f"member must be in [0, n_members) = [0, {n_members}), got {member}")


def _check_ranges(ranges: Sequence[Sequence[float]]) -> np.ndarray:
    """Validate (low, high) pairs; returns float64 [n_params, 2]."""
    bounds = np.asarray(ranges, dtype=np.float64)
    if bounds.ndim != 2 or bounds.shape[1] != 2 or bounds.shape[0] == 0:
        raise ValueError(f"ranges must be a non-empty sequence of (low, high) pairs, got shape {bounds.shape}")
    if not np.all(np.isfinite(bounds)):
        raise ValueError(f"ranges must be finite, got {bounds.tolist()}")
    bad = np.flatnonzero(bounds[:, 0] > bounds[:, 1])
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"ranges[{i}] has low > high: ({bounds[i, 0]}, {bounds[i, 1]})")
    return bounds
