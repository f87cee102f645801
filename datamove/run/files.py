"""Files of the study folder: its owner's only, and written so that other processes that read them
while they are written never see half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Study files are their owner's only: checkpoint.pt and the reservoir hold the samples, contact files
# (*.sst) the addresses of live streams (docs/security.md).
OWNER_ONLY_UMASK = 0o077


def owner_only(*folders: Path) -> None:
    """From now on, files and folders this process (and every process it starts) creates are its
    owner's only (umask 077); each of ``folders`` that exists already, from an earlier run, and
    belongs to this user becomes 0700 itself (what lies inside is then out of others' reach too)."""
    os.umask(OWNER_ONLY_UMASK)
    for folder in map(Path, folders):
        try:
            st = folder.stat()
            if st.st_uid == os.getuid() and st.st_mode & 0o077:
                folder.chmod(0o700)
        except FileNotFoundError:
            pass


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
