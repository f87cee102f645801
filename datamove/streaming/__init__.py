"""The only code that imports adios2: stream contract, writer, reader, ingest processes, watchdog."""

import sys

# adios2 imports torch whenever it can, only to accept torch tensors in put/get, which DATAMOVE never
# passes. In solver and ingest processes that costs ~1 s and ~200 MB each (measured: `import adios2`
# 1.07 s / 236 MB with torch importable, 0.07 s / 40 MB without). So hide torch while adios2 loads,
# unless this process has already imported it (the trainer); it stays importable afterwards.
_hide_torch = "torch" not in sys.modules
if _hide_torch:
    sys.modules["torch"] = None  # type: ignore[assignment]
try:
    import adios2  # noqa: F401
finally:
    if _hide_torch:
        del sys.modules["torch"]
