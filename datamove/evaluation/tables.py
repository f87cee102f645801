"""Summary tables written once, read back as written: a study's Markdown and figures are built from
the frame its CSV holds, so a value printed in both agrees to the digit (a gain on a rounding edge,
-105.05 %, printed apart when the Markdown was built from full precision and the CSV rounded)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_csv(frame: pd.DataFrame, path: str | Path, *, float_format: str = "%.6g") -> pd.DataFrame:
    """Write ``frame`` to ``path`` (no index, floats at ``float_format``) and return it as read back."""
    frame.to_csv(path, index=False, float_format=float_format)
    return pd.read_csv(path)
