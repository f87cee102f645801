"""Where a study stands, read from its folder alone: ``datamove status results/<study>``.

Only files that the trainer and the members write into the study folder are read, so the status
works from any node that sees the folder (a login node on the shared file system) while the study
runs, and on a finished or crashed one:

- ``config.yaml``: the effective config, written when the study starts;
- ``trainer.heartbeat.json``: pid, ``seq``, ``time``, ``finished`` or ``stopped`` (why), and
  ``status``, the trainer's live counters (members by status, samples received, buffer, batch,
  last losses), every beat;
- ``trainer.lock``: pid and host of the trainer that holds the study (left behind by a kill -9);
- ``metrics.csv``: losses and rates every ``trainer.log_every`` batches (and the rollout error of
  the held-out members every ``trainer.val_rollout_every``);
- ``ledger.csv`` (and ``ledger.rank*.csv`` under data-parallel training): each member's status,
  reason and attempts, at each checkpoint and at the end;
- ``members/member-K.json`` (the member was sent) and ``members/member-K.failed.json`` (a failed
  attempt: its reason, whether it was the last);
- ``checkpoint.pt`` and ``model.pt``: whether and when they were written (never opened: no torch).

Times are files' modification times. The age of the heartbeat is this node's clock minus the time
stamp of the file system (on NFS the server's clock), so clock skew between the two shifts it;
``--watch`` times the heartbeat by this process's own clock instead, once it has seen the beat's
number advance (as the readiness gate does). Rates and the time left compare files' time stamps
with each other only.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamove.config import ConfigError, StudyConfig
from datamove.run.heartbeat import lost_after, read_heartbeat
from datamove.run.lock import lock_alive

# What a study's trainer is doing.
WAITING = "waiting"  # no trainer yet (queued, starting up)
RUNNING = "running"  # a live heartbeat
FINISHED = "finished"  # every stream read, model.pt written
STOPPED = "stopped"  # ended before the end: a signal or an error (its last beat says ``stopped``)
STALE = "stale"  # a heartbeat left behind that no longer advances: the trainer was killed, or hangs

CONFIG_NAME = "config.yaml"


class NotAStudyError(ValueError):
    """A folder that does not exist or is not a study's; the message names it."""


@dataclass(frozen=True)
class MemberNote:
    """A member that was lost or retried, and why (the ledger clears a reason once a rerun completes)."""

    member: int
    attempts: int
    status: str
    reason: str


@dataclass(frozen=True)
class MemberCounts:
    """Members by status; ``source``: the file the counts come from (the freshest one)."""

    total: int
    complete: int = 0
    streaming: int = 0
    pending: int = 0
    retrying: int = 0
    lost: int = 0
    retried: int = 0  # not lost, but streamed more than once or waiting for a rerun
    source: str = ""

    @property
    def ended(self) -> int:
        return self.complete + self.lost


