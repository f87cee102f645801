"""Where members' parameters come from: the fixed samplers (:mod:`~datamove.sampling.samplers`) and
the adaptive sampler's proposals (:mod:`~datamove.sampling.proposals`).

Nothing is imported here: the config imports the samplers, and the proposals import the config.
"""
