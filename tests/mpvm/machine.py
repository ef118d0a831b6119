"""Stand-in for MicroPython's ``machine`` on the WebAssembly VM: recording pins, a counting WDT, ticks moved by tests.

Runs on MicroPython only.  Tick arithmetic is the VM's own ``time.ticks_diff``
and ``time.ticks_add``; only the counter behind ``ticks_ms()`` is ours, so a
test decides when time passes and where the 2**30 wrap falls.
"""

import time

TICKS_MAX = time.ticks_add(0, -1)  # the VM's own wrap: 2**30 - 1, as on a Pico

pins = {}  # gpio -> the Pin last created on it
input_levels = {}  # gpio -> level an input reads; unset inputs read their pull
wdts = []  # every WDT started
adc_readings = {}  # gpio (26..28) -> what its ADC reads: an int, or "fail" to make read_u16() raise; unset 32768
_clock = [0]  # unwrapped ms; ticks_ms() wraps it like the board's counter


def ticks_ms():
    return _clock[0] & TICKS_MAX


def now():
    """Unwrapped ms since the counter was set: what tests compare deadlines against."""
    return _clock[0]


def set_ticks(start):
    _clock[0] = start


def advance(ms):
    if ms < 0:
        raise ValueError("the stand-in tick counter cannot go backwards (asked to move %d ms)" % ms)
    _clock[0] += ms


class Pin:
    """machine.Pin with value(); an output keeps every level written in ``states``."""

    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, gpio, mode=-1, pull=-1, value=None):
        self.id = gpio
        self.mode = mode
        self.pull = pull
        self.states = []
        self._value = 0
        pins[gpio] = self
        if value is not None:
            self.value(value)

    def value(self, level=None):
        if level is None:
            if self.mode == Pin.IN:
                return input_levels.get(self.id, 1 if self.pull == Pin.PULL_UP else 0)
            return self._value
        self._value = 1 if level else 0
        self.states.append(self._value)
        return None

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class ADC:
    """machine.ADC: read_u16() returns what a test put in ``adc_readings``."""

    def __init__(self, source):
        self.gpio = source

    def read_u16(self):
        value = adc_readings.get(self.gpio, 32768)
        if value == "fail":
            raise OSError("ADC read failed")
        return value


class WDT:
    """The hardware watchdog, counting feeds instead of rebooting."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.feeds = 0
        wdts.append(self)

    def feed(self):
        self.feeds += 1


def reset():
    raise SystemExit("machine.reset()")
