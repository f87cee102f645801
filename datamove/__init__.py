"""DATAMOVE: online training of deep surrogates from running simulation ensembles.

Sub-packages, bottom to top (a module imports only its own layer and those below; see
tests/test_layout.py): ``solvers`` (the built-in problems' numerics), ``models``, ``reservoir``
(training buffers); ``problems`` (what each PDE is: parameters, fields, solver, checks,
normalisation; what a training sample of it is); ``config``; ``sampling`` (member parameters: the
samplers, adaptive proposals) and ``run`` (the study folder's contract: lock, heartbeat, readiness
gate, receipts, signals, status); ``streaming`` (the only code that imports adios2: contract,
reader, writer, ingest, the member feed); ``data`` (stored member files, the offline dataset);
``training`` (the one training loop, online and offline sources) and ``ensemble`` (a member's job:
its solver and its stream); ``evaluation``; ``cli``. Importing the package itself is cheap: nothing
heavy is imported here, so that solver and ingest processes do not pay for torch.
"""

__version__ = "0.1.0"