@dataclass(frozen=True)
class StudyStatus:
    """One study (or one arm of a comparison study) at one moment; None where a number is not known."""

    folder: Path
    study: str  # its name
    arm: str | None  # the arm of a comparison study ("online", "offline"), or None
    trainer: str  # "online" (SST) or "offline" (BP5)
    state: str  # WAITING, RUNNING, FINISHED, STOPPED or STALE
    detail: str  # one sentence on the state
    members: MemberCounts
    lost: tuple[MemberNote, ...]
    retried: tuple[MemberNote, ...]
    samples_received: int | None
    samples_expected: int
    receive_rate: float | None  # samples/s reaching the trainer, over the last two metrics rows
    samples_per_s: float | None  # samples/s trained, at the last metrics row
    buffer: int | None  # samples held by the reservoir
    capacity: int
    batch: int | None  # batches trained
    logged_batch: int | None  # the batch of the last metrics row (the losses')
    train_loss: float | None
    val_loss: float | None
    # trainer.val_rollout_every: the batch and relative L2 at the horizon of the last rollout validation
    rollout_batch: int | None
    val_rollout_rel_l2: float | None
    heartbeat_age_s: float | None  # since the trainer's last beat
    heartbeat_clock: str  # how that age was timed
    trainer_pid: int | None
    trainer_host: str | None
    eta_s: float | None  # time left, estimated from the members' completion rate
    eta_note: str  # its basis, or why it is unknown
    settled: bool  # it will not change by itself: finished, stopped, or a trainer known gone
    # parameters.sampler adaptive: the latest proposal (version, batch, the members it is centred
    # on) and how many members drew from where (draws: base / proposal / fallback); None otherwise.
    sampling: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: NaN and infinities (a loss not computed) become None."""
        out = {key: None if isinstance(value, float) and not math.isfinite(value) else value
               for key, value in dataclasses.asdict(self).items()}
        out["folder"] = str(self.folder)
        out["members"]["ended"] = self.members.ended
        return out


class BeatClock:
    """Times a trainer's heartbeat by this process's monotonic clock, across looks (``--watch``),
    as the readiness gate does: no clock of another node is compared with this one's."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._first: float | None = None  # the first look
        self._changed_at: float | None = None  # when (pid, seq) was last seen to change

    def age(self, beat: Mapping[str, Any] | None) -> float | None:
        """Seconds since the beat's ``(pid, seq)`` was last seen to change; None until a change is seen."""
        now = time.monotonic()
        self._first = now if self._first is None else self._first
        key = None if beat is None else (beat.get("pid"), beat.get("seq"))
        if self._key is not None and key != self._key:
            self._changed_at = now
        self._key = key
        return None if self._changed_at is None or beat is None else now - self._changed_at

    def watched(self) -> float:
        """Seconds since the first look."""
        return 0.0 if self._first is None else time.monotonic() - self._first


def study_folders(folder: str | Path) -> list[Path]:
    """The study folders ``datamove status FOLDER`` reports on: FOLDER itself, or, for a comparison
    study (``comparison.enabled``), each of its arms that has started. Raises
    :class:`NotAStudyError` for a folder that does not exist or holds no study."""
    folder = Path(folder)
    cfg = _load(folder)[1]
    if cfg.comparison.enabled and cfg.arm is None:
        arms = [folder / arm for arm in ("online", "offline") if (folder / arm / CONFIG_NAME).is_file()]
        return arms or [folder]
    return [folder]


def load_study(folder: str | Path) -> StudyConfig:
    """The config of the study in ``folder``, its paths moved to ``folder`` (which may be reached
    through another path than the config's ``results_dir``, e.g. from another node or directory)."""
    return _load(Path(folder))[0]


def _load(folder: Path) -> tuple[StudyConfig, StudyConfig]:
    """:func:`load_study`, and the config as written (its study name and arm)."""
    if not folder.exists():
        raise NotAStudyError(f"{folder}: no such study folder (a study's folder is <results_dir>/<study>/)")
    if not folder.is_dir():
        raise NotAStudyError(f"{folder} is a file, not a study folder")
    path = folder / CONFIG_NAME
    if not path.is_file():
        inside = sorted(p.parent.name for p in folder.glob(f"*/{CONFIG_NAME}"))
        hint = f"; studies in it: {', '.join(inside)}" if inside else ""
        raise NotAStudyError(
            f"{folder} is not a study folder: it has no {CONFIG_NAME} (written when a study starts){hint}"
        )
    try:
        cfg = StudyConfig.load(path)
    except (ConfigError, OSError, ValueError) as exc:
        raise NotAStudyError(f"{folder} is not a study folder: its config is not a valid study config: {exc}") from None
    # study_dir = results_dir / study (/ arm): re-rooted so that it is ``folder``.
    return dataclasses.replace(cfg, results_dir=folder.parent, study=folder.name, arm=None), cfg


