"""Runs `lampctl serve` with two test-only instruments; the product knows nothing of either.

$FAULTS_PIN_TRACE (a path): every mock output change is appended, with its time.monotonic(),
to a shared memory map of that file. A memory write costs no system call and no lock held
across I/O, so it cannot slow a Stop, and the kernel keeps the pages when the process dies
by kill -9: the oracle reads the relay history of a process that had no time to dump it.
$FAULTS_WALL_FILE (a path): a fake wall clock. A thread reads the offset in seconds from the
file every 20 ms into memory; the service's wall time is the real one plus that offset,
so a test steps the clock (forwards or back) as NTP would, without touching the host's.
"""

import mmap
import os
import struct
import sys
import threading
from datetime import datetime, timedelta

HEADER = struct.Struct("<Q")  # records written so far
RECORD = struct.Struct("<dii")  # monotonic time, pin number, new state
CAPACITY = 1 << 16


class PinTrace:
    def __init__(self, path: str):
        size = HEADER.size + CAPACITY * RECORD.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, size)
        self.map = mmap.mmap(fd, size)
        os.close(fd)
        self.lock = threading.Lock()
        self.count = HEADER.unpack_from(self.map, 0)[0]

    def add(self, t: float, pin: int, state: bool) -> None:
        with self.lock:
            if self.count >= CAPACITY:
                return
            RECORD.pack_into(self.map, HEADER.size + self.count * RECORD.size, t, pin, int(state))
            self.count += 1
            HEADER.pack_into(self.map, 0, self.count)  # after the record: a reader never sees half of one


def read_trace(path) -> list[tuple[float, int, bool]]:
    """Every (time, pin, state) a harnessed process recorded, in order."""
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < HEADER.size:
        return []
    count = HEADER.unpack_from(data, 0)[0]
    return [
        (t, pin, bool(state))
        for t, pin, state in (RECORD.unpack_from(data, HEADER.size + i * RECORD.size) for i in range(count))
    ]


def install_trace(path: str) -> None:
    from gpiozero.pins.mock import MockPin

    trace = PinTrace(path)
    change = MockPin._change_state

    def traced(self, value):
        changed = change(self, value)
        if changed:
            trace.add(self._last_change, int(self.info.name.replace("GPIO", "")), bool(value))
        return changed

    MockPin._change_state = traced


class _Offset:
    seconds = 0.0


def install_wall(path: str) -> None:
    import lampctl.core.clock as clock
    import lampctl.storage.accounts as accounts
    import lampctl.storage.store as store

    def poll():
        while True:
            try:
                with open(path) as fh:
                    _Offset.seconds = float(fh.read().strip() or 0)
            except (OSError, ValueError):
                pass
            threading.Event().wait(0.02)

    threading.Thread(target=poll, name="fake-wall", daemon=True).start()

    class SteppedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(seconds=_Offset.seconds)

    real_wall = clock.MonotonicClock.wall
    clock.MonotonicClock.wall = lambda self: real_wall(self) + timedelta(seconds=_Offset.seconds)
    store.datetime = SteppedDatetime
    accounts.datetime = SteppedDatetime


def main() -> int:
    if os.environ.get("FAULTS_PIN_TRACE"):
        install_trace(os.environ["FAULTS_PIN_TRACE"])
    if os.environ.get("FAULTS_WALL_FILE"):
        install_wall(os.environ["FAULTS_WALL_FILE"])
    from lampctl.cli import main as lampctl_main

    return lampctl_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
