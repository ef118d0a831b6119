"""Pico entry point: frames from USB serial (sys.stdin) drive the relay pins through Firmware.

Copy this file to the board as /main.py (see firmware_bridge/README.md).  It
also runs on CPython when ``machine`` is the mpshim module, which is how the
tests exercise this loop without a board.
"""

import sys
import select

import machine

try:
    from time import ticks_ms, ticks_diff, ticks_add
except ImportError:     # CPython: the same arithmetic from the shim
    from firmware_bridge.firmware.mpshim import ticks_ms, ticks_diff, ticks_add

from firmware_bridge.firmware.logic import Firmware

# Board wiring: one GPIO per lamp, lamp 0 first.
RELAY_PINS = (2, 3, 4, 5)
ACTIVE_HIGH = True          # False for relay boards that switch on a low input
WATCHDOG_MS = 3000          # no valid frame for this long => every lamp off
MAINTENANCE_PIN = 22        # jumper to GND at power-up: outputs stay off, REPL stays usable
HARDWARE_WDT_MS = 1000      # a hung loop reboots the chip, and boot means all off
MAX_WAIT_MS = 50            # the loop wakes at least this often to feed the hardware watchdog
READ_CHUNK = 64             # bytes handled per wake-up before timers are checked again


class Relay:
    """A relay output with its polarity hidden: value(1) means lamp powered."""

    def __init__(self, gpio, active_high):
        self._active_high = active_high
        # The pin is created at its "off" level so it never glitches on at boot.
        self._pin = machine.Pin(gpio, machine.Pin.OUT, value=0 if active_high else 1)

    def value(self, on):
        level = 1 if on else 0
        self._pin.value(level if self._active_high else 1 - level)


def _maintenance_requested():
    try:
        pin = machine.Pin(MAINTENANCE_PIN, machine.Pin.IN, machine.Pin.PULL_UP)
    except (AttributeError, TypeError):   # the CPython shim has no pull-ups
        return False
    return pin.value() == 0


def _log_change(lamp, on, why):
    # Nothing to do on the board: the host learns state through STATUS.  The
    # hook is where a status LED would go.
    pass


def main():
    outputs = [Relay(gpio, ACTIVE_HIGH) for gpio in RELAY_PINS]
    firmware = Firmware(outputs, ticks_ms, ticks_diff, ticks_add,
                        watchdog_ms=WATCHDOG_MS, on_change=_log_change)
    if _maintenance_requested():
        return
    try:
        import micropython
        micropython.kbd_intr(-1)    # a 0x03 in line noise must not stop the firmware
    except ImportError:
        pass
    wdt = machine.WDT(timeout=HARDWARE_WDT_MS)
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    stdout = getattr(sys.stdout, "buffer", sys.stdout)
    poller = select.poll()
    poller.register(sys.stdin, select.POLLIN)
    try:
        while True:
            wdt.feed()
            wait = firmware.poll()
            timeout = MAX_WAIT_MS if wait is None else max(0, min(wait, MAX_WAIT_MS))
            received = b""
            closed = False
            while len(received) < READ_CHUNK and poller.poll(timeout if not received else 0):
                byte = stdin.read(1)
                if not byte:        # stdin closed (only on the CPython harness)
                    closed = True
                    break
                if isinstance(byte, str):
                    byte = byte.encode()
                received += byte
            for reply in firmware.feed(received):
                stdout.write(reply)
            if received and hasattr(stdout, "flush"):
                stdout.flush()
            if closed:
                raise SystemExit("stdin closed")
    finally:
        # Whatever ended the loop, no lamp stays on while the board restarts.
        firmware.shutdown()
        for relay in outputs:
            relay.value(0)


main()