def read_status(folder: str | Path, *, clock: BeatClock | None = None) -> StudyStatus:
    """The status of the study in ``folder`` (one study, or one arm of a comparison study).

    ``clock``: the same :class:`BeatClock` at every look of a ``--watch``, to time the heartbeat
    by this node's clock once its number has been seen to advance.
    """
    folder = Path(folder)
    cfg, written = _load(folder)
    online = cfg.stream.engine.upper() == "SST"
    now = time.time()
    n_members = cfg.ensemble.n_members

    beat = read_heartbeat(cfg.heartbeat_path) if online else None
    beat_mtime = _mtime(cfg.heartbeat_path) if beat is not None else None
    live = beat.get("status") if beat and isinstance(beat.get("status"), dict) else None
    lock = _read_json(cfg.lock_path)
    metrics = _metrics_rows(folder / "metrics.csv")
    ledger, ledger_mtime = _ledger(folder)
    notes = _failure_notes(cfg.study_dir / "members")
    markers = _marker_times(cfg.study_dir / "members")

    pid, host = _trainer_id(beat, lock)
    gone = _gone(lock) and (beat is None or beat.get("pid") == (lock or {}).get("pid"))
    age, age_clock, seen = None, "", None
    if beat is not None:
        seen = clock.age(beat) if clock else None
        if seen is not None:
            age, age_clock = seen, "by this node's clock (beat seen to advance)"
        else:
            age, age_clock = now - beat_mtime, "by the file's time stamp"
    state, detail = (
        _online_state(cfg, beat, age, lock, gone, bool(metrics or ledger), now) if online
        else _offline_state(cfg, metrics, now)
    )
    settled = state in (FINISHED, STOPPED)
    if state == STALE:
        # Watching, a trainer is taken as gone for good only once this node's clock has seen its
        # beat stand still that long (or its process is known gone): a time stamp written by a
        # clock that runs ahead is no proof.
        still = seen if seen is not None else (clock.watched() if clock else math.inf)
        settled = gone or still > lost_after(cfg)

    # A live trainer's beat is the freshest count; under data-parallel training it covers rank 0's
    # members only. Otherwise (or for the reasons, which the beat does not carry) each member as
    # the ledger last had it, brought up to date by the members' own files.
    view = _member_view(n_members, ledger, markers, notes)
    use_live = (
        state == RUNNING and live is not None and live.get("members") == n_members
        and (ledger_mtime is None or beat_mtime >= ledger_mtime)
    )
    lost, retried = _notes(view, ledger, notes)
    members = (
        _counts_from_live(n_members, live) if use_live else _counts_from_view(view, ledger, retried=len(retried))
    )
    if online and state == RUNNING and not beat.get("finished") and members.ended == members.total:
        last_part = "up to trainer.batch_budget" if cfg.trainer.batch_budget else "the last trainer.extra_batches"
        detail = f"every member ended; training {last_part} (pid {pid})"

    last = metrics[-1] if metrics else {}
    rolled = next((row for row in reversed(metrics) if row.get("val_rollout_rel_l2") is not None), {})
    if use_live:
        samples = live.get("samples_received")
        buffer, batch = live.get("buffer"), live.get("batch")
    else:
        samples = last.get("samples_received")
        if samples is None and ledger:
            samples = sum(int(r.get("steps_received") or 0) for r in ledger.values())
        occupancy = last.get("occupancy")
        buffer = None if occupancy is None else round(occupancy * cfg.reservoir.capacity)
        batch = last.get("batch")
    eta, eta_note = _eta(
        cfg, state, members, markers, now_ref=beat_mtime or now, gate=_mtime(cfg.gate_path),
        batches_per_s=last.get("batches_per_s"), batch=batch,
    )
    return StudyStatus(
        folder=folder, study=written.study, arm=written.arm, trainer="online" if online else "offline",
        state=state, detail=detail,
        members=members, lost=lost, retried=retried,
        samples_received=None if samples is None else int(samples),
        samples_expected=n_members * cfg.problem.n_steps,
        receive_rate=_receive_rate(metrics, live=state == RUNNING), samples_per_s=last.get("samples_per_s"),
        buffer=None if buffer is None else int(buffer), capacity=cfg.reservoir.capacity if online else 0,
        batch=None if batch is None else int(batch),
        logged_batch=None if "batch" not in last else int(last["batch"]),
        train_loss=last.get("train_loss"), val_loss=last.get("val_loss"),
        rollout_batch=rolled.get("batch"), val_rollout_rel_l2=rolled.get("val_rollout_rel_l2"),
        heartbeat_age_s=age, heartbeat_clock=age_clock, trainer_pid=pid, trainer_host=host,
        eta_s=eta, eta_note=eta_note, settled=settled,
        sampling=_sampling(cfg) if cfg.ensemble.adaptive is not None else None,
    )


