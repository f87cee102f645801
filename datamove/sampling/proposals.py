"""Adaptive parameter sampling (``parameters.sampler: adaptive``): where the next members go.

The trainer keeps a loss statistic per member and, every ``parameters.adaptive.publish_every``
batches, publishes a *proposal* (:func:`publish`): a mixture of Gaussians around the parameter sets
of the members with the highest loss, weighted by that loss, mixed with a share of draws from the
base sampler so that no region is forgotten. A member's job draws its parameters when it starts
(:func:`draw_member`), from the latest proposal it can read:

- ``results/<study>/proposal.json``: the latest proposal; every version is also appended to
  ``proposals.jsonl`` (one line each), so that any draw can be made again.
- ``members/member-K.draw.json``: the member's draw, written before its solver starts: the
  proposal version, the seed, where the point came from (``base``, ``proposal``, ``fallback``) and
  the parameters. A rerun of the member reuses it, so its stream carries the same parameters; the
  trainer copies it into ledger.csv.

A draw is a pure function of (proposal, ``ensemble.seed``, member): the same member drawn against
the same version gives the same point on any machine. Before the first proposal a member takes its
base-sampler point (exactly what ``sampler: <base>`` would give it). A proposal that cannot be read
(corrupt, or made for other parameter ranges) gives the base point too, and the draw says why
(``fallback``); the member's log says so.

Everything here is numpy and JSON: it runs in a solver's job, on any node that sees the study folder.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from datamove.config import AdaptiveConfig, SamplingConfig, StudyConfig
from datamove.run.files import write_json

DRAW_SOURCES = ("base", "proposal", "fallback")


@dataclass(frozen=True, kw_only=True)
class Proposal:
    """A mixture to draw member parameters from.

    Attributes:
        version: 1, 2, ... in the order the trainer published them.
        batch: the trainer's batch count when it was made.
        centres: [k, n_params] parameter sets of the k members with the highest loss.
        weights: [k] mixture weights (sum 1), proportional to those members' losses.
        members: [k] the members the centres come from; losses: [k] their loss statistic.
        ranges: [n_params, 2] the (low, high) the proposal was made for.
        spread: standard deviation of each component, as a share of each parameter's range.
        uniform_share: probability of a base-sampler draw instead of a mixture draw.
    """

    version: int
    batch: int
    centres: tuple[tuple[float, ...], ...]
    weights: tuple[float, ...]
    members: tuple[int, ...]
    losses: tuple[float, ...]
    ranges: tuple[tuple[float, float], ...]
    spread: float
    uniform_share: float

    @classmethod
    def make(cls, *, version: int, batch: int, params: dict[int, np.ndarray], losses: dict[int, float],
             ranges, settings: AdaptiveConfig) -> Proposal:
        """The proposal around the ``settings.top_k`` members of highest loss among those in
        ``losses`` (member -> loss statistic, finite and >= 0) whose ``params`` are known.

        Raises:
            ValueError: no member has both a finite loss and parameters.
        """
        known = [m for m in losses if m in params and np.isfinite(losses[m]) and losses[m] >= 0]
        if not known:
            raise ValueError("no member has a loss statistic and known parameters yet")
        # Highest loss first; ties by member id, so the same statistic gives the same proposal.
        ranked = sorted(known, key=lambda m: (-losses[m], m))[: settings.top_k]
        loss = np.array([losses[m] for m in ranked], dtype=np.float64)
        # All-zero losses (a perfect fit) leave no preference: equal weights.
        weights = loss / loss.sum() if loss.sum() > 0 else np.full(len(ranked), 1.0 / len(ranked))
        return cls(
            version=version, batch=batch,
            centres=tuple(tuple(float(v) for v in np.asarray(params[m], dtype=np.float64)) for m in ranked),
            weights=tuple(float(w) for w in weights),
            members=tuple(int(m) for m in ranked), losses=tuple(float(v) for v in loss),
            ranges=tuple((float(lo), float(hi)) for lo, hi in ranges),
            spread=settings.spread, uniform_share=settings.uniform_share,
        )

    def to_json(self) -> dict:
        return {**asdict(self), "time": time.time()}

    @classmethod
    def from_json(cls, obj: dict) -> Proposal:
        """Raises ValueError (naming what) when ``obj`` is not a well-formed proposal."""
        try:
            p = cls(
                version=int(obj["version"]), batch=int(obj["batch"]),
                centres=tuple(tuple(float(v) for v in c) for c in obj["centres"]),
                weights=tuple(float(w) for w in obj["weights"]),
                members=tuple(int(m) for m in obj["members"]), losses=tuple(float(v) for v in obj["losses"]),
                ranges=tuple((float(lo), float(hi)) for lo, hi in obj["ranges"]),
                spread=float(obj["spread"]), uniform_share=float(obj["uniform_share"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a proposal ({type(exc).__name__}: {exc})") from None
        k = len(p.centres)
        if k == 0 or len(p.weights) != k or any(len(c) != len(p.ranges) for c in p.centres):
            raise ValueError(f"not a proposal: {k} centres, {len(p.weights)} weights, {len(p.ranges)} ranges")
        w = np.asarray(p.weights)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(f"not a proposal: weights {p.weights} are not a distribution")
        return p

    def sample(self, rng: np.random.Generator, base_point: np.ndarray) -> tuple[np.ndarray, str]:
        """One draw, float64 [n_params], and where it came from (``base`` or ``proposal``).

        With probability ``uniform_share`` the member's ``base_point``; otherwise a component by
        weight, a Gaussian step of ``spread`` x range around its centre, reflected back into the
        ranges (a reflection, not a clip: a clip would pile points on the bounds).
        """
        if rng.random() < self.uniform_share:
            return np.asarray(base_point, dtype=np.float64), "base"
        bounds = np.asarray(self.ranges, dtype=np.float64)
        low, span = bounds[:, 0], bounds[:, 1] - bounds[:, 0]
        i = rng.choice(len(self.centres), p=np.asarray(self.weights) / np.sum(self.weights))
        x = np.asarray(self.centres[i]) + rng.standard_normal(len(low)) * self.spread * span
        # Reflect into [low, high] (period 2 x span); a pinned parameter (span 0) stays at low.
        safe = np.where(span > 0, span, 1.0)
        u = np.mod(x - low, 2 * safe)
        u = np.where(u > safe, 2 * safe - u, u)
        return np.where(span > 0, low + np.clip(u, 0.0, span), low), "proposal"


@dataclass(frozen=True, kw_only=True)
class Draw:
    """How a member got its parameters (``members/member-K.draw.json``; columns of ledger.csv)."""

    member: int
    params: tuple[float, ...]
    source: str  # base | proposal | fallback
    version: int  # the proposal drawn from; 0: none
    seed: int  # the draw's random seed (from ensemble.seed and the member)
    note: str = ""  # why a fallback, or "no proposal yet"


# --------------------------------------------------------------------------- files


def proposal_path(cfg: StudyConfig) -> Path:
    return cfg.study_dir / "proposal.json"


def history_path(cfg: StudyConfig) -> Path:
    """Every proposal published, one JSON line each, in version order."""
    return cfg.study_dir / "proposals.jsonl"


def draw_path(cfg: StudyConfig, member: int) -> Path:
    return cfg.study_dir / "members" / f"member-{member:06d}.draw.json"


def publish(cfg: StudyConfig, proposal: Proposal) -> Path:
    """Append ``proposal`` to the history, then make it the latest (atomically)."""
    obj = proposal.to_json()
    history_path(cfg).parent.mkdir(parents=True, exist_ok=True)
    with history_path(cfg).open("a") as fh:
        fh.write(json.dumps(obj) + "\n")
    write_json(proposal_path(cfg), obj)
    return proposal_path(cfg)


def _history(cfg: StudyConfig):
    """The history's proposals as dicts (a line cut short by a crash is skipped)."""
    try:
        lines = history_path(cfg).read_text().splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def last_version(cfg: StudyConfig) -> int:
    """The highest version published in the study folder (0: none), so a resumed trainer goes on from it."""
    return max((int(obj.get("version", 0)) for obj in _history(cfg)), default=0)


