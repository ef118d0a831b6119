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
  and HELLO itself starts from all lamps off;
* the analog guard: every guard channel is read every GUARD_SAMPLE_MS, synced or
  not; GUARD_TRIP_READS consecutive readings outside low..high (or reads that
  raise) trip it, which cuts its lamp at once and latches until CLEAR or a reboot
  (HELLO and the other cuts leave it); while a lamp's channel is tripped, or reads
  out of range now, ARM of that lamp is refused with guard-tripped.
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
    Read = Callable[[], int]
    Guard = tuple[int, Read, int, int] | tuple[int, Read, int, int, int]

FIRMWARE_VERSION = "2.0.0"

# Why an output changed, as reported to on_change(lamp, on, why).
ARMED = "armed"
OFF = "off"
DEADLINE = "deadline"
WATCHDOG = "watchdog"
BOOT = "boot"
BAD_FRAMES = "bad-frames"
GUARD = "guard"

GUARD_SAMPLE_MS = 50  # every guard channel is read this often
GUARD_TRIP_READS = 3  # consecutive out-of-range readings that trip a channel


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

    ``guards`` is a list of ``(lamp, read, low, high)`` or ``(lamp, read, low,
    high, adc)``: ``read()`` returns the channel's raw reading (an int, e.g.
    ``ADC.read_u16``), which must stay inside ``low..high``; ``adc`` is the ADC
    input GUARDS reports (the channel's index when left out).
    """

    def __init__(
        self,
        outputs,
        ticks_ms,
        ticks_diff,
        ticks_add,
        watchdog_ms=3000,
        bad_frame_limit=3,
        on_change=None,
        guards=None,
    ):
        # type: (Outputs, Ticks, TicksArith, TicksArith, int, int, OnChange | None, list[Guard] | None) -> None
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
        table = []  # type: list[protocol.GuardRow]
        reads = []  # type: list[Read]
        for index, guard in enumerate(guards or ()):
            if len(guard) not in (4, 5):
                raise ValueError("a guard is (lamp, read, low, high[, adc]), got %r" % (guard,))
            adc = guard[4] if len(guard) == 5 else index
            table.append((guard[0], adc, guard[2], guard[3]))
            reads.append(guard[1])
        self._guards = protocol.check_guards(table, count)  # (lamp, adc, low, high) per channel
        self._reads = reads
        channels = len(reads)
        self._raw = [0] * channels  # the latest reading of each channel
        self._run = [0] * channels  # consecutive out-of-range readings
        self._trip = [protocol.TRIP_NONE] * channels  # latched side, TRIP_NONE when not tripped
        self._trip_raw = [0] * channels
        self._trip_at = [0] * channels  # tick of the trip
        self._next_sample = 0
        for lamp in range(count):
            outputs[lamp].value(0)
        for lamp in range(count):
            self._report(lamp, False, BOOT)
        if channels:
            self._sample_guards(ticks_ms())

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

    @property
    def guard_table(self):
        # type: () -> list[protocol.GuardRow]
        """The guard channels as (lamp, adc, low, high), channel order."""
        return list(self._guards)

    def tripped(self, channel):
        # type: (int) -> int
        """The channel's latched trip side (protocol.TRIP_*), TRIP_NONE when not tripped."""
        return self._trip[channel]

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
            if frame.word in protocol.READ_ONLY:
                # Read-only, so a host may look before it syncs: no seq, no watchdog fed.
                return self._read_only(frame, now)
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
        if self._reads:
            if self._ticks_diff(self._next_sample, now) <= 0:
                self._sample_guards(now)
            wait = max(1, self._ticks_diff(self._next_sample, now))
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
                # Every lamp is off now: only the guard's next sample is left to time.
                wait = max(1, self._ticks_diff(self._next_sample, now)) if self._reads else None
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

    def _sample_guards(self, now):
        # type: (int) -> None
        """Read every channel once; trip a channel out of range for GUARD_TRIP_READS readings in a row."""
        self._next_sample = self._ticks_add(now, GUARD_SAMPLE_MS)
        for channel in range(len(self._reads)):
            raw, side = self._read_channel(channel)
            self._raw[channel] = raw
            lamp = self._guards[channel][0]
            if self._trip[channel] != protocol.TRIP_NONE:
                self._set(lamp, False, GUARD)  # belt and braces: a tripped lamp stays driven off
                if self._ticks_diff(now, self._trip_at[channel]) > protocol.MAX_TRIP_AGO_MS:
                    self._trip_at[channel] = self._ticks_add(now, -protocol.MAX_TRIP_AGO_MS)  # the age saturates
                continue
            if side == protocol.TRIP_NONE:
                self._run[channel] = 0
                continue
            self._run[channel] += 1
            if self._run[channel] >= GUARD_TRIP_READS:
                self._trip_channel(channel, side, raw, now)

    def _trip_channel(self, channel, side, raw, now):
        # type: (int, int, int, int) -> None
        """Latch a channel's trip (side, reading, tick) and cut its lamp at once."""
        self._trip[channel] = side
        self._trip_raw[channel] = raw
        self._trip_at[channel] = now
        self._set(self._guards[channel][0], False, GUARD)

    def _read_channel(self, channel):
        # type: (int) -> tuple[int, int]
        """(raw, side) of one fresh reading: side TRIP_NONE in range, TRIP_LOW/TRIP_HIGH outside,
        TRIP_FAIL (raw 0) when read() raises or returns something that is not a 0..MAX_RAW int."""
        try:
            raw = self._reads[channel]()
            if not isinstance(raw, int) or not 0 <= raw <= protocol.MAX_RAW:
                return 0, protocol.TRIP_FAIL
        except Exception:
            return 0, protocol.TRIP_FAIL  # fail safe: a sensor that cannot be read is out of range
        low, high = self._guards[channel][2], self._guards[channel][3]
        if raw < low:
            return raw, protocol.TRIP_LOW
        if raw > high:
            return raw, protocol.TRIP_HIGH
        return raw, protocol.TRIP_NONE

    def guard_blocks(self, lamp):
        # type: (int) -> bool
        """True while a channel of ``lamp`` is tripped or a fresh reading of one is out of range."""
        for channel in range(len(self._reads)):
            if self._guards[channel][0] != lamp:
                continue
            if self._trip[channel] != protocol.TRIP_NONE:
                return True
            if self._read_channel(channel)[1] != protocol.TRIP_NONE:
                return True
        return False

    def clear_guard(self, lamp):
        # type: (int) -> bool
        """Unlatch ``lamp``'s trips if every channel of it reads in range now; returns whether it did."""
        mine = [channel for channel in range(len(self._reads)) if self._guards[channel][0] == lamp]
        for channel in mine:
            if self._read_channel(channel)[1] != protocol.TRIP_NONE:
                return False
        for channel in mine:
            self._trip[channel] = protocol.TRIP_NONE
            self._trip_raw[channel] = 0
            self._run[channel] = 0
        return True

    def _read_only(self, frame, now):
        # type: (protocol.Command, int) -> bytes
        if frame.word == "GUARDS":
            return protocol.encode_reply(frame.seq, True, *protocol.format_guards(self._guards))
        channels = []  # type: list[tuple[int, int, int, int]]
        for channel in range(len(self._reads)):
            trip = self._trip[channel]
            ago = 0
            if trip != protocol.TRIP_NONE:
                ago = min(protocol.MAX_TRIP_AGO_MS, max(0, self._ticks_diff(now, self._trip_at[channel])))
            channels.append((self._raw[channel], trip, self._trip_raw[channel] if trip else 0, ago))
        return protocol.encode_reply(frame.seq, True, *protocol.format_sense(channels))

    def _dispatch(self, frame, now):
        # type: (protocol.Command, int) -> bytes
        word = frame.word
        args = frame.args
        if word in protocol.READ_ONLY:
            return self._read_only(frame, now)
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
        if word == "CLEAR":
            if not self.clear_guard(lamp):
                return protocol.encode_reply(frame.seq, False, protocol.GUARD_TRIPPED)
            return protocol.encode_reply(frame.seq, True)
        # ARM
        ms = args[1]
        if not 1 <= ms <= protocol.MAX_ARM_MS:
            return protocol.encode_reply(frame.seq, False, protocol.MS_OUT_OF_RANGE)
        if self.guard_blocks(lamp):
            return protocol.encode_reply(frame.seq, False, protocol.GUARD_TRIPPED)
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
