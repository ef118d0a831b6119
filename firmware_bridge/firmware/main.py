"""Pico entry point: frames from USB serial (sys.stdin) drive the relay pins through Firmware.

Copy this file to the board as /main.py (see firmware_bridge/README.md).  It
also runs on CPython when ``machine`` is the mpshim module, and on MicroPython's
WebAssembly port with a stand-in ``machine``, which is how the tests exercise
this loop without a board.
"""

import select
import sys

import machine

try:
    from time import ticks_add, ticks_diff, ticks_ms  # type: ignore[attr-defined]  # MicroPython's time
except ImportError:  # CPython: the same arithmetic from the shim
    from firmware_bridge.firmware.mpshim import ticks_add, ticks_diff, ticks_ms

try:
    from firmware_bridge.firmware.logic import Firmware
except ImportError:  # flat layout on a board: logic.py and protocol.py next to main.py
    from logic import Firmware  # type: ignore[no-redef, import-not-found]  # the board's flat layout

# Board wiring: one GPIO per lamp, lamp 0 first.
RELAY_PINS = (2, 3, 4, 5)
ACTIVE_HIGH = True  # False for relay boards that switch on a low input
# Analog guard channels as (lamp, adc, low, high): ADC input 0..2 is GP26..GP28, and its
# ADC.read_u16() reading must stay inside low..high or the lamp is cut (see logic.py).
GUARDS = ()
WATCHDOG_MS = 3000  # no valid frame for this long => every lamp off
MAINTENANCE_PIN = 22  # jumper to GND at power-up: outputs stay off, REPL stays usable
HARDWARE_WDT_MS = 1000  # a hung loop reboots the chip, and boot means all off
MAX_WAIT_MS = 50  # the loop wakes at least this often to feed the hardware watchdog
READ_CHUNK = 64  # bytes handled per wake-up before timers are checked again


class Relay:
    """A relay output with its polarity hidden: value(1) means lamp powered."""

    def __init__(self, gpio, active_high):
        self._active_high = active_high
        # The pin is created at its "off" level so it never glitches on at boot.
        self._pin = machine.Pin(gpio, machine.Pin.OUT, value=0 if active_high else 1)

    def value(self, on):
        level = 1 if on else 0
        self._pin.value(level if self._active_high else 1 - level)


class UsbPort:
    """USB serial as the board sees it: bytes from sys.stdin, replies to sys.stdout."""

    def __init__(self):
        self._in = getattr(sys.stdin, "buffer", sys.stdin)
        self._out = getattr(sys.stdout, "buffer", sys.stdout)
        self._poller = select.poll()
        self._poller.register(sys.stdin, select.POLLIN)
        self._closed = False

    def read(self, timeout_ms):
        """Up to READ_CHUNK bytes, waiting at most ``timeout_ms`` for the first; b"" on
        silence, None once stdin has closed (only on the test harnesses: USB serial
        on a board never ends)."""
        if self._closed:
            return None
        received = bytearray()
        while len(received) < READ_CHUNK and self._poller.poll(0 if received else timeout_ms):
            byte = self._in.read(1)
            if not byte:
                self._closed = True
                break
            if isinstance(byte, str):
                byte = byte.encode()
            received.extend(byte)
        if self._closed and not received:
            return None
        return bytes(received)

    def write(self, data):
        self._out.write(data)
        if hasattr(self._out, "flush"):
            self._out.flush()


def _maintenance_requested():
    try:
        pin = machine.Pin(MAINTENANCE_PIN, machine.Pin.IN, machine.Pin.PULL_UP)
    except (AttributeError, TypeError):  # the CPython shim has no pull-ups
        return False
    return pin.value() == 0


def _log_change(lamp, on, why):
    # Nothing to do on the board: the host learns state through STATUS.  The
    # hook is where a status LED would go.
    pass


def guard_channels():
    """GUARDS as the Firmware takes them: (lamp, read, low, high, adc), read is that ADC's read_u16."""
    return [(lamp, machine.ADC(26 + adc).read_u16, low, high, adc) for lamp, adc, low, high in GUARDS]


def build(ticks=ticks_ms):
    """The relays (all off) and the Firmware driving them; ``ticks`` is for tests."""
    outputs = [Relay(gpio, ACTIVE_HIGH) for gpio in RELAY_PINS]
    firmware = Firmware(
        outputs,
        ticks,
        ticks_diff,
        ticks_add,
        watchdog_ms=WATCHDOG_MS,
        on_change=_log_change,
        guards=guard_channels(),
    )
    return firmware, outputs


def _exchange(firmware, port, timeout_ms):
    """One read and its replies; False once the port has closed."""
    try:
        received = port.read(timeout_ms)
        if received is None:
            return False
        replies = firmware.feed(received) if received else []
    except Exception:
        # Firmware.feed already turns a failing frame into a bad frame; this
        # is the layer under it (the port, memory).  A bad frame, not a reboot.
        replies = [firmware.count_failed_frame()]
    try:
        for reply in replies:
            port.write(reply)
    except Exception:
        # A lost reply costs the host a timeout and a HELLO (all lamps off);
        # the firmware's own timers stay in charge either way.
        pass
    return True


def serve(firmware, outputs, port, wdt):
    """The main loop: timers, then frames, until the port closes; every relay off when it ends.

    Only a loop that stops coming round here (stuck, or killed by an exception
    outside any frame) lets the hardware watchdog reboot the chip.
    """
    try:
        while True:
            wdt.feed()
            wait = firmware.poll()
            timeout = MAX_WAIT_MS if wait is None else max(0, min(wait, MAX_WAIT_MS))
            if not _exchange(firmware, port, timeout):
                return
    finally:
        # Pins first, straight: whatever ended the loop, no lamp stays on.
        for relay in outputs:
            relay.value(0)
        firmware.shutdown()


def main():
    firmware, outputs = build()
    if _maintenance_requested():
        return
    try:
        import micropython

        micropython.kbd_intr(-1)  # a 0x03 in line noise must not stop the firmware
    except ImportError:
        pass
    serve(firmware, outputs, UsbPort(), machine.WDT(timeout=HARDWARE_WDT_MS))
    raise SystemExit("stdin closed")


if __name__ == "__main__":  # the board runs main.py as __main__
    main()
