"""Lamp firmware state machine: frames in, replies and output changes out, timers on injected ticks.

Runs unchanged on the Pico (MicroPython) and on CPython (tests, simulator), so
it keeps to the shared subset: no dataclasses, no typing at run time, no
annotations (types are in ``# type:`` comments, for mypy).

Safety rules it enforces on its own, whatever the host does:

* every output is off at boot;
* ARM turns a lamp on for at most ``ms`` (1..MAX_ARM_MS), and a lamp never
  stays on longer than MAX_ARM_MS in one go, re-ARMs included;
* when no valid frame arrives for ``watchdog_ms``, every lamp goes off;
* after ``bad_frame_limit`` consecutive bad frames, every lamp goes off;
* after either cut, nothing but HELLO is obeyed until the host says HELLO again,
  and HELLO itself starts from all lamps off.
"""

try:
    from firmware_bridge import protocol
except ImportError:  # flat layout on a board: protocol.py next to this file
    import protocol  # type: ignore[no-redef, import-not-found]  # the board's flat layout

# True for type checkers only (mypy reads a module's TYPE_CHECKING as true): the board never imports typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Protocol

    class Output(Protocol):
        """machine.Pin, a polarity wrapper, or a simulated relay."""

        def value(self, level):
            # type: (int) -> object
            pass

    Outputs = Sequence[Output]
    Ticks = Callable[[], int]
    TicksArith = Callable[[int, int], int]
    OnChange = Callable[[int, bool, str], object]

FIRMWARE_VERSION = "1.0.0"

# Why an output changed, as reported to on_change(lamp, on, why).
ARMED = "armed"
OFF = "off"
DEADLINE = "deadline"
WATCHDOG = "watchdog"
BOOT = "boot"
BAD_FRAMES = "bad-frames"