def _sampling(cfg: StudyConfig) -> dict[str, Any]:
    """The adaptive sampler's latest proposal and the members' draws (datamove.sampling.proposals's files)."""
    from datamove.sampling import proposals

    latest = _read_json(proposals.proposal_path(cfg)) or {}
    draws = {source: 0 for source in proposals.DRAW_SOURCES}
    for member in range(cfg.ensemble.n_members):
        d = proposals.read_draw(cfg, member)
        if d is not None:
            draws[d.source] = draws.get(d.source, 0) + 1
    return {"proposal": latest.get("version"), "proposal_batch": latest.get("batch"),
            "centres": list(latest.get("members", []))[:8], "draws": draws}


# --- reading the files -------------------------------------------------------------------------


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _read_json(path: Path) -> dict | None:
    """A JSON object, or None when absent or unreadable (caught mid-replace)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _number(text: str | None) -> float | int | None:
    if text is None or text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _metrics_rows(path: Path) -> list[dict[str, float | int | None]]:
    """metrics.csv as numbers; a row caught half-written by a running trainer is left out."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return []
    out = []
    for row in rows:
        try:
            if None in row.values() or None in row:
                raise ValueError("short row")
            out.append({key: _number(value) for key, value in row.items()})
        except ValueError:
            continue
    return out


def _ledger(folder: Path) -> tuple[dict[int, dict[str, str]], float | None]:
    """The ledger's rows by member, from ledger.csv and, mid-study under data-parallel training,
    each rank's ledger.rankN.csv; and the time the newest of them was written."""
    rows: dict[int, dict[str, str]] = {}
    newest = None
    for path in sorted(folder.glob("ledger.rank*.csv")) + [folder / "ledger.csv"]:
        try:
            with path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    if row.get("member") and row.get("status"):
                        rows[int(row["member"])] = row
        except (OSError, ValueError):
            continue
        mtime = _mtime(path)
        newest = mtime if newest is None or (mtime or 0) > newest else newest
    return rows, newest


def _failure_notes(members_dir: Path) -> dict[int, dict[str, Any]]:
    notes = {}
    for path in members_dir.glob("member-*.failed.json"):
        note = _read_json(path)
        if note and "member" in note:
            notes[int(note["member"])] = note
    return notes


def _marker_times(members_dir: Path) -> dict[int, float]:
    """When each member's marker (members/member-K.json, written once it was sent) was written."""
    times = {}
    for path in members_dir.glob("member-*.json"):
        stem = path.name[len("member-"):-len(".json")]
        if stem.isdigit():
            mtime = _mtime(path)
            if mtime is not None:
                times[int(stem)] = mtime
    return times


# --- members -----------------------------------------------------------------------------------

_STATUSES = ("complete", "streaming", "pending", "retrying", "lost")
_UNFINISHED = ("pending", "streaming", "retrying")


def _member_view(total: int, ledger: Mapping[int, Mapping[str, str]], markers: Mapping[int, float],
                 notes: Mapping[int, Mapping[str, Any]]) -> dict[int, str]:
    """Each member's status: the ledger's (as of its last writing: a checkpoint, or the end), then,
    for a member it had not seen end, the member's own files, written as things happen: a marker
    (sent: complete), a failure note (lost after the last attempt, else retrying)."""
    view = {m: "pending" for m in range(total)}
    view.update({m: row["status"] for m, row in ledger.items() if m in view})
    for member, status in view.items():
        if status not in _UNFINISHED:
            continue
        if member in markers:
            view[member] = "complete"
        elif member in notes:
            view[member] = "lost" if notes[member].get("final") else "retrying"
    return view


