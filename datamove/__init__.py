"""DATAMOVE: online training of deep surrogates from running simulation ensembles.

Sub-packages: ``solvers`` (the heat solver and parameter sampling), ``streaming`` (the only code
that imports adios2), ``reservoir`` (training buffers), ``models``, ``training`` (online trainer and
the shared train step), ``cli``. Importing the package itself is cheap: nothing heavy is imported here,
so that solver and ingest processes do not pay for torch.
"""

__version__ = "0.1.0"
