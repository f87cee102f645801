"""Receipts: the trainer's word that it holds a member's steps.

Receipts (``members/member-K.received.json``, :func:`write_receipt`): the trainer writes one once a
member's steps are all received and held by a checkpoint. A member's solver writes its marker
only after its receipt (:func:`await_receipt`), so the workflow never skips a member whose steps a
crashed trainer did not keep; and a rerun of a member that has its receipt sends nothing.
"""

from __future__ import annotations

import json
import os
import time

from datamove.config import StudyConfig
from datamove.run.files import write_json
from datamove.run.heartbeat import TrainerCheck, TrainerLostError, lost_after


class MemberRejected(RuntimeError):
    """The trainer ended a member's stream without all its steps (a contract violation, NaN, a
    silent stream): the member failed. ``final``: the trainer takes no rerun of it (its ledger
    says lost), so the workflow need not retry."""

    def __init__(self, message: str, *, final: bool):
        super().__init__(message)
        self.final = final


def rejection(member: int, receipt: dict | None) -> MemberRejected | None:
    """The trainer's refusal of any further stream of ``member`` (its ledger says lost), or None."""
    if receipt is None or receipt.get("status") != "lost":
        return None
    return MemberRejected(
        f"member {member}: the trainer ended it for good ({receipt.get('steps')} steps received: "
        f"{receipt.get('reason')}) and reads no more of its streams", final=True,
    )


def write_receipt(cfg: StudyConfig, member: int, *, steps: int, checkpointed: bool, status: str = "complete",
                  reason: str = "", contact: tuple[int, int] | None = None) -> None:
    """``status`` complete: the trainer holds every step of ``member`` (``checkpointed``: in a
    checkpoint). Otherwise (``lost``, ``retrying``): the stream whose contact file had signature
    ``contact`` ended without all its steps, for ``reason``; its solver, if alive, stops waiting."""
    write_json(cfg.member_receipt(member), {
        "member": member, "status": status, "steps": steps, "trainer_pid": os.getpid(),
        "checkpointed": checkpointed, "time": time.time(),
        **({"reason": reason, "contact": list(contact) if contact else None} if status != "complete" else {}),
    })


def held(receipt: dict | None) -> bool:
    """Whether a receipt says the trainer holds the member."""
    return receipt is not None and receipt.get("status", "complete") == "complete"


def read_receipt(cfg: StudyConfig, member: int) -> dict | None:
    """The member's receipt, or None (absent, or caught mid-write)."""
    try:
        return json.loads(cfg.member_receipt(member).read_text())
    except (FileNotFoundError, ValueError):
        return None


def await_receipt(cfg: StudyConfig, *, pid: int, member: int, contact: tuple[int, int] | None = None) -> dict:
    """Wait, once a member's stream has closed, until trainer ``pid`` holds its steps (its receipt).

    Why: an SST writer whose reader dies gets no error (ADIOS2 only prints "unexpected connection
    close"), so a member would look sent; and a trainer that dies before its next checkpoint loses
    what it received since. The member's marker, after which the workflow never reruns it, waits
    for the receipt; the wait ends with :class:`TrainerLostError` as soon as the trainer is gone
    (no beat for :func:`lost_after`, a ``stopped`` beat, or a final beat without this receipt), or
    with :class:`MemberRejected` when the trainer says this stream (its contact file's signature
    ``contact``) ended without all its steps.
    """
    check = TrainerCheck(cfg.heartbeat_path, pid=pid, quiet_s=lost_after(cfg))
    # A live trainer answers within a checkpoint's time; one that keeps silent longer than it
    # waits for a silent stream has not read this one (a bound, so that no solver waits forever).
    deadline = time.monotonic() + cfg.stream.member_timeout_s
    while True:
        receipt = read_receipt(cfg, member)
        if held(receipt):
            return receipt
        if time.monotonic() > deadline:
            raise TrainerLostError(
                f"member {member}: the trainer (pid {pid}) gave no receipt within {cfg.stream.member_timeout_s:g} s "
                f"(stream.member_timeout_s) after the stream closed"
                + (f"; its last word on the member: {receipt.get('status')}, {receipt.get('reason')}" if receipt else "")
            )
        if receipt is not None and contact is not None and receipt.get("contact") == list(contact):
            raise MemberRejected(
                f"member {member}: the trainer did not get all its steps ({receipt.get('steps')} received, "
                f"{receipt.get('status')}): {receipt.get('reason')}", final=receipt.get("status") == "lost",
            )
        gone = check()
        if gone is not None and not held(read_receipt(cfg, member)):
            raise TrainerLostError(
                f"member {member}: {gone} before it held the member's steps (no receipt "
                f"{cfg.member_receipt(member)}); the member is not marked done, so a rerun sends it again"
            )
        time.sleep(0.05)
