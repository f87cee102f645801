"""An example DATAMOVE plug-in: :class:`~.models.ResConv` (trainer.model: resconv) and
:class:`~.problem.AdvectionDiffusion` (solver.name: advection-diffusion)."""
