"""Scenario helpers on the MicroPython VM: the firmware on stand-in pins and ticks, a scripted serial port, JSON out.

Runs on MicroPython only, next to the stand-in ``machine``.  Each scenario
prints JSON lines through ``emit()`` that tests/test_fw_micropython.py reads.
"""

import json
import time

import machine

try:
    from firmware_bridge import protocol
    from firmware_bridge.firmware.logic import Firmware
except ImportError:  # flat layout: the board's files at the root
    import protocol
    from logic import Firmware


def emit(**fields):
    print(json.dumps(fields))


def reply_fields(line):
    """[seq, word, [args]] of one reply line, parsed by the board's own protocol module."""
    frame = protocol.parse_reply(line)
    return [frame.seq, frame.word, list(frame.args)]


class Rig:
    """A Firmware on the stand-in tick counter, driven the way the board's main loop drives it."""

    def __init__(self, lamps=2, start=0, watchdog_ms=3000, bad_frame_limit=3, guards=()):
        machine.set_ticks(start)
        self.start = start
        self.pins = [machine.Pin(n, machine.Pin.OUT) for n in range(lamps)]
        self.changes = []
        self.fw = Firmware(
            self.pins,
            machine.ticks_ms,
            time.ticks_diff,
            time.ticks_add,
            watchdog_ms=watchdog_ms,
            bad_frame_limit=bad_frame_limit,
            on_change=self._record,
            guards=[(lamp, machine.ADC(26 + adc).read_u16, low, high, adc) for lamp, adc, low, high in guards],
        )
        self.seq = 0

    def _record(self, lamp, on, why):
        if self.pins[lamp].value() != (1 if on else 0):
            raise AssertionError("lamp %d reported %r before its pin was driven" % (lamp, on))
        self.changes.append([machine.now() - self.start, lamp, on, why])

    def elapsed(self):
        return machine.now() - self.start

    def raw(self, data):
        """Replies (as [seq, word, args]) to raw bytes."""
        return [reply_fields(line) for line in self.fw.feed(data)]

    def send(self, word, *args):
        """The single reply to a well-formed command with the next seq."""
        self.seq = protocol.next_seq(self.seq)
        replies = self.raw(protocol.encode_command(self.seq, word, *args))
        if len(replies) != 1 or replies[0][0] != self.seq:
            raise AssertionError("%s got %r" % (word, replies))
        return replies[0]

    def advance(self, ms):
        """Move time on, waking at every timer the firmware asks for."""
        target = machine.now() + ms
        while True:
            wait = self.fw.poll()
            if wait is None or machine.now() + wait > target:
                machine.advance(target - machine.now())
                self.fw.poll()
                return
            machine.advance(wait)

    def levels(self):
        return [pin.value() for pin in self.pins]

    def states(self):
        return [pin.states for pin in self.pins]


def run_trace(rig, ops):
    """Apply [["feed", hex] | ["advance", ms]] ops; returns every reply line (text) in order."""
    replies = []
    for op in ops:
        if op[0] == "feed":
            for line in rig.fw.feed(bytes.fromhex(op[1])):
                replies.append(line.decode())
        else:
            rig.advance(op[1])
    return replies


class ScriptedPort:
    """Serial input at set times (ms after creation) for main.serve(); replies kept with their time.

    While nothing is due, read() lets the stand-in clock run for the timeout the
    loop asked for, as a quiet line would.  The port closes ``tail_ms`` after
    the last input, which ends serve().
    """

    def __init__(self, events, tail_ms=0):
        self.t0 = machine.now()
        self.events = list(events)
        self.end = (self.events[-1][0] if self.events else 0) + tail_ms
        self.written = []
        self.reads = 0

    def read(self, timeout_ms):
        self.reads += 1
        if self.reads > 1000000:
            raise AssertionError("the loop spins without letting time pass")
        now = machine.now() - self.t0
        if self.events and self.events[0][0] <= now:
            return self.events.pop(0)[1]
        due = self.events[0][0] if self.events else self.end
        if not self.events and now >= self.end:
            return None
        machine.advance(min(timeout_ms, due - now))
        return b""

    def write(self, data):
        self.written.append([machine.now() - self.t0, reply_fields(data)])


class FeedLog(machine.WDT):
    """A hardware watchdog that keeps the tick of every feed."""

    def __init__(self, timeout=1000):
        super().__init__(timeout=timeout)
        self.fed_at = []

    def feed(self):
        self.feeds += 1
        self.fed_at.append(machine.now())

    def longest_gap(self):
        gaps = [b - a for a, b in zip(self.fed_at, self.fed_at[1:])]
        return max(gaps) if gaps else 0
