"""Whether the workflow still launches members: the trainer's only way to tell a member waiting in a
queue from one that will never come.

Light on purpose (no torch): the workflow's Snakemake process imports it when it starts.

A member's job notes when it starts the member (``members/member-K.started.json``,
:func:`datamove.ensemble.members.note_start`); until then the member is ``pending`` in the ledger,
however long Snakemake's or the cluster's queue holds it. But Snakemake stops launching jobs after
one fails for good unless it runs with ``--keep-going`` (and on an interrupt), and with it, a member
whose job failed without a word (killed before it could note it) has no job left: the members it
will never launch would then keep the trainer waiting forever. :func:`watch_launches`, started by the
workflow's ``onstart``, writes ``launches.stopped.json`` (:attr:`StudyConfig.launch_stop_path`) as
soon as Snakemake's scheduler decides so; the trainer then ends the members that have not started as
lost, with the reason, and finishes. The same command, rerun, resumes it and sends them
(``trainer.resume.json``, :attr:`StudyConfig.resume_path`).
"""

from __future__ import annotations

import threading
import time

from datamove.run.files import write_json

POLL_S = 0.5  # between two looks at the scheduler


def stopped_launching(scheduler, member_rules=()) -> str | None:
    """Why Snakemake's job ``scheduler`` launches no more members, or None while it may.

    It reads the scheduler's own state (``snakemake.scheduling.job_scheduler.JobScheduler``: the
    flags its loop tests before it decides to wait for the running jobs and exit, and the jobs it
    has left); a Snakemake whose scheduler lacks them is taken to keep launching. Besides a stop,
    no job of ``member_rules`` left to run or running (they failed with their retries spent, under
    --keep-going) means the same for the members not started."""
    if scheduler is None:
        return None
    if getattr(scheduler, "_user_kill", None):
        return "snakemake was interrupted"
    if getattr(scheduler, "_executor_error", None):
        return "snakemake's executor failed"
    if getattr(scheduler, "_errors", False) and not getattr(scheduler, "keepgoing", True):
        failed = sorted(str(getattr(job, "rule", job)) for job in getattr(scheduler, "failed", ()))
        which = f" ({', '.join(failed[:3])}{' ...' if len(failed) > 3 else ''})" if failed else ""
        return (f"snakemake stopped launching jobs after a job failed{which}: it waits for the running "
                "ones only (run it with --keep-going to launch the others past a failed job)")
    if member_rules and getattr(scheduler, "failed", None):
        try:
            left = [*scheduler.remaining_jobs, *list(scheduler.running)]
        except Exception:  # noqa: BLE001 - read beside the scheduler's thread: look again later
            return None
        if not any(str(getattr(job, "rule", "")) in member_rules for job in left):
            return "snakemake has no member job left to run (the failed ones spent their retries)"
    return None


def watch_launches(workflow, paths, member_rules=()) -> threading.Thread:
    """From Snakemake's ``onstart``: a daemon thread that writes ``{"reason": ...}`` to each of
    ``paths`` (the online trainers' :attr:`StudyConfig.launch_stop_path`) once ``workflow``'s
    scheduler launches no more members (``member_rules``: the names of the rules that stream them)."""
    member_rules = frozenset(member_rules)

    def watch() -> None:
        while True:
            why = stopped_launching(getattr(workflow, "scheduler", None), member_rules)
            if why is not None:
                for path in paths:
                    try:
                        write_json(path, {"reason": why, "time": time.time()})
                    except OSError:
                        pass
                return
            time.sleep(POLL_S)

    thread = threading.Thread(target=watch, daemon=True, name="datamove-launch-watch")
    thread.start()
    return thread
