"""``datamove restart``: start a study's online trainer afresh on purpose, without losing a member.

The way out of a checkpoint that cannot be read (the trainer names this command when it finds one),
or of any state a user wants to train again from the start. A trainer that starts afresh holds no
member's steps, but the workflow never reruns a member whose marker exists; so this removes what
says that a member was sent or trained, before the next run builds its jobs, and sets the
checkpoints aside. The next run of the same snakemake command then trains afresh and sends every
member again. Kept: the config, the held-out and test members (written once, they do not depend on
the trainer), the logs, and the checkpoints themselves (renamed, never deleted: a damaged one may
still be worth a look).
"""

from __future__ import annotations

import time
from pathlib import Path

from datamove.config import StudyConfig
from datamove.run.lock import StudyBusyError, StudyLock

# The trainer's outputs (train_online's in the workflow): gone, the workflow reruns the trainer.
TRAINER_OUTPUTS = ("model.pt", "metrics.csv", "ledger.csv")
# The members' files: markers (member-K.json, job-J.json), receipts, failure notes, starts.
MEMBER_FILES = ("member-*.json", "job-*.json")


def restart(cfg: StudyConfig, *, say=print) -> dict[str, list[Path]]:
    """Prepare ``cfg``'s study for a trainer that starts afresh (see the module docstring); what was
    set aside and removed.

    Raises:
        StudyBusyError: a live trainer holds the study (stop it first).
    """
    holder = StudyLock(cfg.lock_path).holder()
    if holder is not None:
        raise StudyBusyError(
            f"study {cfg.study_dir} is being trained by pid {holder.get('pid')} on {holder.get('host')}: "
            "stop that run first (Ctrl-C), then restart"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    done: dict[str, list[Path]] = {"set aside": [], "removed": []}
    for path in sorted(cfg.study_dir.glob(f"{cfg.checkpoint_path.stem}*{cfg.checkpoint_path.suffix}")):
        if ".set-aside-" in path.name or ".stale" in path.name:
            continue
        aside = path.with_name(f"{path.stem}.set-aside-{stamp}{path.suffix}")
        path.replace(aside)
        done["set aside"].append(aside)
    for name in TRAINER_OUTPUTS:
        path = cfg.study_dir / name
        if path.exists():
            path.unlink()
            done["removed"].append(path)
    members = cfg.member_marker(0).parent
    for pattern in MEMBER_FILES:
        for path in sorted(members.glob(pattern)) if members.is_dir() else []:
            path.unlink(missing_ok=True)
            done["removed"].append(path)
    for path in (cfg.gate_path, cfg.launch_stop_path):
        path.unlink(missing_ok=True)
    markers = sum(p.parent == members and ".json" == "".join(p.suffixes) for p in done["removed"])
    for path in done["set aside"]:
        say(f"[restart] set aside {path}")
    say(
        f"[restart] removed the trainer's outputs and {len(done['removed'])} member file(s) "
        f"({markers} marker(s)): the next run trains afresh and sends every member again; kept "
        f"{cfg.study_dir / 'config.yaml'}, the held-out members ({cfg.heldout_dir}), the test members "
        f"({cfg.test_dir}) and the logs. Now run the same snakemake command."
    )
    return done