def archived(cfg: StudyConfig, version: int) -> Proposal:
    """Proposal ``version`` from the history. Raises FileNotFoundError when it is not there."""
    for obj in _history(cfg):
        if obj.get("version") == version:
            p = Proposal.from_json(obj)
            if p.ranges != tuple((float(lo), float(hi)) for lo, hi in cfg.ensemble.ranges):
                raise ValueError(f"proposal {version} of {history_path(cfg)} was made for other parameter ranges")
            return p
    raise FileNotFoundError(f"proposal {version} is not in {history_path(cfg)}")


def clear(cfg: StudyConfig, members) -> None:
    """Proposals and draws of an earlier run of the study (a fresh trainer starts without them)."""
    for member in members:
        draw_path(cfg, member).unlink(missing_ok=True)
    proposal_path(cfg).unlink(missing_ok=True)
    history_path(cfg).unlink(missing_ok=True)


def _load(path: Path, ranges) -> Proposal:
    """Raises FileNotFoundError, or ValueError saying what is wrong with the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a proposal (a JSON {type(obj).__name__})")
    try:
        p = Proposal.from_json(obj)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    want = tuple((float(lo), float(hi)) for lo, hi in ranges)
    if p.ranges != want:
        raise ValueError(f"{path} was made for parameter ranges {list(p.ranges)}, this study has {list(want)}")
    return p


def read_draw(cfg: StudyConfig, member: int) -> Draw | None:
    """The member's recorded draw, or None (none yet, or unreadable)."""
    try:
        obj = json.loads(draw_path(cfg, member).read_text())
        return Draw(member=int(obj["member"]), params=tuple(float(v) for v in obj["params"]),
                    source=str(obj["source"]), version=int(obj["version"]), seed=int(obj["seed"]),
                    note=str(obj.get("note", "")))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- draws


