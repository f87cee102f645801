"""The trainer's side of adaptive sampling: a loss statistic per member, and the proposals.

Every ``parameters.adaptive.publish_every`` batches (rank 0; under data parallelism from rank 0's
share of the reservoir) the current model is evaluated on up to ``probe_samples`` samples drawn at
random from the reservoir (``statistic: trained``: among those a batch has used), without counting
them as seen; each member's statistic is the mean normalised MSE of its probed samples, and goes
into the ledger (``loss``, ``loss_batch``). The
proposal (:class:`datamove.sampling.proposals.Proposal`) is built from this probe's members only: an older
statistic was measured on an older model, whose losses were higher, and would pull the proposal
back to the first members.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from datamove.config import StudyConfig
from datamove.models import Surrogate
from datamove.sampling import proposals
from datamove.training.records import Ledger


class Steering:
    """Publishes the proposals of ``sampler: adaptive`` as training goes on.

    Args:
        cfg: the study (its ensemble has ``adaptive`` settings).
        buffer: the reservoir (:meth:`datamove.reservoir.base.Buffer.probe`).
        model: the surrogate being trained.
        params: member -> float32 [n_params] of the members whose streams have said them (the feed's).
        ledger: where the per-member statistic is recorded.
        batch: the batch count training starts from (a resumed run's).
        say: progress output.
    """

    def __init__(self, *, cfg: StudyConfig, buffer, model: Surrogate, params: dict[int, np.ndarray],
                 ledger: Ledger, batch: int, say: Callable[[str], None]):
        if cfg.ensemble.adaptive is None:
            raise ValueError("Steering needs parameters.sampler: adaptive")
        self.cfg, self.settings = cfg, cfg.ensemble.adaptive
        self.buffer, self.model, self.params, self.ledger, self.say = buffer, model, params, ledger, say
        self.version = proposals.last_version(cfg)  # a resumed trainer goes on numbering
        self.last_batch = batch
        # The probe's draws are reproducible from the trainer's seed and the version.
        self._gen = torch.Generator()
        self._centres: set[int] = set()  # the members of the last proposal said

    def member_losses(self) -> dict[int, tuple[float, int]]:
        """member -> (mean normalised MSE over its probed samples, samples probed), for the members
        with samples in the reservoir now."""
        if len(self.buffer) == 0:
            return {}
        self._gen.manual_seed(self.cfg.trainer.seed * 1_000_003 + self.version)
        # statistic trained: only samples a batch has used. A sample that has just arrived has a
        # high loss because the model has not seen it yet, not because its region is hard: over
        # all samples, the proposal chases the newest member.
        min_seen = 1 if self.settings.statistic == "trained" else 0
        probe = self.buffer.probe(self.settings.probe_samples, generator=self._gen, min_seen=min_seen)
        if len(probe.member) == 0:
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                err = self.model.sample_error(probe.x, probe.y)
                per_sample = err.flatten(1).mean(dim=1).double().cpu()
        finally:
            self.model.train(was_training)
        members = probe.member.cpu()
        ids, inverse = torch.unique(members, return_inverse=True)
        sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, per_sample)
        counts = torch.bincount(inverse, minlength=len(ids))
        return {int(m): (float(s / c), int(c)) for m, s, c in zip(ids.tolist(), sums, counts)}

    def maybe_publish(self, batch: int) -> bool:
        """Publish a proposal if ``publish_every`` batches have passed since the last; whether it did."""
        if batch - self.last_batch < self.settings.publish_every:
            return False
        self.last_batch = batch
        return self.publish(batch)

    def publish(self, batch: int) -> bool:
        losses = self.member_losses()
        for member, (loss, _n) in losses.items():
            if member in self.ledger.records:
                rec = self.ledger[member]
                rec.loss, rec.loss_batch = loss, batch
        try:
            proposal = proposals.Proposal.make(
                version=self.version + 1, batch=batch, params=self.params,
                losses={m: v for m, (v, _n) in losses.items()}, ranges=self.cfg.ensemble.ranges,
                settings=self.settings,
            )
        except ValueError:
            return False  # nothing in the reservoir yet
        try:
            proposals.publish(self.cfg, proposal)
        except OSError as exc:
            # Members keep drawing from the last proposal written; a full disk stops the study at
            # its next checkpoint anyway, with its own error.
            self.say(f"proposal {proposal.version} could not be written ({exc}); members draw from the last one")
            return False
        self.version = proposal.version
        if set(proposal.members) != self._centres:
            # Said when the members it is centred on change, not at every proposal.
            self._centres = set(proposal.members)
            top = ", ".join(f"{m} ({v:.2e})" for m, v in zip(proposal.members[:4], proposal.losses[:4]))
            self.say(f"proposal {proposal.version} at batch {batch}: {len(losses)} members probed; centred on the "
                     f"{len(proposal.members)} of highest loss: {top}{' ...' if len(proposal.members) > 4 else ''}")
        return True


def note_draws(cfg: StudyConfig, ledger: Ledger) -> None:
    """Copy each member's recorded draw (datamove.sampling.proposals) into its ledger row, once it has one."""
    for member, rec in ledger.records.items():
        if rec.draw or rec.status == "pending":
            continue
        d = proposals.read_draw(cfg, member)
        if d is not None:
            rec.draw, rec.proposal_version, rec.draw_seed = d.source, d.version, d.seed