def _counts_from_live(total: int, live: Mapping[str, Any]) -> MemberCounts:
    return MemberCounts(
        total=total, **{s: int(live.get(s) or 0) for s in _STATUSES}, retried=int(live.get("retried") or 0),
        source="trainer's heartbeat",
    )


def _counts_from_view(view: Mapping[int, str], ledger: Mapping[int, Mapping[str, str]], *,
                      retried: int) -> MemberCounts:
    counts = dict.fromkeys(_STATUSES, 0)
    for status in view.values():
        counts[status] = counts.get(status, 0) + 1
    files = ["ledger.csv"] if ledger else []
    return MemberCounts(
        total=len(view), **{s: counts[s] for s in _STATUSES}, retried=retried,
        source=" and ".join([*files, "member files"]),
    )


def _notes(view: Mapping[int, str], ledger: Mapping[int, Mapping[str, str]],
           notes: Mapping[int, Mapping[str, Any]]) -> tuple[tuple[MemberNote, ...], tuple[MemberNote, ...]]:
    """The lost members, and the others that were retried (streamed more than once, or a failed
    launch), with their reasons: a failure note's (the latest), else the ledger's."""
    lost, retried = [], []
    for member, status in sorted(view.items()):
        row, note = ledger.get(member, {}), notes.get(member, {})
        attempts = max(int(row.get("attempts") or 0), int(note.get("attempt") or 0))
        entry = MemberNote(member, attempts, status, str(note.get("reason") or row.get("reason") or ""))
        if status == "lost":
            lost.append(entry)
        elif attempts > 1 or status == "retrying" or note:
            retried.append(entry)
    return tuple(lost), tuple(retried)


# --- the trainer -------------------------------------------------------------------------------


def _trainer_id(beat: Mapping | None, lock: Mapping | None) -> tuple[int | None, str | None]:
    """The trainer's pid (its beat's, else its lock's) and host (its lock's, written by the same process)."""
    pid = beat.get("pid") if beat else (lock or {}).get("pid")
    host = (lock or {}).get("host") if lock and (beat is None or lock.get("pid") == beat.get("pid")) else None
    return (None if pid is None else int(pid)), host


def _gone(lock: Mapping | None) -> bool:
    """Whether the lock names a process of this host that no longer exists (only this host's
    processes can be checked)."""
    return bool(lock) and not lock_alive(dict(lock))


def _online_state(cfg: StudyConfig, beat: Mapping | None, silent: float | None, lock: Mapping | None,
                  gone: bool, started: bool, now: float) -> tuple[str, str]:
    """The online trainer's state and a sentence on it; ``silent``: seconds the beat has not
    changed; ``gone``: the trainer's process is known to be gone."""
    model, ckpt = cfg.study_dir / "model.pt", cfg.checkpoint_path
    resume = ""
    if ckpt.exists():
        resume = f"; a rerun resumes from checkpoint.pt (written {_ago(now - (_mtime(ckpt) or now))})"
    lock_pid = (lock or {}).get("pid")
    if beat is not None and beat.get("stopped"):  # its last beat says why
        return STOPPED, f"the trainer stopped before the end ({beat['stopped']}){resume}"
    if beat is not None and not beat.get("finished"):
        limit = lost_after(cfg)
        if gone or silent > limit:
            why = (f"its process {lock_pid} on {lock.get('host')} is gone" if gone
                   else f"no beat for {_ago(silent, suffix='')} (taken as gone after {limit:g} s, as the solvers do)")
            return STALE, f"the trainer is not running: its heartbeat is stale, {why}{resume}"
        return RUNNING, f"training; reading the members' streams (trainer pid {beat.get('pid')})"
    if beat is not None:  # the final beat: every stream read (and, by now, model.pt written)
        if model.exists():
            return FINISHED, f"every stream read and model.pt written ({_ago(now - (_mtime(model) or now))})"
        if gone:
            return STOPPED, f"the trainer (pid {lock_pid}) read every stream but stopped before writing model.pt"
        return RUNNING, "every stream read; the trainer is writing its outputs"
    if model.exists() and not ckpt.exists():
        return FINISHED, f"model.pt written ({_ago(now - (_mtime(model) or now))})"
    if lock and not gone:
        return WAITING, f"the trainer (pid {lock_pid} on {lock.get('host')}) is starting: no heartbeat yet"
    if started or ckpt.exists():
        return STOPPED, (
            "the trainer stopped before the end (its heartbeat is gone; see "
            f"logs/train_online/train_online.log){resume}"
        )
    return WAITING, "no trainer yet (no heartbeat): it may be waiting in the queue"


