"""Files of the study folder that other processes read while they are written."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON so that a reader never sees half a file (a temporary, then a rename;
    no temporary is left when the write fails, on a full disk say)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1))
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
