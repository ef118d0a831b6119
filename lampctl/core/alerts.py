"""Buzzer alerts the controller asks for under its lock and sounds after letting go of it."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from lampctl.core.lamp import Session
    from lampctl.core.ports import Hardware

log = logging.getLogger(__name__)

# A warning sounds this long before a session's deadline, for sessions planned longer than that.
WARN_BEFORE_S = 60.0


class Alerts:
    """Pending beeps: add() is called under the controller's lock, sound() after it is released.

    So a buzzer (GPIO, a thread start) never sits between a Stop and its relay, and never
    under a lock that a Stop needs (S10).
    """

    def __init__(self, hardware: Hardware) -> None:
        self._hw = hardware
        self._pending: list[tuple[int, str]] = []
        self._lock = threading.Lock()  # held only around list operations, never across I/O

    def add(self, index: int, pattern: str) -> None:
        with self._lock:
            self._pending.append((index, pattern))

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def warn_if_due(self, index: int, session: Session, now: float) -> None:
        """Once per deadline, WARN_BEFORE_S before it, for sessions planned longer than that."""
        deadline = session.deadline
        if (
            session.planned_s > WARN_BEFORE_S
            and session.warned_for != deadline
            and deadline - WARN_BEFORE_S <= now < deadline
        ):
            session.warned_for = deadline
            self.add(index, "warn")

    def ended(self, index: int, end_reason: str) -> None:
        """A session that ended with nobody pressing Stop calls someone to the couch."""
        if end_reason in ("completed", "firmware"):
            self.add(index, "end")

    def sound_unlocked(self, lock: threading.Condition) -> bool:
        """From a thread holding `lock` once: sound what is pending with it released, then take it back.

        Returns whether anything was pending (the caller looks at its state again then).
        """
        if not self:
            return False
        lock.release()
        try:
            self.sound()
        finally:
            lock.acquire()
        return True

    def sound(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for index, pattern in pending:
            try:
                self._hw.beep(index, pattern)
            except Exception:  # a buzzer is a courtesy: it never stops a cutoff or a record
                log.exception("buzzer of lamp %d could not sound %r", index, pattern)


def next_due(session: Session) -> float:
    """When the scheduler must next look at a running session: its warning, else its deadline."""
    warn_at = session.deadline - WARN_BEFORE_S
    if session.planned_s > WARN_BEFORE_S and session.warned_for != session.deadline:
        return warn_at
    return session.deadline


class _Sounds(Protocol):
    """What `sounding` needs of the object whose method it wraps."""

    _alerts: Alerts
    _scheduler: threading.Thread | None


_O = TypeVar("_O", bound=_Sounds)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def sounding(method: Callable[Concatenate[_O, _P], _R]) -> Callable[Concatenate[_O, _P], _R]:
    """A controller method after which the buzzers it asked for sound (its lock is released by then).

    Not in the scheduler's own thread: it holds the lock around tick() and sounds them itself with
    the lock released (Alerts.sound_unlocked).
    """

    @functools.wraps(method)
    def call(self: _O, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        finally:
            if threading.current_thread() is not self._scheduler:
                self._alerts.sound()

    return call
