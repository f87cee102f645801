"""The member feed: everything between the solvers' streams and the trainer's buffer, with one owner.

    feed = MemberFeed(cfg=cfg, members=mine, ledger=ledger, say=say).start()
    while ...:
        feed.poll(timeout)        # events from the ingest workers, dispatch, timeouts, launcher notes
        feed.intake(buffer)       # the steps that arrived since the last call, into the buffer at once
        if feed.ended: ...        # every member complete or lost, nothing left to put
    feed.close()

It dispatches a member to an idle ingest worker once its stream appears (never a dead writer's
contact file), counts every step in the ledger once (a rerun's duplicates are counted and dropped),
builds autoregressive windows (``trainer.sample``: L steps of one attempt of a member, each left in
its shared-memory slot until the intake's put gathers it), retries a lost member
(``ensemble.retries``: the workflow reruns its solver), times out members with one
``stream.member_timeout_s`` (a silent stream's worker is stopped; a member started by its job
whose stream never appears is lost; a member still in a queue is not), and reads the notes the
members' jobs leave (``members/member-K.started.json`` when a job starts a member,
``members/member-K.failed.json`` when a launch fails, see :mod:`datamove.ensemble.members`) and the
workflow's word that it launches no more jobs (:mod:`datamove.run.launches`), so that the ledger
names why, and does not wait for a rerun that will not come.
"""

from __future__ import annotations

import json
import os
import socket
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from datamove.config import StudyConfig
from datamove.problems.samples import SampleSpec
from datamove.run.lock import lock_alive
from datamove.streaming.contract import Expectation, job_stream_name, remove_contact_files
from datamove.streaming.events import Done, Ended, Event, Fatal, Info, JobEnded, JobOpened, Opened, Step
from datamove.streaming.ingest import contact_signature, streams_present
from datamove.streaming.pool import IngestPool

SCAN_S = 0.02  # between two scans of the stream folder for new contact files
# While training goes on, the steps received wait for the next intake until enough of them have
# come to amortise its fixed cost (a put, slots returned to each worker), an ingest worker has
# half its slots in the trainer's hands, or the oldest has waited this long.
INTAKE_WAIT_S = 0.05
NOTES_S = 0.5  # between two scans of the launchers' notes (starts, failures)
# After the workflow stops launching jobs, how long a job it launched just before has to note its
# start (Python's start-up and the imports come first) before its member counts as never launched.
LAUNCH_GRACE_S = 10.0
TIMEOUT_CHECK_S = 0.1  # between two checks for silent streams (a timeout is seconds or more)


class _Kept(NamedTuple):
    """A step kept for the autoregressive windows it may still start or continue: its time, the
    slot that still holds its fields, and its key (the buffer stores it once under that key)."""

    time: float
    slot: int
    key: int


class IngestFailed(RuntimeError):
    """An ingest worker hit a bug (not a stream failure): the trainer must stop."""


