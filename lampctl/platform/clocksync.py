"""Whether the system clock is synchronised (a Pi has no battery clock and may boot with a wrong time)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

# systemd-timesyncd touches this file once it has synchronised the clock since boot.
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
STA_UNSYNC = 0x0040
TIME_ERROR = 5
# timedatectl's NTPSynchronized uses the same kernel rule: STA_UNSYNC clear and the
# estimated maximum error under 16 s (timex.maxerror is in microseconds).
MAX_ERROR_US = 16_000_000


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only the leading fields are read, the rest is padding
    # large enough for every Linux ABI (the kernel writes the whole struct).
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


def kernel_clock_state() -> tuple[int, int, int] | None:
    """(adjtimex return value, status flags, maxerror in us) read without changing anything; None if unknown."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex()
        timex.modes = 0  # read only: needs no privilege
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None  # e.g. a seccomp filter (systemd's ProtectClock=) denies adjtimex
    return state, timex.status, timex.maxerror


def clock_synchronised(
    flag: Path = TIMESYNC_FLAG, read_kernel: Callable[[], tuple[int, int, int] | None] = kernel_clock_state
) -> bool | None:
    """True when the clock is synchronised, False when it is known not to be, None when it cannot be told.

    Sessions are timed on the monotonic clock whatever this says; it only tells whether the
    wall-clock times written to the log can be trusted.
    """
    if os.path.exists(flag):
        return True
    state = read_kernel()
    if state is None:
        return None
    result, status, maxerror = state
    if result == TIME_ERROR or status & STA_UNSYNC:
        return False
    return maxerror < MAX_ERROR_US


def describe(synchronised: bool | None) -> str:
    """One sentence for health pages and `lampctl doctor`."""
    if synchronised:
        return "The system clock is synchronised."
    if synchronised is None:
        return "Cannot tell whether the system clock is synchronised (no timesync flag, adjtimex unavailable)."
    return (
        "The system clock is not synchronised: log times may be wrong until it is "
        "(check the network and `timedatectl timesync-status`); sessions stay timed correctly."
    )


class ClockProbe:
    """clock_synchronised(), asked at most once per `every_s`: cheap enough for a health request.

    The probe is a stat of a tmpfs flag and a read-only adjtimex: neither waits for a disk.
    """

    def __init__(
        self,
        every_s: float = 30.0,
        probe: Callable[[], bool | None] = clock_synchronised,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._every_s, self._probe, self._monotonic = every_s, probe, monotonic
        self._lock = threading.Lock()
        self._value: bool | None = None
        self._at: float | None = None

    def __call__(self) -> bool | None:
        now = self._monotonic()
        with self._lock:
            if self._at is None or now - self._at >= self._every_s:
                self._value, self._at = self._probe(), now
            return self._value
