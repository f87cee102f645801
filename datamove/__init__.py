"""DATAMOVE: online training of deep surrogates from running simulation ensembles.

Sub-packages: ``problems`` (what each PDE is: parameters, fields, solver, checks, normalisation),
``solvers`` (their solvers, parameter sampling), ``streaming`` (the only code that imports adios2:
contract, reader, writer, ingest, the member feed), ``reservoir`` (training buffers), ``data``
(stored member files, the offline dataset), ``models``, ``training`` (the one training loop, online
and offline sources), ``evaluation``, ``cli``. Importing the package itself is cheap: nothing heavy
is imported here, so that solver and ingest processes do not pay for torch.
"""

__version__ = "0.1.0"