class Firmware:
    """The firmware's whole behaviour, independent of the board it runs on.

    ``outputs`` are objects with ``value(level)`` (machine.Pin or a polarity
    wrapper), one per lamp, lamp 0 first.  ``ticks_ms``, ``ticks_diff`` and
    ``ticks_add`` have MicroPython semantics.  ``on_change(lamp, on, why)`` is
    called after the outputs have been driven.

    The caller feeds received bytes to ``feed()`` (which returns reply lines to
    send) and calls ``poll()`` no later than the number of ms it returned;
    ``poll()`` must run at least once per TICKS_PERIOD/2 for tick arithmetic
    to hold, which any main loop does many times a second.
    """

    def __init__(self, outputs, ticks_ms, ticks_diff, ticks_add, watchdog_ms=3000, bad_frame_limit=3, on_change=None):
        # type: (Outputs, Ticks, TicksArith, TicksArith, int, int, OnChange | None) -> None
        outputs = list(outputs)
        if not 1 <= len(outputs) <= protocol.MAX_LAMPS:
            raise ValueError("the firmware drives 1..%d lamps, got %d outputs" % (protocol.MAX_LAMPS, len(outputs)))
        if watchdog_ms < 1:
            raise ValueError("watchdog_ms must be a positive number of milliseconds, got %r" % (watchdog_ms,))
        if bad_frame_limit < 1:
            raise ValueError("bad_frame_limit must be at least 1, got %r" % (bad_frame_limit,))
        self._outputs = outputs
        self._ticks_ms = ticks_ms
        self._ticks_diff = ticks_diff
        self._ticks_add = ticks_add
        self.watchdog_ms = int(watchdog_ms)
        self.bad_frame_limit = bad_frame_limit
        self._on_change = on_change
        count = len(outputs)
        self._on = [False] * count
        self._deadline = [0] * count
        self._on_since = [0] * count
        self._synced = False  # a HELLO has been accepted since boot / the last cut
        self._last_seq = 0
        self._last_valid = 0  # tick of the last valid frame, meaningful while synced
        self._bad_run = 0  # consecutive bad frames
        self._splitter = protocol.LineSplitter()
        for lamp in range(count):
            outputs[lamp].value(0)
        for lamp in range(count):
            self._report(lamp, False, BOOT)

    # -- state readers (tests, simulator) ---------------------------------

    @property
    def lamp_count(self):
        # type: () -> int
        return len(self._outputs)

    @property
    def synced(self):
        # type: () -> bool
        return self._synced

    def is_on(self, lamp):
        # type: (int) -> bool
        return self._on[lamp]

    def remaining_ms(self, lamp):
        # type: (int) -> int
        """ms until ``lamp``'s deadline, 0 when off."""
        if not self._on[lamp]:
            return 0
        return max(0, self._ticks_diff(self._deadline[lamp], self._ticks_ms()))

    # -- inputs -----------------------------------------------------------

    def feed(self, data):
        # type: (bytes) -> list[bytes]
        """Handle received bytes; returns the list of reply lines (bytes) to send.

        A frame whose handling raises counts as a bad frame (``ERR internal``)
        and the next frame is handled as usual: on the board an exception that
        left this loop would cut every lamp and reboot the chip, so one odd
        frame must never cost more than one bad-frame count.
        """
        try:
            items = self._splitter.feed(data)
        except Exception:
            self._splitter.reset()  # its state is unknown after a failure
            return [self.count_failed_frame()]
        replies = []
        for item in items:
            # A frame that fails half-way must neither feed the watchdog nor
            # break a run of bad frames, even if it got as far as being accepted.
            mark = (self._bad_run, self._last_valid)
            try:
                replies.append(self.handle_line(item))
            except Exception:
                self._bad_run, self._last_valid = mark
                replies.append(self.count_failed_frame())
        return replies

    def count_failed_frame(self):
        # type: () -> bytes
        """Count a frame the firmware failed to handle as a bad frame; returns its ERR reply."""
        return self._bad_frame(protocol.INTERNAL, 0)

    def handle_line(self, line):
        # type: (bytes | protocol.FrameError) -> bytes
        """Handle one complete line (or a FrameError from the splitter); returns one reply line."""
        # Timers first: a deadline or watchdog that expired before this frame
        # arrived must not be rescued by it.
        now = self._ticks_ms()
        self._expire(now)
        try:
            if isinstance(line, protocol.FrameError):
                raise line
            frame = protocol.parse_command(line)
        except protocol.FrameError as err:
            return self._bad_frame(err.reason, err.seq)
        if frame.word == "HELLO":
            # A new host session starts from nothing it did not arm itself.
            self._cut_all(OFF)
            self._synced = True
            self._accept(frame.seq, now)
            return protocol.encode_reply(
                frame.seq,
                True,
                protocol.PROTOCOL_VERSION,
                FIRMWARE_VERSION,
                len(self._outputs),
                self.watchdog_ms,
                protocol.MAX_ARM_MS,
            )
        if not self._synced:
            self._bad_run = 0
            return protocol.encode_reply(frame.seq, False, protocol.NEED_HELLO)
        if not protocol.seq_is_newer(frame.seq, self._last_seq):
            return self._bad_frame(protocol.REPLAY, frame.seq)
        self._accept(frame.seq, now)
        return self._dispatch(frame, now)

    def poll(self):
        # type: () -> int | None
        """Apply expired deadlines and the watchdog; returns ms until the next timer, or None."""
        return self._expire(self._ticks_ms())

    def _expire(self, now):
        # type: (int) -> int | None
        wait = None  # type: int | None
        for lamp in range(len(self._outputs)):
            if self._on[lamp]:
                left = self._ticks_diff(self._deadline[lamp], now)
                if left <= 0:
                    self._set(lamp, False, DEADLINE)
                elif wait is None or left < wait:
                    wait = left
        if self._synced:
            left = self.watchdog_ms - self._ticks_diff(now, self._last_valid)
            if left <= 0:
                self._synced = False
                self._cut_all(WATCHDOG)
                wait = None  # every lamp is off now, nothing left to time
            elif wait is None or left < wait:
                wait = left
        return wait

    def shutdown(self):
        # type: () -> None
        """Every lamp off (why "off"), e.g. when the simulator is asked to exit."""
        self._synced = False
        self._cut_all(OFF)

    # -- internals --------------------------------------------------------

    def _accept(self, seq, now):
        # type: (int, int) -> None
        self._last_seq = seq
        self._last_valid = now
        self._bad_run = 0

    def _dispatch(self, frame, now):
        # type: (protocol.Command, int) -> bytes
        word = frame.word
        args = frame.args
        if word == "PING":
            return protocol.encode_reply(frame.seq, True)
        if word == "STATUS":
            lamps = []  # type: list[tuple[bool, int]]
            for lamp in range(len(self._outputs)):
                left = self._ticks_diff(self._deadline[lamp], now) if self._on[lamp] else 0
                lamps.append((self._on[lamp], left))
            return protocol.encode_reply(frame.seq, True, *protocol.format_status(lamps))
        if word == "OFFALL":
            self._cut_all(OFF)
            return protocol.encode_reply(frame.seq, True)
        lamp = args[0]
        if lamp >= len(self._outputs):
            return protocol.encode_reply(frame.seq, False, protocol.NO_SUCH_LAMP)
        if word == "OFF":
            self._set(lamp, False, OFF)
            return protocol.encode_reply(frame.seq, True)
        # ARM
        ms = args[1]
        if not 1 <= ms <= protocol.MAX_ARM_MS:
            return protocol.encode_reply(frame.seq, False, protocol.MS_OUT_OF_RANGE)
        if self._on[lamp]:
            # Re-arming moves the deadline but not the start of this on-period.
            if self._ticks_diff(now, self._on_since[lamp]) + ms > protocol.MAX_ARM_MS:
                return protocol.encode_reply(frame.seq, False, protocol.OVER_CEILING)
            self._deadline[lamp] = self._ticks_add(now, ms)
        else:
            self._on_since[lamp] = now
            self._deadline[lamp] = self._ticks_add(now, ms)
            self._set(lamp, True, ARMED)
        return protocol.encode_reply(frame.seq, True)

    def _bad_frame(self, reason, seq):
        # type: (str, int) -> bytes
        self._bad_run += 1
        if self._bad_run >= self.bad_frame_limit:
            self._bad_run = 0
            self._synced = False
            self._cut_all(BAD_FRAMES)
        return protocol.encode_reply(seq, False, reason)

    def _set(self, lamp, on, why):
        # type: (int, bool, str) -> None
        self._outputs[lamp].value(1 if on else 0)
        if self._on[lamp] != on:
            self._on[lamp] = on
            self._report(lamp, on, why)

    def _cut_all(self, why):
        # type: (str) -> None
        # Drive every output before reporting any, so a failing report cannot
        # leave a lamp on.
        changed = []
        for lamp in range(len(self._outputs)):
            self._outputs[lamp].value(0)
            if self._on[lamp]:
                self._on[lamp] = False
                changed.append(lamp)
        for lamp in changed:
            self._report(lamp, False, why)

    def _report(self, lamp, on, why):
        # type: (int, bool, str) -> None
        if self._on_change is not None:
            self._on_change(lamp, on, why)
