"""What outlives a restart (S20): how long ago a record was made, told by the monotonic clock where it can be, else by a trusted wall clock, else not at all."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Carried:
    """What a lamp takes over from the record at start (S20), derived by lampctl.core.carryover.

    age_s: seconds since its last session ended (0 where that cannot be trusted, so the
    cooldown applies in full and the rest window runs from now); used_s: what that patient
    has used (the session and those it continues); last_id: the session a start continues.
    """

    age_s: float
    used_s: float
    last_id: int
    trusted: bool = True


# Changes at every boot; CLOCK_MONOTONIC (time.monotonic) counts from that boot, in every process.
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id(path: Path = BOOT_ID_FILE) -> str | None:
    """This boot's id, or None where the kernel does not tell (the wall clock then decides)."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class ClockRef:
    """One moment on both clocks: the boot and its monotonic time, the wall time, whether the wall was synchronised."""

    boot_id: str | None
    mono: float | None
    wall: datetime | None
    synced: bool | None


def s20_elapsed_s(then: ClockRef, now: ClockRef) -> float | None:
    """S20/S22: seconds from `then` to `now`, or None when they cannot be trusted (the caller takes the safe side).

    In the same boot the monotonic clock tells it exactly, whatever the wall clock did.
    Across a boot only the wall clock can, and only when it was synchronised at both ends
    and does not run backwards between them (a record "from the future" was made before
    a step). Unknown counts as untrusted.
    """
    if then.boot_id is not None and then.boot_id == now.boot_id and then.mono is not None and now.mono is not None:
        elapsed = now.mono - then.mono
        return elapsed if elapsed >= 0 else None
    if then.synced is True and now.synced is True and then.wall is not None and now.wall is not None:
        elapsed = (now.wall - then.wall).total_seconds()
        return elapsed if elapsed >= 0 else None
    return None


def s20_carry_over(last_sessions: list[dict[str, Any]], now: ClockRef) -> dict[str, Carried]:
    """S20: each lamp's cooldown and rest-window budget after a restart, from its last session on disk.

    `last_sessions` holds per lamp its newest session (by id, which no clock can reorder)
    with `chain_used_s`, the time used by it and the sessions it continues, and its clock
    anchor. The age since it ended is 0 where it cannot be trusted, so the cooldown applies
    in full and a start continues the budget. A session ended `interrupted` counts what its
    progress mark says it ran, and ended, for all anyone knows, when this start claimed the
    relays (after a kill the relay stayed where it was until then).
    """
    carried = {}
    for row in last_sessions:
        if row.get("actual_s") is None:
            continue  # still open: recover_interrupted closes it before this runs
        age = None
        if row["end_reason"] != "interrupted" and row.get("started_mono") is not None:
            ended = ClockRef(
                row.get("boot_id"),
                row["started_mono"] + row["actual_s"],
                datetime.fromisoformat(row["ended_at"]),
                _flag(row.get("wall_synced")),
            )
            age = s20_elapsed_s(ended, now)
        carried[row["lamp_id"]] = Carried(
            age_s=0.0 if age is None else age,
            used_s=float(row["chain_used_s"]),
            last_id=int(row["id"]),
            trusted=age is not None,
        )
    return carried


def _flag(value: object) -> bool | None:
    return None if value is None else bool(value)