def _offline_state(cfg: StudyConfig, metrics: list, now: float) -> tuple[str, str]:
    """The offline trainer writes no heartbeat: only its outputs tell."""
    model, metrics_path = cfg.study_dir / "model.pt", cfg.study_dir / "metrics.csv"
    if model.exists() and (_mtime(model) or 0) >= (_mtime(metrics_path) or 0):
        return FINISHED, f"model.pt written ({_ago(now - (_mtime(model) or now))})"
    if metrics:
        return RUNNING, (
            f"offline training; metrics.csv written {_ago(now - (_mtime(metrics_path) or now))} (the offline "
            "trainer writes no heartbeat: whether it still runs is not known here)"
        )
    return WAITING, "no offline trainer output yet"


def _ago(seconds: float, *, suffix: str = " ago") -> str:
    return f"{format_duration(max(seconds, 0.0))}{suffix}"


# --- rates and the time left -------------------------------------------------------------------


RATE_WINDOW_S = 30.0  # training seconds over which a running trainer's intake rate is measured


def _receive_rate(rows: list[Mapping[str, Any]], *, live: bool) -> float | None:
    """Samples/s that reached the trainer, by its training time (metrics.csv's wall_s): over the
    last :data:`RATE_WINDOW_S` while it runs (rows come every few milliseconds at small sizes:
    the last two alone would jump between 0 and bursts); else over the study, until the last
    sample came."""
    pts = [(float(r["wall_s"]), float(r["samples_received"])) for r in rows
           if r.get("wall_s") is not None and r.get("samples_received") is not None]
    if not pts:
        return None
    pts = [(0.0, 0.0), *pts]
    if live:
        end = pts[-1]
        start = next((p for p in reversed(pts) if p[0] <= end[0] - RATE_WINDOW_S), pts[0])
    else:
        start, end = pts[0], next(p for p in pts if p[1] == pts[-1][1])
    return (end[1] - start[1]) / (end[0] - start[0]) if end[0] > start[0] else None


def _eta(cfg: StudyConfig, state: str, members: MemberCounts, markers: Mapping[int, float], *,
         now_ref: float, gate: float | None, batches_per_s: float | None, batch: int | None = None
         ) -> tuple[float | None, str]:
    """Time left: the members not ended at the rate members have been completing (their markers'
    times, since the readiness gate opened when the workflow left its file), then the trainer's
    ``trainer.extra_batches`` at its last batch rate. ``now_ref``: the heartbeat's time stamp, of
    the same clock as the markers'."""
    if state == FINISHED:
        return 0.0, "finished"
    if cfg.stream.engine.upper() != "SST":
        return None, "unknown for the offline trainer"
    if state != RUNNING:
        return None, f"unknown: the trainer is {state}"
    # The last batches: extra_batches, or those left of trainer.batch_budget.
    budget = cfg.trainer.batch_budget
    tail_batches = cfg.trainer.extra_batches if budget is None else max(budget - (batch or 0), 0)
    tail = tail_batches / batches_per_s if batches_per_s else None
    remaining = members.total - members.ended
    if remaining <= 0:
        return tail, ("the trainer's last trainer.extra_batches" if tail is not None else "unknown: no batch rate yet")
    times = sorted(markers.values())
    if gate is not None and times and gate < times[0]:
        done, span = len(times), times[-1] - gate
    else:
        done, span = len(times) - 1, (times[-1] - times[0]) if times else 0.0
    if done < 1 or span <= 0:
        return None, "unknown: too few members have finished to tell a rate"
    rate = done / span  # members per second
    left = max(remaining / rate - max(now_ref - times[-1], 0.0), 0.0) + (tail or 0.0)
    return left, f"{remaining} member{'s' if remaining != 1 else ''} to go at {rate * 60:.3g} members/min"