class MemberFeed:
    """Reads this trainer's share of the ensemble's streams (see the module docstring).

    Args:
        cfg: the study.
        members: the members this trainer reads (its share under data-parallel training).
        ledger: the per-member accounting (a :class:`datamove.training.records.Ledger`), restored
            from a checkpoint when resuming; the feed updates it.
        params: member -> float32 [n_params] of members whose attributes already arrived (resume).
        clean: remove stale contact files first (one rank does).
        say: progress lines.
    """

    def __init__(
        self,
        *,
        cfg: StudyConfig,
        members: Sequence[int],
        ledger,
        params: dict[int, np.ndarray] | None = None,
        clean: bool = True,
        say: Callable[[str], None] = print,
    ):
        self.cfg, self.ledger, self.say = cfg, ledger, say
        self.members = list(members)
        self.params: dict[int, np.ndarray] = dict(params or {})
        self.clean = clean
        self.unassigned: list[int] = ledger.unfinished()  # members not handed to an ingest worker
        self.waiting: list[Step] = []  # steps received, not yet in the buffer, in order
        # Autoregressive samples (trainer.sample): a waiting step is the last step of a window of
        # L = h + n K steps s apart (SampleSpec) whose L - 1 earlier steps, of the same attempt,
        # wait beside it in waiting_windows: (their slots in time order, the keys of the L steps,
        # then the times x takes, at SampleSpec.time_positions). A key numbers each step received
        # (_serial): the buffer (built with window = L) stores each step once, under its key,
        # however many windows hold it, so a window's put copies only its new step. Each streaming
        # member's last (L - 1) s steps wait in _history, in their own slots, while a later window
        # can still take them, so an intake's put gathers the L steps of each window straight from
        # the slots, and no step is copied before it (the config checks that each worker has a slot
        # more than it keeps).
        # A slot goes back once its step is neither kept nor waiting: the windows are put in the
        # order they were made, so a step that leaves _history (or is not kept) when `_made`
        # windows have been made is in none made after, and its slot goes back once `_put` reaches
        # that count (_leaving: those counts, in order, and the slots).
        self.spec = spec = SampleSpec.of(cfg)
        self.waiting_windows: list[tuple[float, ...]] = []
        self._history: dict[int, dict[int, _Kept]] = {}  # member -> step -> the kept step, in arrival order
        self._made = self._put = 0  # windows made, and put, so far
        self._serial = 0  # the key of the next step received
        self._leaving: tuple[list[int], list[int]] = ([], [])  # (windows made when it left, slot), in order
        # What each arriving step needs of the spec (a property call costs more than the lookup).
        self._span, self._positions = spec.span, spec.time_positions
        self._offsets = (-spec.window_offsets()[:-1]).tolist()  # a window's earlier steps: (L-1)s .. s back
        self._last_kept = cfg.problem.n_steps - spec.stride  # later steps end the member's last windows
        self._waiting_since = 0.0  # monotonic time the oldest of them arrived
        self.n_workers = max(1, min(cfg.trainer.ingest_workers, len(self.unassigned)))
        self.pool: IngestPool | None = None
        self._dead_contact: dict[int, tuple[int, int]] = {}  # member -> its dead writer's contact file
        self._notes_seen: dict[int, int] = {}  # member -> attempt of the last launcher note applied
        self._next_scan = self._next_notes = self._next_timeouts = 0.0
        # Starts of members by their jobs (members/member-K.started.json, how many so far): the
        # "never connected" clock of a member runs only once a start came after it was last handed
        # out (or after this trainer began), never while its job waits in a queue.
        self._starts: dict[int, int] = {}  # member -> starts seen
        self._starts_base: dict[int, int] = {}  # member -> starts when it became unassigned
        self._started_at: dict[int, float] = {}  # member -> monotonic time such a start was seen
        self._lost_at: dict[int, float] = {}  # member -> monotonic time its stream was lost, in this run
        self._start_jobs: dict[int, dict] = {}  # member -> its last start note (the job's host and pid)
        self._last_busy = 0.0  # monotonic time every ingest worker was last seen busy
        self._launch_stop: float | None = None  # monotonic time the workflow was seen to stop launching
        self._launch_stop_why = ""
        self._changed = True  # the ledger changed since "every member ended?" was last asked
        self._finished = not self.unassigned
        # Members completed since the caller last emptied the list (its receipts and checkpoints).
        self.newly_complete: list[int] = []
        # Members whose stream ended without all their steps since the caller last emptied the
        # list: (member, reason, the contact file's signature), for the solver still waiting.
        self.newly_rejected: list[tuple[int, str, tuple[int, int] | None]] = []
        # Complete members whose stream opened again (a rerun): read as duplicates, not waited on.
        self._rereading: set[int] = set()
        self._reading: dict[int, tuple[int, int] | None] = {}  # member -> its stream's contact file
        # Jobs' streams of the many-members form: those being read (job -> its contact file), and
        # the contact files of those that ended (a killed writer leaves its file; only a rerun's
        # new one is read).
        self._jobs_reading: dict[int, tuple[int, int] | None] = {}
        self._dead_jobs: dict[int, tuple[int, int]] = {}
        # Members a job's stream lists that this trainer does not read in it (lost for good, being
        # read in another stream, or another rank's): their events are dropped, their slots freed.
        self._ignoring: set[int] = set()
        self._jobs_opened: set[int] = set()  # jobs being read whose stream said which members it lists

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> MemberFeed:
        if self.clean:
            self.cfg.stream_dir.mkdir(parents=True, exist_ok=True)
            remove_contact_files(self.cfg.stream_dir, label="train")
        self._read_starts()
        self._starts_base = {m: self._starts.get(m, 0) for m in self.unassigned}
        self.pool = IngestPool(
            stream=self.cfg.stream,
            stream_dir=self.cfg.stream_dir,
            expect=Expectation.of(self.cfg.problem),
            n_steps=self.cfg.problem.n_steps,
            n_members=self.cfg.ensemble.n_members,
            n_workers=self.n_workers,
            n_slots=self.cfg.trainer.slots,  # >= ingest_workers >= n_workers (checked with the config)
            nice=self.cfg.trainer.ingest_nice,
            say=self.say,
        ).start()
        return self

    def close(self) -> None:
        """Stop the ingest workers; the last look at the launcher's notes; remove contact files."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self._read_notes()
        if self.clean:
            remove_contact_files(self.cfg.stream_dir)  # killed writers leave theirs

    @property
    def ended(self) -> bool:
        """Every member of this trainer is complete or lost, and every step received is in the buffer."""
        return self._finished and not self.waiting

    @property
    def quiet(self) -> bool:
        """Nothing to put in the buffer: the caller may wait in :meth:`poll`."""
        return not self.waiting

    # -- the loop ---------------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> None:
        """Take the workers' events (waiting up to ``timeout`` s for the first), dispatch new streams,
        apply timeouts and the launcher's notes."""
        events = self.pool.poll(timeout=timeout)
        for ev in events:
            self._handle(ev)
        now = time.monotonic()
        if self.pool.busy:
            self._last_busy = now
        if now >= self._next_scan:
            # A directory scan, not on every batch; slower once every member has been handed out
            # (only a rerun of a complete member can appear then). Also once every member has
            # ended, while the trainer trains its last batches: a rerun of a member whose solver
            # died after its last step, before its receipt came, would otherwise wait in Open
            # until the trainer finished, and fail (its steps are held: it is answered instead).
            self._next_scan = now + (SCAN_S if self.unassigned else NOTES_S)
            self._dispatch()
        if now >= self._next_notes:
            self._next_notes = now + NOTES_S
            self._read_notes()
        if self._finished:
            return
        # Not on every call (this runs between train steps): the timeouts are seconds long, and
        # whether every member ended can change only when the ledger did.
        if now >= self._next_timeouts:
            self._next_timeouts = now + TIMEOUT_CHECK_S
            self._timeouts(now)
        if self._changed and not self.pool.busy:
            self._changed = False
            if not self.ledger.unfinished():
                self._finished = True  # the workers stay, for reruns, until close()

    def intake(self, buffer) -> int:
        """Put the steps that arrived into ``buffer`` in one batched put (as many as it takes now),
        give their slots back, count in the ledger what the buffer displaced untrained; how many.

        A fixed number of numpy calls whatever the number of steps: the fields go from their
        shared-memory slots straight into the buffer's storage (``put_many(y_rows=...)``: one
        gather, no copy of ours first; an autoregressive window's L steps from their L slots, one
        part each), and the slots go back once it returns (a step kept for a later window keeps its
        slot).
        """
        if not self.waiting or not self._due(buffer):
            return 0
        n = min(len(self.waiting), buffer.put_capacity())
        if n <= 0:
            return 0
        self._waiting_since = time.monotonic()  # of those left, if the buffer takes fewer
        steps = self.waiting[:n]
        del self.waiting[:n]
        member, step, time_, slot = np.array(steps, dtype=np.float64).T  # Step's fields, in order
        members, slots = member.astype(np.int64), slot.astype(np.int64)
        n_params = self.cfg.problem.n_inputs - 1
        x = np.empty((n, self.spec.x_dim(self.cfg.problem.n_inputs)), dtype=np.float32)
        ids, which = np.unique(members, return_inverse=True)  # a few members per intake
        x[:, :n_params] = np.stack([self.params[m] for m in ids.tolist()])[which]
        if self.spec.autoregressive:
            L = self.spec.window
            windows = np.array(self.waiting_windows[:n], dtype=np.float64)  # [n, L - 1 slots + L keys + n_times]
            del self.waiting_windows[:n]
            earlier = windows[:, : L - 1].T.astype(np.int64)  # [L - 1, n] slots, in time order
            keys = windows[:, L - 1 : 2 * L - 1].T.astype(np.int64)  # [L, n]
            x[:, n_params:] = windows[:, 2 * L - 1 :]  # each application's last input step's time
            # The window [L n_fields, ny, nx]: its L steps in time order, each from its slot (a
            # buffer of windows copies only the steps it does not hold under their keys).
            pool = torch.from_numpy(self.pool.slots)
            displaced = buffer.put_many(
                torch.from_numpy(x), (pool,) * L, member=members, step=step.astype(np.int64),
                y_rows=(*earlier, slots), y_keys=tuple(keys) if buffer.window > 1 else None,
            )
            self._put += n
            self._let_go()
        else:
            x[:, -1] = time_
            displaced = buffer.put_many(
                torch.from_numpy(x), torch.from_numpy(self.pool.slots), member=members,
                step=step.astype(np.int64), y_rows=slots,
            )
            self.pool.release(slots)
        for m, reason in displaced.unseen():  # left untrained (a lossy drop, an eviction, a turn-away)
            self.ledger.untrained(m, reason)
        return n

    def _leave(self, slot: int) -> None:
        """Autoregressive samples: ``slot``'s step is kept no more (or was not kept): no window made
        from now on takes it, so it goes back to its worker once every window made so far has been
        put (its own, if it ends one, included): at once if they have, else after the intake that
        puts the last of them (:meth:`_let_go`)."""
        if self._put == self._made:
            self.pool.release((slot,))
        else:
            made, slots = self._leaving
            made.append(self._made)
            slots.append(slot)

    def _let_go(self) -> None:
        """Autoregressive samples: the slots whose steps no window that is still waiting takes go
        back to their workers, in one release (a bisection and a slice)."""
        made, slots = self._leaving
        cut = bisect_right(made, self._put)
        if cut:
            self.pool.release(slots[:cut])
            del made[:cut], slots[:cut]

    def _forget(self, member: int) -> None:
        """Drop a member's kept steps (a new attempt, or its end): their slots go back once no
        waiting window takes them."""
        kept = self._history.pop(member, None)
        for step in (kept or {}).values():
            self._leave(step.slot)

    def _due(self, buffer) -> bool:
        """Whether the waiting steps go into the buffer now: always once the streams have ended or
        while training waits for the buffer, else once they are a quarter of the slots, a worker
        has half its slots waiting here (it must never run out while its stream has steps; with
        autoregressive samples, half of those beyond the (L - 1) s its member keeps for later
        windows), or the oldest has waited INTAKE_WAIT_S."""
        pool = self.pool
        if self._finished or not buffer.ready() or 4 * len(self.waiting) >= pool.n_slots:
            return True
        if time.monotonic() - self._waiting_since >= INTAKE_WAIT_S:
            return True
        kept = self._span
        half = kept + max(1, (pool.per_worker - kept) // 2)
        return any(len(held) >= half for held in pool.held)

    # -- events -----------------------------------------------------------------------------------

    def _handle(self, ev: Event) -> None:
        if self._ignoring and not isinstance(ev, (JobOpened, JobEnded, Fatal, Done)) and ev.member in self._ignoring:
            self._ignore(ev)
        elif isinstance(ev, Step):
            self._step(ev)
        elif isinstance(ev, Info):
            self.params[ev.member] = np.asarray(ev.params, dtype=np.float32)
        elif isinstance(ev, Opened):
            self._forget(ev.member)  # never a window across attempts
            if ev.member in self._rereading:
                self.ledger[ev.member].attempts += 1  # stays complete: every step will be a duplicate
            else:
                self.ledger.opened(ev.member)
        elif isinstance(ev, Ended):
            self._ended(ev)
        elif isinstance(ev, JobOpened):
            self._job_opened(ev)
        elif isinstance(ev, JobEnded):
            self._job_ended(ev)
        elif isinstance(ev, Fatal):
            raise IngestFailed(f"ingest worker {ev.worker} failed:\n{ev.traceback}")
        elif isinstance(ev, Done) and not self._finished:
            raise IngestFailed(f"ingest worker {ev.worker} exited early")

    def _job_opened(self, ev: JobOpened) -> None:
        """A job's stream opened, listing ``ev.members``: each is read in it as if from a stream of
        its own (one that waits for a stream is taken; a complete one is read as duplicates, see
        :meth:`_dispatch`); any other is ignored, with a word."""
        contact = self._jobs_reading.get(ev.job)
        name = job_stream_name(ev.job)
        self._jobs_opened.add(ev.job)
        for m in ev.members:
            rec = self.ledger.records.get(m)
            if m in self.unassigned:
                self._take(m)
            elif rec is not None and rec.status == "complete" and m not in self._rereading:
                self._rereading.add(m)
                self.say(f"member {m}: sent again in {name} (a rerun of a complete member); reading it as duplicates")
            else:
                why = ("not one of this trainer's members" if rec is None else
                       f"{rec.status}: {rec.reason}" if rec.status == "lost" else "read in another stream")
                self._ignoring.add(m)
                self.say(f"member {m}: listed by {name} but {why}; its steps there are not used")
                continue
            self._reading[m] = contact

    def _job_ended(self, ev: JobEnded) -> None:
        """A job's stream ended: the members it listed but never began wait for a rerun (no attempt
        counted); its writer, if alive, is told (their receipts name the stream), so that it stops."""
        self._changed = True
        contact = self._jobs_reading.pop(ev.job, None)
        if contact is not None:
            self._dead_jobs[ev.job] = contact
        name = job_stream_name(ev.job)
        waiting = []
        if ev.job not in self._jobs_opened and ev.reason:
            self._never_opened(name, ev.reason, contact)
        self._jobs_opened.discard(ev.job)
        for m in ev.unsent:
            if m in self._ignoring or m in self._rereading:
                self._ignoring.discard(m)
                self._rereading.discard(m)
                continue
            self._reading.pop(m, None)
            rec = self.ledger.records.get(m)
            if rec is None or rec.status not in ("pending", "retrying") or m in self.unassigned:
                continue
            self._unassign(m)
            self.newly_rejected.append((m, f"{name} ended before the member began: {ev.reason or 'closed'}", contact))
            waiting.append(m)
        if ev.reason or waiting:
            self.say(f"{name} ended{': ' + ev.reason if ev.reason else ''}"
                     + (f"; members {waiting} not sent in it: waiting for a rerun" if waiting else ""))

    def _never_opened(self, name: str, reason: str, contact) -> None:
        """A job's stream ended before its first step said which members it lists (its writer
        frozen or killed in ``Open``, a stream that broke the contract at once): the members whose
        job's start note names that stream are lost in it, as a member's own stream would be, with
        no attempt counted: each waits for the rerun's start, and the receipts tell the writer."""
        now = time.monotonic()
        for m in list(self.unassigned):
            if self._start_jobs.get(m, {}).get("stream") != name:
                continue
            self._starts_base[m] = self._starts.get(m, 0)  # the clock waits for the rerun's start
            self._started_at.pop(m, None)
            self._lost_at[m] = now
            self.ledger[m].reason = f"{name}: {reason}"
            self.newly_rejected.append((m, f"{name} ended before the member began: {reason}", contact))

    def _ignore(self, ev: Event) -> None:
        """An event of a member a job's stream lists but this trainer does not read there."""
        if isinstance(ev, Step):
            self.pool.release((ev.slot,))
        elif isinstance(ev, Ended):
            self._ignoring.discard(ev.member)

    def _step(self, ev: Step) -> None:
        """An arriving step: counted once in the ledger; waiting for the next intake if new (with
        autoregressive samples: if it ends a window), its slot returned at once otherwise (a rerun
        resending a step already received is not used twice; an autoregressive step may still be
        kept in its slot as an earlier step of later windows)."""
        new = self.ledger.received(ev.member, ev.step)
        if not self.spec.autoregressive:
            if new:
                self._wait(ev)
            else:
                self.pool.release((ev.slot,))
            return
        key = self._serial
        self._serial += 1
        window = self._window(ev, key) if new else None
        if window is not None:
            self._wait(ev)
            self.waiting_windows.append(window)
            self._made += 1
        elif new:  # the last step of no window: a member's first (L - 1) s steps, or after a gap
            self.ledger.unpaired(ev.member)
            if ev.step > self._span:
                history = self._history.get(ev.member, {})
                missing = next(ev.step - d for d in self._offsets if ev.step - d not in history)
                self.say(f"member {ev.member}: step {ev.step} arrived without step {missing} of its stream; "
                         "counted unpaired")
        self._keep(ev, key)

    def _wait(self, ev: Step) -> None:
        """A new step goes into the next intake."""
        if not self.waiting:
            self._waiting_since = time.monotonic()
        self.waiting.append(ev)

    def _window(self, ev: Step, key: int) -> tuple[float, ...] | None:
        """Autoregressive samples: the window that ends at ``ev`` (whose key is ``key``; None: an
        earlier step of it is not kept), as it waits in ``waiting_windows``: the slots of its L - 1
        earlier steps in time order, the keys of its L steps, then the times x takes."""
        history = self._history.get(ev.member)
        if not history:
            return None
        k = ev.step
        earlier = [history.get(k - d) for d in self._offsets]
        if None in earlier:
            return None
        return (*[e.slot for e in earlier], *[e.key for e in earlier], key, *[earlier[p].time for p in self._positions])

    def _keep(self, ev: Step, key: int) -> None:
        """Autoregressive samples: keep ``ev`` (in its slot) while a later window may take it, until
        step ``ev.step`` + (L - 1) s arrives; the steps no later window takes leave (:meth:`_leave`),
        and so does ``ev`` if none does.

        Kept per attempt (see ``_forget``): a rerun's resent steps are duplicates in the ledger but
        still earlier steps of windows, since a rerun resends from step 1, so its new steps end
        windows of its own steps, never of the lost attempt's. A rerun of a complete member brings
        nothing new."""
        if ev.member in self._rereading:
            self._leave(ev.slot)
            return
        history = self._history.setdefault(ev.member, {})
        k = ev.step
        if k in history:  # the same step twice in one attempt: the later one is kept
            self._leave(history.pop(k).slot)
        if k <= self._last_kept:
            history[k] = _Kept(ev.time, ev.slot, key)
        else:
            self._leave(ev.slot)
        # The first step of a window that ends at k, and any before it (left by a gap), start no
        # later window.
        oldest = k - self._span
        while history:
            first = next(iter(history))
            if first > oldest:
                break
            self._leave(history.pop(first).slot)

    def _ended(self, ev: Ended) -> None:
        self._changed = True
        self._forget(ev.member)
        rec = self.ledger[ev.member]
        contact = self._reading.pop(ev.member, None)
        self._dead_contact_of(ev.member, contact)
        if ev.status != "complete" and rec.steps_received < rec.steps_expected:
            # Its solver may be alive, waiting for a receipt that will not come: tell it why.
            self.newly_rejected.append((ev.member, ev.reason, contact))
        if ev.member in self._rereading:
            self._rereading.discard(ev.member)
            self.say(f"member {ev.member}: a rerun of a complete member ended ({ev.steps} steps read, all duplicates)")
        elif ev.status == "complete" or rec.steps_received == rec.steps_expected:
            self.ledger.ended(ev.member, "complete")
            self.newly_complete.append(ev.member)
        elif rec.attempts <= self.cfg.retries and not ev.final:
            self.ledger.ended(ev.member, "retrying", ev.reason)
            self._unassign(ev.member)
            self._lost_at[ev.member] = time.monotonic()
            self.say(f"member {ev.member} lost after {rec.steps_received} steps: {ev.reason}; waiting for a rerun")
        else:
            self.ledger.ended(ev.member, "lost", ev.reason)
            self.say(f"member {ev.member} lost after {rec.steps_received} steps: {ev.reason}")

    def _dead_contact_of(self, member: int, read: tuple[int, int] | None) -> None:
        """Remember the contact file a member's ended writer left (killed writers leave theirs), so
        that only a new one, a rerun's, is read: ``read``, the file of the stream that ended (as
        dispatched), not whatever file is there now. A rerun may have replaced it already: its
        writer was stopped while the trainer did not read (a frozen trainer, whose worker sees the
        stream end only when it thaws), and the rerun's file, taken for the dead one, would never
        be read."""
        sig = read if read is not None else contact_signature(self.cfg.stream_dir, member)
        if sig is not None:
            self._dead_contact[member] = sig

    def _dispatch(self) -> None:
        """Hand every member whose stream appeared to an idle worker: members not yet read, and
        reruns of complete members (the workflow retries a member whose solver died after its last
        step, before its marker): those are read too, their steps counted as duplicates, so that
        the rerun's solver is answered instead of waiting in Open for a reader."""
        self._dispatch_jobs()
        for member in streams_present(self.cfg.stream, self.cfg.stream_dir):
            if not self.pool.idle:
                return
            if member not in self.ledger.records or member in self._rereading:
                continue
            status = self.ledger[member].status
            if status != "complete" and member not in self.unassigned:
                continue  # being read, or lost for good
            if member in self._dead_contact:
                if contact_signature(self.cfg.stream_dir, member) == self._dead_contact[member]:
                    continue  # still the dead writer's file: wait for the rerun's
                del self._dead_contact[member]
            if member in self.unassigned:
                self._take(member)
            else:
                self._rereading.add(member)
                self.say(f"member {member}: a rerun of a complete member; reading it as duplicates")
            self._reading[member] = contact_signature(self.cfg.stream_dir, member)
            self.pool.assign(member)

    def _dispatch_jobs(self) -> None:
        """Hand every job's stream (the many-members form) that appeared to an idle worker, unless
        it is one read already, or a dead writer's; its members are taken when it opens."""
        if self.cfg.stream.engine.upper() != "SST":
            return
        for job in streams_present(self.cfg.stream, self.cfg.stream_dir, prefix="job-"):
            if not self.pool.idle:
                return
            if job in self._jobs_reading:
                continue
            contact = contact_signature(self.cfg.stream_dir, job_stream_name(job))
            if job in self._dead_jobs:
                if contact == self._dead_jobs[job]:
                    continue  # still the dead writer's file: wait for the rerun's
                del self._dead_jobs[job]
            self._jobs_reading[job] = contact
            self.pool.assign_job(job)

    def _unassign(self, member: int) -> None:
        """``member`` waits for a (new) stream: its clock runs once a start comes after this."""
        self.unassigned.append(member)
        self._starts_base[member] = self._starts.get(member, 0)
        self._started_at.pop(member, None)

    def _timeouts(self, now: float) -> None:
        """One ``stream.member_timeout_s`` for both ways a member can go silent: a stream that sends
        nothing (its worker is stopped; the member ends lost through the pool), and a member whose
        job started it (:meth:`_read_starts`) but whose stream has not appeared that long after,
        while an ingest worker was free to read it. A member not started waits: it is ``pending``
        in the ledger however long its job waits in a queue, until the workflow stops launching
        (:meth:`_read_launch_stop`). A member whose stream was lost in this run waits that long for
        its rerun to start (a solver killed on its last attempt leaves no word)."""
        limit = self.cfg.stream.member_timeout_s
        self.pool.stop_silent(limit)
        if self.pool.busy:
            return
        for m in list(self.unassigned):
            rec = self.ledger[m]
            if m in self._started_at:
                if now - max(self._started_at[m], self._last_busy) <= limit:
                    continue
                reason = (f"{rec.reason}; its rerun started but did not connect within {limit:g} s"
                          if rec.status == "retrying" else f"never connected (started, no stream within {limit:g} s)")
            elif m in self._lost_at:
                if self._job_alive(m):
                    self._lost_at[m] = now  # its job has not ended (a frozen solver): no rerun yet
                    continue
                if now - max(self._lost_at[m], self._last_busy) <= limit:
                    continue
                reason = f"{rec.reason}; no rerun within {limit:g} s"
            else:
                continue  # pending: not started yet
            self._lose(m, reason)

    def _take(self, member: int) -> None:
        """``member`` waits for a stream no more (it is read, or ended): out of the list, its clocks gone."""
        self.unassigned.remove(member)
        self._started_at.pop(member, None)
        self._lost_at.pop(member, None)

    def _lose(self, member: int, reason: str) -> None:
        """End a member that has no stream being read as lost; its receipt will say so (a rerun that
        comes after all fails at once instead of waiting in Open for a reader that never comes)."""
        self.ledger.ended(member, "lost", reason)
        self.newly_rejected.append((member, reason, None))
        self.say(f"member {member} lost: {reason}")
        if member in self.unassigned:
            self._take(member)
        self._changed = True

    def _read_starts(self, files: list[tuple[int, Path]] | None = None) -> None:
        """The starts the members' jobs noted (:func:`datamove.ensemble.members.note_start`; ``files``:
        those a listing found, else a listing now): a member waiting for a stream whose count rose
        since it began waiting has been started now."""
        now = time.monotonic()
        if files is None:
            suffix = self._suffix(self.cfg.member_start)
            files = self._note_files(suffix)[suffix]
        records = self.ledger.records
        for member, path in files:
            rec = records.get(member)
            if rec is not None and rec.status in ("complete", "lost"):
                # Nothing waits on its start any more: its note is not read again (a study of
                # thousands of members kept re-reading them all, ~0.2 s every NOTES_S at 6,400).
                continue
            try:
                note = json.loads(path.read_text())
                starts = int(note["starts"])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                continue
            self._starts[member] = starts
            self._start_jobs[member] = note
            if (member in self.unassigned and member not in self._started_at
                    and starts > self._starts_base.get(member, 0)):
                self._started_at[member] = now

    def _job_alive(self, member: int) -> bool:
        """Whether the process that last started ``member`` may still run (its start note's pid on
        this host exists; on another host it cannot be checked: taken as ended)."""
        note = self._start_jobs.get(member)
        return bool(note) and note.get("host") == socket.gethostname() and lock_alive(note)

    def _read_launch_stop(self, now: float) -> None:
        """Once the workflow launches no more jobs (``launches.stopped.json``, written by
        :func:`datamove.run.launches.watch_launches`) and LAUNCH_GRACE_S have passed (a job just
        launched may not have noted its start yet), the members not started will not come: lost,
        with the reason; the same command, rerun, resumes this trainer and sends them."""
        if self._launch_stop is None:
            try:
                why = json.loads(self.cfg.launch_stop_path.read_text())["reason"]
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                return
            self._launch_stop, self._launch_stop_why = now, str(why)
            return
        if now - self._launch_stop < LAUNCH_GRACE_S:
            return
        for m in [m for m in self.unassigned if m not in self._started_at]:
            self._lose(m, f"not started: {self._launch_stop_why}; the same command, rerun, sends it")

    @staticmethod
    def _suffix(path_of) -> str:
        """The suffix of a kind of member note, from the config's path for it (member-K.<suffix>)."""
        return path_of(0).name.split(".", 1)[1]

    def _note_files(self, *suffixes: str) -> dict[str, list[tuple[int, Path]]]:
        """suffix -> (member, path) of this trainer's members that have a note ``member-K.<suffix>``
        (a start, a failure): one directory listing for all (not one stat per member of a large
        ensemble)."""
        folder = self.cfg.member_failure(0).parent
        mine = set(self.members)
        found: dict[str, list[tuple[int, Path]]] = {suffix: [] for suffix in suffixes}
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return found
        for entry in entries:
            stem, _, rest = entry.name.partition(".")
            if rest in found and stem.startswith("member-") and stem[7:].isdigit() and int(stem[7:]) in mine:
                found[rest].append((int(stem[7:]), Path(entry.path)))
        return found

    def _read_notes(self) -> None:
        """Apply the notes of failed solver launches: the reason goes into the ledger; a launch that
        was the last attempt (``final``) ends a member that has not completed as lost at once.
        And the starts, and whether the workflow still launches members."""
        started, failed = self._suffix(self.cfg.member_start), self._suffix(self.cfg.member_failure)
        notes = self._note_files(started, failed)
        self._read_starts(notes[started])
        if not self._finished:
            self._read_launch_stop(time.monotonic())
        for member, path in notes[failed]:
            try:
                note = json.loads(path.read_text())
                attempt, reason, final = int(note["attempt"]), str(note["reason"]), bool(note["final"])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                continue
            if self._notes_seen.get(member) == attempt:
                continue
            self._notes_seen[member] = attempt
            rec = self.ledger[member]
            if rec.status == "complete":
                continue
            reason = reason if not rec.reason or reason in rec.reason else f"{reason} ({rec.reason})"
            if final and rec.status != "streaming":
                self._lose(member, reason)
            elif rec.status in ("pending", "retrying"):
                self.ledger.ended(member, "retrying", reason)
            else:
                rec.reason = reason
