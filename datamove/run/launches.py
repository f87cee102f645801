"""Whether the workflow still launches members: the trainer's only way to tell a member waiting in a
queue from one that will never come.

Light on purpose (no torch): the workflow's Snakemake process imports it when it starts.

A member's job notes when it starts the member (``members/member-K.started.json``,
:func:`datamove.ensemble.members.note_start`); until then the member is ``pending`` in the ledger,
however long Snakemake's or the cluster's queue holds it. But Snakemake stops launching jobs after
one fails for good unless it runs with ``--keep-going`` (and on an interrupt): the members it will
never launch would then keep the trainer waiting forever. :func:`watch_launches`, started by the
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


def stopped_launching(scheduler) -> str | None:
    """Why Snakemake's job ``scheduler`` launches no more jobs, or None while it does.

    It reads the scheduler's own state (``snakemake.scheduling.job_scheduler.JobScheduler``: the
    flags its loop tests before it decides to wait for the running jobs and exit); a Snakemake
    whose scheduler lacks them is taken to keep launching."""
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
    return None


def watch_launches(workflow, paths) -> threading.Thread:
    """From Snakemake's ``onstart``: a daemon thread that writes ``{"reason": ...}`` to each of
    ``paths`` (the online trainers' :attr:`StudyConfig.launch_stop_path`) once ``workflow``'s
    scheduler launches no more jobs."""

    def watch() -> None:
        while True:
            why = stopped_launching(getattr(workflow, "scheduler", None))
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
