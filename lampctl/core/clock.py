"""Clocks: the real monotonic/wall clock, and a fake one tests advance by hand."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta


class MonotonicClock:
    """Deadlines on time.monotonic (immune to NTP steps); wall time only for records."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        """Wait on a held condition until notified or until timeout seconds pass."""
        condition.wait(timeout)


class FakeClock:
    """A clock that moves only when told and never backwards (after trio's MockClock)."""

    def __init__(self, start: float = 1000.0, wall: datetime | None = None):
        self._now = start
        self._start = start
        self._wall0 = wall or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def wall(self) -> datetime:
        with self._lock:
            return self._wall0 + timedelta(seconds=self._now - self._start)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += seconds

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        # Fake time does not pass while waiting; yield briefly so a test driving
        # a real scheduler thread with advance() sees it react.
        condition.wait(0.001)