# --- formatting --------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``0.4 s``, ``42 s``, ``3 min 05 s``, ``2 h 07 min``; ``unknown`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _num(value: float | None, fmt: str = ".3e") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _reasons(notes: Iterable[MemberNote], *, with_status: bool, limit: int = 5) -> list[str]:
    notes = list(notes)
    lines = [f"member {n.member} ({f'{n.status}, ' if with_status else ''}{n.attempts} attempt"
             f"{'s' if n.attempts != 1 else ''})" + (f": {n.reason}" if n.reason else "") for n in notes[:limit]]
    if len(notes) > limit:
        lines.append(f"... and {len(notes) - limit} more (ledger.csv, members/*.failed.json)")
    return lines


def format_status(st: StudyStatus) -> str:
    """A compact table for people."""
    m = st.members
    rows = [("state", f"{st.state}: {st.detail}")]
    if st.heartbeat_age_s is not None:
        where = f"pid {st.trainer_pid}" + (f" on {st.trainer_host}" if st.trainer_host else "")
        rows.append(("heartbeat", f"{_ago(st.heartbeat_age_s)} ({st.heartbeat_clock}; {where})"))
    counts = (
        f"{m.complete} complete, {m.streaming} streaming, {m.pending} pending, {m.retrying} retrying, "
        f"{m.lost} lost of {m.total}; {m.retried} retried (source: {m.source})"
    )
    rows.append(("members", counts))
    samples = "-" if st.samples_received is None else f"{st.samples_received:,}"
    rate = "" if st.receive_rate is None else f" ({st.receive_rate:,.1f}/s)"
    trained = "" if st.samples_per_s is None else f"; training {st.samples_per_s:,.0f} samples/s"
    rows.append(("samples", f"{samples} of {st.samples_expected:,} received{rate}{trained}"))
    if st.trainer == "online":
        occ = "-" if st.buffer is None else f"{st.buffer:,} of {st.capacity:,} ({100 * st.buffer / max(st.capacity, 1):.0f} %)"
        rows.append(("reservoir", occ))
    batch = "-" if st.batch is None else f"{st.batch:,}"
    at = "" if st.logged_batch is None else f" at batch {st.logged_batch:,}"
    rows.append(("batch", f"{batch}; last logged{at}: train loss {_num(st.train_loss)}, val loss {_num(st.val_loss)}"))
    if st.rollout_batch is not None:
        rows.append(("rollout", f"held-out rollout relative L2 {_num(st.val_rollout_rel_l2)} at the last step "
                                f"(at batch {st.rollout_batch:,})"))
    rows.append(("time left", f"{format_duration(st.eta_s)} ({st.eta_note})"))
    if st.sampling is not None:
        sp, d = st.sampling, st.sampling["draws"]
        latest = ("no proposal yet" if sp["proposal"] is None else
                  f"proposal {sp['proposal']} at batch {sp['proposal_batch']:,}, centred on members {sp['centres']}")
        rows.append(("sampling", f"adaptive: {latest}; members drawn: {d.get('proposal', 0)} from a proposal, "
                                 f"{d.get('base', 0)} base points, {d.get('fallback', 0)} fallbacks"))
    for label, notes in (("lost", st.lost), ("retried", st.retried)):
        for i, line in enumerate(_reasons(notes, with_status=label == "retried")):
            rows.append((label if i == 0 else "", line))
    width = max(len(label) for label, _ in rows)
    head = f"study {st.study} ({f'{st.arm} arm' if st.arm else st.trainer}): {st.folder}"
    return "\n".join([head, *(f"  {label:<{width}}  {text}" for label, text in rows)])
