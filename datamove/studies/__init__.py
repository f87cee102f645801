"""Studies of studies: sweeps of complete studies over named axes, compared in one table.

:data:`KINDS` maps each kind's name to its declaration (:class:`datamove.studies.sweep.StudyKind`);
``workflow/rules/studies.smk`` makes every kind's rules from it and ``datamove study-table`` joins
a study run in parts. A new kind is a module with its axes, its table and figure, a ``KIND``, an
entry here, its schema section and a tiny config.
"""

from __future__ import annotations

from datamove.studies import diversity, models, policies, rollouts, sampling
from datamove.studies.sweep import StudyKind

KINDS: dict[str, StudyKind] = {
    kind.name: kind for kind in (models.KIND, diversity.KIND, sampling.KIND, policies.KIND, rollouts.KIND)
}

__all__ = ["KINDS", "StudyKind"]