def draw_seed(sampling: SamplingConfig, member: int) -> int:
    """The seed of member ``member``'s adaptive draw: from ``ensemble.seed`` and the member, so a
    draw made again (a rerun, another machine) is the same."""
    return int(np.random.SeedSequence([sampling.seed, member, 0xADA]).generate_state(1, dtype=np.uint64)[0] >> 1)


def draw(sampling: SamplingConfig, member: int, proposal: Proposal | None) -> tuple[np.ndarray, str, int]:
    """Member ``member``'s parameters drawn against ``proposal`` (None: its base point):
    (float64 [n_params], source, seed)."""
    seed = draw_seed(sampling, member)
    base = sampling.params(member)
    if proposal is None:
        return base, "base", seed
    rng = np.random.default_rng([seed, proposal.version])
    params, source = proposal.sample(rng, base)
    return params, source, seed


def draw_member(cfg: StudyConfig, member: int, *, label: str = "") -> Draw:
    """The parameters of training member ``member`` under ``sampler: adaptive``, recorded in its
    draw file. A member drawn before (a rerun) gets its recorded draw again: made again from its
    version in the history, or, if that is gone, the recorded parameters."""
    sampling = cfg.ensemble
    label = label or f"member {member}"
    previous = read_draw(cfg, member)
    if previous is not None:
        params = previous.params
        if previous.source == "proposal":
            try:
                again, _, _ = draw(sampling, member, archived(cfg, previous.version))
                params = tuple(float(v) for v in again)
            except (FileNotFoundError, ValueError):
                pass  # the history is gone: the recorded parameters are the draw
        print(f"[simulate] {label}: parameters of its earlier draw (proposal version {previous.version}, "
              f"{previous.source})", file=sys.stderr, flush=True)
        return Draw(**{**asdict(previous), "params": params})
    path = proposal_path(cfg)
    note = ""
    try:
        proposal = _load(path, sampling.ranges)
    except FileNotFoundError:
        proposal, note = None, "no proposal yet"
    except ValueError as exc:
        proposal, note = None, f"cannot use the proposal: {exc}"
        print(f"[simulate] {label}: {note}; drawing from the base sampler ({sampling.sampler}) instead",
              file=sys.stderr, flush=True)
    params, source, seed = draw(sampling, member, proposal)
    if note.startswith("cannot"):
        source = "fallback"
    result = Draw(member=member, params=tuple(float(v) for v in params), source=source,
                  version=proposal.version if proposal else 0, seed=seed, note=note)
    write_json(draw_path(cfg, member), asdict(result))
    if proposal is None:
        how = f"{note}: its {sampling.sampler} point"
    elif source == "base":
        how = f"proposal {proposal.version}, uniform share: its {sampling.sampler} point"
    else:
        how = f"drawn from proposal {proposal.version}"
    values = ", ".join(f"{n}={v:.4g}" for n, v in zip(sampling.names, result.params))
    print(f"[simulate] {label}: {how}: {values}", file=sys.stderr, flush=True)
    return result


def expected_params(cfg: StudyConfig, member: int) -> np.ndarray:
    """The parameters a training member's stream or file must carry: its recorded draw under
    ``sampler: adaptive``, else (or with no draw recorded) its sampler's point."""
    if cfg.ensemble.adaptive is not None and (d := read_draw(cfg, member)) is not None:
        return np.asarray(d.params, dtype=np.float64)
    return cfg.ensemble.params(member)
