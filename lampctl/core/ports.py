"""What the controller is handed: relay hardware, the firmware backstop, a clock and the usage log, as Protocols."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Protocol


class Hardware(Protocol):
    """Relay outputs; set() and all_off() are thread-safe and idempotent, so a Stop calls them unlocked."""

    def set(self, index: int, on: bool) -> None: ...
    def all_off(self) -> None: ...
    def is_on(self, index: int) -> bool: ...
    def feedback_on(self, index: int) -> bool | None: ...
    def beep(self, index: int, pattern: str) -> None: ...  # "end", "warn", "fault"; never blocks
    def patient_pressed(self, index: int) -> bool: ...  # S24: the patient's stop button reads pressed
    def tilted(self, index: int) -> bool: ...  # S25: the stand's tilt switch reads open
    @property
    def estop_pressed(self) -> bool: ...


class Backstop(Protocol):
    """The independent second channel (S7).

    arm() blocks and may raise. release() never blocks (a queue put) and its OFF reaches
    the firmware after every ARM asked for before it, even one whose arm() gave up (S12).
    cut_at() is lock-free and in memory: the monotonic time by which the firmware has
    surely cut that lamp (its armed deadline, or the host's silence past the watchdog
    since `since`), or None (S13).
    """

    grace_s: float

    def arm(self, index: int, ms: int) -> None: ...
    def release(self, index: int) -> None: ...
    def cut_at(self, index: int, since: float) -> float | None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def wall(self) -> datetime: ...
    def wait(self, condition: threading.Condition, timeout: float | None) -> None: ...


class UsageRecords(Protocol):
    """Where the controller records sessions, events and latches (lampctl.storage.store.UsageLog).

    Every call returns at once, whatever the disk does (S9, S10): the controller calls them under its lock.
    """

    def new_session_id(self) -> int: ...
    def session_started(
        self,
        session_id: int,
        lamp_id: str,
        user: str,
        started_at: datetime,
        planned_s: float,
        continues: int | None = None,
        *,
        new_patient: bool = False,
        new_patient_by: str | None = None,
        started_mono: float | None = None,
    ) -> None: ...
    def session_progress(self, session_id: int, elapsed_s: float) -> None: ...
    def session_extended(self, session_id: int, planned_s: float) -> None: ...
    def session_ended(self, session_id: int, ended_at: datetime, actual_s: float, reason: str) -> None: ...
    def event(
        self,
        lamp_id: str | None,
        from_state: str | None,
        to_state: str | None,
        who: str,
        why: str,
        at: datetime | None = None,
    ) -> None: ...
    def fault_latched(self, lamp_id: str, reason: str, at: datetime | None = None) -> None: ...
    def fault_cleared(self, lamp_id: str) -> None: ...
