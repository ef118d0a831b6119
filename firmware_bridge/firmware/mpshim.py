"""CPython stand-ins for MicroPython's ``machine`` and ``time.ticks_*`` so the firmware runs off the board.

Tick arithmetic follows MicroPython exactly: ticks wrap at TICKS_PERIOD
(2**30 ms, about 12.4 days) and ticks_diff() returns the signed difference in
[-TICKS_PERIOD/2, TICKS_PERIOD/2).  Importing this module as ``machine``
(sys.modules["machine"] = mpshim) lets the board's main.py run on CPython.
"""

import time

TICKS_PERIOD = 1 << 30
TICKS_MAX = TICKS_PERIOD - 1
TICKS_HALFPERIOD = TICKS_PERIOD // 2


def ticks_add(ticks, delta):
    # type: (int, int) -> int
    """``ticks`` moved by ``delta`` ms (either sign), wrapped into the tick range."""
    return (ticks + delta) & TICKS_MAX


def ticks_diff(ticks1, ticks2):
    # type: (int, int) -> int
    """Signed ``ticks1 - ticks2`` across a wrap, in [-TICKS_PERIOD/2, TICKS_PERIOD/2)."""
    return ((ticks1 - ticks2 + TICKS_HALFPERIOD) & TICKS_MAX) - TICKS_HALFPERIOD


def ticks_ms():
    # type: () -> int
    """Milliseconds from CPython's monotonic clock, wrapped like the board's counter."""
    return int(time.monotonic() * 1000) & TICKS_MAX


class FakeTicks:
    """A tick counter that moves only when told to, never backwards; for tests.

    ``start`` is the first reading; start it just below TICKS_PERIOD to cross a
    wrap.  ``now`` counts unwrapped milliseconds since creation, which is what
    tests compare deadlines against.
    """

    def __init__(self, start=0):
        # type: (int) -> None
        self._start = start
        self.now = 0

    def ticks_ms(self):
        # type: () -> int
        return (self._start + self.now) & TICKS_MAX

    def advance(self, ms):
        # type: (int) -> None
        if ms < 0:
            raise ValueError("a fake tick clock cannot go backwards (asked to move %d ms)" % ms)
        self.now += ms


class Pin:
    """Output-only stand-in for machine.Pin that keeps every level written in ``states``."""

    IN = 0
    OUT = 1

    def __init__(self, pin_id, mode=OUT, value=None):
        # type: (int, int, int | None) -> None
        self.id = pin_id
        self.mode = mode
        self.states = []  # type: list[int]
        self._value = 0
        if value is not None:
            self.value(value)

    def value(self, level=None):
        # type: (int | None) -> int | None
        if level is None:
            return self._value
        self._value = 1 if level else 0
        self.states.append(self._value)
        return None

    def on(self):
        # type: () -> None
        self.value(1)

    def off(self):
        # type: () -> None
        self.value(0)


adc_readings = {}  # type: dict[int, int | BaseException]
# GPIO (26..28) -> what its ADC reads: an int, or an exception read_u16() raises; unset reads 32768.


class ADC:
    """Stand-in for machine.ADC: read_u16() returns what a test put in ``adc_readings``."""

    def __init__(self, source):
        # type: (int) -> None
        self.gpio = source

    def read_u16(self):
        # type: () -> int
        value = adc_readings.get(self.gpio, 32768)
        if isinstance(value, BaseException):
            raise value
        return value


class WDT:
    """No-op hardware watchdog: on CPython a hung process is the host's problem."""

    def __init__(self, id=0, timeout=5000):
        # type: (int, int) -> None
        self.timeout = timeout

    def feed(self):
        # type: () -> None
        pass
