"""The ensemble's side of a study: each member's job runs its solver and streams its steps
(:mod:`~datamove.ensemble.members`)."""
