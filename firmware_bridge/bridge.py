"""Host client of the lamp firmware: FirmwareLink over any pyserial URL, with heartbeats and reconnects.

One background thread owns the port: it connects, says HELLO, checks what the
firmware reports (its guard table included: GUARDS), reads every reply, sends a
heartbeat every ``heartbeat_s`` (PING, or SENSE when guards are configured, whose
readings it keeps in ``readings`` and hands to ``on_guard``) and
drops and reopens the link (exponential backoff, 0.1 s doubling to 2 s) when
the port fails or the firmware goes quiet for ``watchdog_s / 2``.  Callers'
threads send commands themselves and wait for the reply matching their seq.

A reconnect always turns every lamp off: HELLO resets the firmware.  So a
caller must treat "link down" as "whatever was on is off now or soon".
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import serial

from firmware_bridge import protocol
from firmware_bridge.errors import REFUSALS, FirmwareError, FirmwareTimeout, LinkFailure, sentence

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
READ_TIMEOUT_S = 0.02  # how long the link thread blocks in read() before checking its timers
JOIN_TIMEOUT_S = 5.0
WRITE_GAPS_KEPT = 64  # recent host silences longer than the watchdog (each one cut every lamp)


class Port(Protocol):
    """What the link uses of a pyserial port (a test hands in its own)."""

    write_timeout: float | None

    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1, /) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def close(self) -> None: ...


class Waiter:
    """One caller waiting for the reply to its seq."""

    __slots__ = ("word", "event", "reply", "error")

    def __init__(self, word: str) -> None:
        self.word = word
        self.event = threading.Event()
        self.reply: protocol.Reply | None = None
        self.error: FirmwareError | None = None

    def outcome(self) -> protocol.Reply:
        """Once `event` is set: the reply, or what ended the wait (the link went down) raised."""
        if self.error is not None:
            raise self.error
        if self.reply is None:
            raise RuntimeError("the wait for %s ended with neither a reply nor an error" % self.word)
        return self.reply


def check_hello(
    args: tuple[str, ...], url: str, lamp_count: int, watchdog_s: float, heartbeat_s: float
) -> protocol.Hello:
    """The fields of a HELLO reply, or LinkFailure when this host must not use that firmware."""
    try:
        info = protocol.parse_hello(args)
    except protocol.FrameError:
        raise LinkFailure(
            "The firmware on %s sent a HELLO reply that could not be read: %r." % (url, " ".join(args))
        ) from None
    if info["protocol"] != protocol.PROTOCOL_VERSION:
        raise LinkFailure(
            "The firmware on %s speaks protocol %d; this host speaks %d."
            % (url, info["protocol"], protocol.PROTOCOL_VERSION)
        )
    if info["lamps"] < lamp_count:
        raise LinkFailure(
            "The firmware on %s drives %d lamps but %d are configured." % (url, info["lamps"], lamp_count)
        )
    firmware_s = info["watchdog_ms"] / 1000
    if firmware_s > watchdog_s + 0.0005:
        raise LinkFailure(
            "The firmware on %s cuts after %g s of silence, longer than the "
            "configured watchdog of %g s." % (url, firmware_s, watchdog_s)
        )
    if firmware_s <= 2 * heartbeat_s:
        raise LinkFailure(
            "The firmware on %s cuts after %g s of silence, too short for "
            "heartbeats every %g s." % (url, firmware_s, heartbeat_s)
        )
    return info


def _channel(row: protocol.GuardRow) -> str:
    lamp, adc, low, high = row
    return "lamp %d on ADC %d between %d and %d" % (lamp, adc, low, high)


def describe_guards(table: Sequence[protocol.GuardRow]) -> str:
    """A guard table in words: 'lamp 0 on ADC 0 between 9000 and 52000, ...' or 'no channel'."""
    return ", ".join(_channel(row) for row in table) or "no channel"


def check_guard_table(args: tuple[str, ...], url: str, expected: Sequence[protocol.GuardRow]) -> None:
    """LinkFailure (one sentence) unless a GUARDS reply lists exactly the expected channels, in order."""
    try:
        table = protocol.parse_guards(args)
    except protocol.FrameError:
        raise LinkFailure(
            "The firmware on %s sent a GUARDS reply that could not be read: %r." % (url, " ".join(args))
        ) from None
    if table != list(expected):
        raise LinkFailure(
            "The firmware on %s guards %s but the config asks for %s: run lampctl firmware flash."
            % (url, describe_guards(table), describe_guards(expected))
        )


class FirmwareLink:
    """Commands, heartbeats and link state for one firmware on one serial URL."""

    def __init__(
        self,
        url: str,
        lamp_count: int,
        *,
        watchdog_s: float = 3.0,
        heartbeat_s: float = 1.0,
        reply_timeout_s: float = 0.5,
        on_link_change: Callable[[bool, str], None] | None = None,
        serial_for_url: Callable[..., Port] = serial.serial_for_url,
        clock: Callable[[], float] = time.monotonic,
        guards: Sequence[protocol.GuardRow] = (),
        on_guard: Callable[[list[protocol.Sense]], None] | None = None,
    ) -> None:
        if not isinstance(lamp_count, int) or not 1 <= lamp_count <= protocol.MAX_LAMPS:
            raise ValueError("lamp_count must be 1..%d, got %r" % (protocol.MAX_LAMPS, lamp_count))
        # The guard channels (lamp, adc, low, high) the firmware must have been flashed with.
        self.guards = protocol.check_guards(list(guards), lamp_count)
        if not 0 < heartbeat_s < watchdog_s / 2:
            raise ValueError(
                "heartbeat_s (%r) must be positive and under half of watchdog_s (%r) "
                "so one lost heartbeat cannot trip the firmware's watchdog" % (heartbeat_s, watchdog_s)
            )
        if reply_timeout_s <= 0:
            raise ValueError("reply_timeout_s must be positive, got %r" % (reply_timeout_s,))
        self.url = url
        self.lamp_count = lamp_count
        self.watchdog_s = watchdog_s
        self.heartbeat_s = heartbeat_s
        self.reply_timeout_s = reply_timeout_s
        # Quiet for this long means the firmware may be about to cut (or has
        # cut) the lamps: better to say "down" before it does.
        self.silence_limit_s = watchdog_s / 2
        # on_link_change(up, reason): its owner may also set it after construction, before start().
        self.on_link_change = on_link_change
        self._serial_for_url = serial_for_url
        self._clock = clock
        # Held while choosing a seq and writing it, so seqs reach the wire in order.
        self._send_lock = threading.Lock()
        # Guards the fields below; never held while writing or calling back.
        self._state_lock = threading.Lock()
        self._state_changed = threading.Condition(self._state_lock)
        self._port: Port | None = None  # the port, only while the link is up
        self._seq = 0
        self._pending: dict[int, Waiter] = {}
        self._up = False
        self._reason = "The firmware link has not been started."
        self._reported_up: bool | None = None
        self._write_failure: str | None = None
        self.info: protocol.Hello | None = None  # fields of the last HELLO reply
        # When the host last wrote a frame (monotonic), and (start, end) of every write
        # gap longer than watchdog_s: the firmware surely cut every lamp at start + watchdog_s.
        # Read without a lock by whoever asks when the firmware cut a lamp.
        self.last_write: float | None = None
        self.write_gaps: collections.deque[tuple[float, float]] = collections.deque(maxlen=WRITE_GAPS_KEPT)
        # When the firmware was last heard (monotonic), None before the first HELLO; read
        # without a lock by the owner of on_link_change when the link is lost.
        self.last_heard: float | None = None
        # on_guard(readings): called on the link thread, never under a lock, whenever a SENSE
        # reply arrives; its owner may set it after construction, before start().
        self.on_guard = on_guard
        # (when read, monotonic; per channel {"raw", "trip", "trip_raw", "trip_ago_ms"}) of the
        # latest SENSE reply, None before the first: replaced whole, so it is read without a lock.
        self.sensed: tuple[float, list[protocol.Sense]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the link thread (connect, HELLO, heartbeats); returns at once."""
        with self._state_lock:
            if self._closed:
                raise RuntimeError("this FirmwareLink has been closed; make a new one")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="firmware-link %s" % self.url, daemon=True)
        self._thread.start()

    def wait_up(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the link to be up; returns whether it is."""
        with self._state_changed:
            self._state_changed.wait_for(lambda: self._up or self._closed, timeout)
            return self._up

    @property
    def up(self) -> bool:
        return self._up

    @property
    def reason(self) -> str:
        """One sentence on why the link is in its current state."""
        return self._reason

    def close(self) -> None:
        """Best-effort OFFALL, then stop the link thread and close the port; idempotent.

        on_link_change is not called for this: the owner knows it closed the link.
        """
        with self._state_lock:
            if self._closed:
                return
            was_up = self._up
        if was_up and threading.current_thread() is not self._thread:
            try:
                self.off_all()
            except FirmwareError as err:
                log.warning("OFFALL on close was not confirmed: %s", err)
        with self._state_changed:
            self._closed = True
            self._state_changed.notify_all()
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error("the firmware link thread did not stop within %.0f s", JOIN_TIMEOUT_S)

    # -- commands -----------------------------------------------------------

    def arm(self, lamp: int, ms: int) -> None:
        """Turn ``lamp`` on for at most ``ms``; raises FirmwareError or FirmwareTimeout."""
        self._check_lamp(lamp)
        if not isinstance(ms, int) or isinstance(ms, bool):
            raise TypeError("ms must be an int, got %r" % (ms,))
        if not 1 <= ms <= protocol.MAX_ARM_MS:
            raise FirmwareError(
                "Cannot arm lamp %d for %d ms: the firmware accepts 1..%d ms." % (lamp, ms, protocol.MAX_ARM_MS)
            )
        self._command("ARM", lamp, ms)

    def off(self, lamp: int) -> None:
        """Turn ``lamp`` off; raises FirmwareError or FirmwareTimeout."""
        self._check_lamp(lamp)
        self._command("OFF", lamp)

    def off_all(self) -> None:
        """Turn every lamp off; raises FirmwareError or FirmwareTimeout."""
        self._command("OFFALL")

    def status(self) -> list[protocol.LampStatus]:
        """Per lamp {"on": bool, "remaining_ms": int}, lamp 0 first."""
        args = self._command("STATUS")
        try:
            lamps = protocol.parse_status(args)
        except protocol.FrameError:
            raise FirmwareError("The firmware's STATUS reply %r could not be read." % (" ".join(args),)) from None
        if len(lamps) < self.lamp_count:
            raise FirmwareError(
                "The firmware's STATUS listed %d lamps where %d are configured." % (len(lamps), self.lamp_count)
            )
        return lamps[: self.lamp_count]

    def clear(self, lamp: int) -> None:
        """Unlatch ``lamp``'s guard trips; FirmwareError (reason guard-tripped) while one still reads out of range."""
        self._check_lamp(lamp)
        self._command("CLEAR", lamp)

    @property
    def readings(self) -> list[protocol.Sense]:
        """Per guard channel {"raw", "trip", "trip_raw", "trip_ago_ms"} of the latest SENSE, [] before one."""
        sensed = self.sensed
        return [] if sensed is None else sensed[1]

    @property
    def readings_at(self) -> float | None:
        """When (monotonic) the latest SENSE reply arrived, None before one."""
        sensed = self.sensed
        return None if sensed is None else sensed[0]

    def _check_lamp(self, lamp: int) -> None:
        if not isinstance(lamp, int) or isinstance(lamp, bool):
            raise TypeError("lamp must be an int index, got %r" % (lamp,))
        if not 0 <= lamp < self.lamp_count:
            raise FirmwareError(
                "Lamp %d does not exist on this firmware link; lamps are 0..%d." % (lamp, self.lamp_count - 1)
            )

    def _command(self, word: str, *args: int) -> tuple[str, ...]:
        if threading.current_thread() is self._thread:
            # The link thread is the one that reads replies: waiting here would deadlock.
            raise RuntimeError("FirmwareLink commands cannot be called from on_link_change")
        what = " ".join([word] + [str(a) for a in args])
        if not self._up:
            raise FirmwareTimeout("Cannot send %s: %s" % (what, self._reason[:1].lower() + self._reason[1:]))
        seq, waiter = self._send(None, word, args, want_reply=True)
        if waiter is None:
            raise FirmwareTimeout("Cannot send %s: the firmware link went down." % what)
        if not waiter.event.wait(self.reply_timeout_s):
            with self._state_lock:
                self._pending.pop(seq, None)
            if not waiter.event.is_set():
                raise FirmwareTimeout("The firmware did not answer %s within %g s." % (what, self.reply_timeout_s))
        reply = waiter.outcome()
        if reply.word == "ERR":
            token = reply.args[0]
            detail = REFUSALS.get(token, "the firmware rejected the frame (%s)" % token)
            raise FirmwareError("Firmware refused %s: %s." % (what, detail), reason=token)
        return reply.args

    def _send(self, port: Port | None, word: str, args: tuple[int, ...], want_reply: bool) -> tuple[int, Waiter | None]:
        """Write one command with the next seq; returns (seq, waiter or None).

        ``port`` is given by the link thread during its handshake; callers pass
        None and use the port of the link that is up.
        """
        with self._send_lock:
            if port is None:
                port = self._port
                if port is None:
                    return 0, None
            self._seq = protocol.next_seq(self._seq)
            seq = self._seq
            waiter = Waiter(word) if want_reply else None
            if waiter is not None:
                with self._state_lock:
                    self._pending[seq] = waiter
            try:
                port.write(protocol.encode_command(seq, word, *args))
                self._wrote()
            except (serial.SerialException, OSError) as err:
                with self._state_lock:
                    self._pending.pop(seq, None)
                    self._write_failure = "writing to %s failed: %s" % (self.url, err)
                raise FirmwareTimeout(
                    sentence("Cannot send %s: writing to %s failed: %s" % (word, self.url, err))
                ) from err
        return seq, waiter

    def _wrote(self) -> None:
        now = self._clock()
        last = self.last_write
        if last is not None and now - last > self.watchdog_s:
            self.write_gaps.append((last, now))
        self.last_write = now

    def silent_cut_at(self, since: float) -> float | None:
        """When the firmware's watchdog surely cut every lamp after ``since`` (monotonic), or None.

        From the host's own writes: a gap longer than watchdog_s that ended after
        ``since``, or the silence going on now.  Lock-free and in memory.
        """
        cuts = [start + self.watchdog_s for start, end in list(self.write_gaps) if end > since]
        last = self.last_write
        if last is not None and self._clock() - last > self.watchdog_s:
            cuts.append(last + self.watchdog_s)
        return min(cuts) if cuts else None

    # -- link thread --------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._stop.is_set():
            try:
                port = self._serial_for_url(self.url, timeout=READ_TIMEOUT_S, exclusive=True)  # one host (S16)
            except (serial.SerialException, OSError, ValueError) as err:
                self._set_down(sentence("Cannot open %s: %s" % (self.url, err)))
            else:
                try:
                    self._serve(port)
                    reason = "The firmware link was closed."
                except LinkFailure as failure:
                    reason = str(failure)
                finally:
                    with self._send_lock, self._state_lock:
                        self._port = None
                    port.close()
                if self._up:
                    backoff = BACKOFF_FIRST_S  # it worked until now: retry soon
                self._set_down(reason, report=not self._stop.is_set())
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _serve(self, port: Port) -> None:
        """Handshake, then read replies and send heartbeats until the link fails or close()."""
        splitter = protocol.LineSplitter()
        info = self._greet(port, splitter)
        if info is None:
            return
        self.info = info
        with self._send_lock, self._state_changed:
            self._port = port
            self._up = True
            self._state_changed.notify_all()
        self._report(
            True,
            "Firmware %s on %s is up: %d lamps, watchdog %g s."
            % (info["firmware"], self.url, info["lamps"], info["watchdog_ms"] / 1000),
        )
        self._heartbeats(port, splitter)

    def _greet(self, port: Port, splitter: protocol.LineSplitter) -> protocol.Hello | None:
        """HELLO and its checks; the firmware's fields, or None when close() came first."""
        try:
            port.write_timeout = self.reply_timeout_s
        except (serial.SerialException, ValueError, AttributeError) as err:
            raise LinkFailure(sentence("Cannot configure %s: %s" % (self.url, err))) from err
        self._write_failure = None
        try:
            # A lone newline ends whatever half line the firmware may be holding.
            port.write(b"\n")
            seq, waiter = self._send(port, "HELLO", (), want_reply=True)
        except (FirmwareError, serial.SerialException, OSError) as err:
            raise LinkFailure(sentence("Cannot greet the firmware on %s: %s" % (self.url, err))) from err
        assert waiter is not None  # a reply asked for on a given port always has its waiter
        deadline = self._clock() + self.reply_timeout_s
        while not waiter.event.is_set():
            if self._stop.is_set():
                return None
            if self._clock() >= deadline:
                raise LinkFailure(
                    "The firmware on %s did not answer HELLO within %g s." % (self.url, self.reply_timeout_s)
                )
            self._pump(port, splitter)
        reply = waiter.outcome()  # only this thread's _set_down sets an error, never while greeting
        if reply.word != "OK":
            raise LinkFailure("The firmware on %s refused HELLO (%s)." % (self.url, reply.args[0]))
        info = check_hello(reply.args, self.url, self.lamp_count, self.watchdog_s, self.heartbeat_s)
        guards = self._ask(port, splitter, "GUARDS")
        if guards is None:
            return None
        check_guard_table(guards.args, self.url, self.guards)
        return info

    def _ask(self, port: Port, splitter: protocol.LineSplitter, word: str) -> protocol.Reply | None:
        """One command during the handshake and its OK reply; None when close() came first."""
        try:
            _seq, waiter = self._send(port, word, (), want_reply=True)
        except (FirmwareError, serial.SerialException, OSError) as err:
            raise LinkFailure(sentence("Cannot ask the firmware on %s for %s: %s" % (self.url, word, err))) from err
        assert waiter is not None  # a reply asked for on a given port always has its waiter
        deadline = self._clock() + self.reply_timeout_s
        while not waiter.event.is_set():
            if self._stop.is_set():
                return None
            if self._clock() >= deadline:
                raise LinkFailure(
                    "The firmware on %s did not answer %s within %g s." % (self.url, word, self.reply_timeout_s)
                )
            self._pump(port, splitter)
        reply = waiter.outcome()
        if reply.word != "OK":
            raise LinkFailure("The firmware on %s refused %s (%s)." % (self.url, word, reply.args[0]))
        return reply

    def _heartbeats(self, port: Port, splitter: protocol.LineSplitter) -> None:
        """Read replies and send a heartbeat every heartbeat_s until the link fails or close().

        The heartbeat is SENSE when guards are configured (it feeds the firmware's watchdog
        as PING does, and brings the readings), else PING.
        """
        beat = "SENSE" if self.guards else "PING"
        last_heard = self.last_heard = self._clock()
        next_beat = last_heard + self.heartbeat_s
        beats: dict[int, float] = {}  # seq of an unanswered heartbeat -> time sent
        while not self._stop.is_set():
            for reply in self._pump(port, splitter):
                last_heard = self.last_heard = self._clock()
                if reply.seq in beats:
                    del beats[reply.seq]
                    if reply.word == "ERR":
                        raise LinkFailure(
                            "The firmware refused a heartbeat (%s), so it has cut its lamps." % reply.args[0]
                        )
                    if beat == "SENSE":
                        self._sensed(reply.args, last_heard)
            if self._write_failure is not None:
                raise LinkFailure(sentence(self._write_failure))
            now = self._clock()
            if now - last_heard > self.silence_limit_s:
                raise LinkFailure(
                    "The firmware on %s sent nothing for %.2f s (limit %g s)."
                    % (self.url, now - last_heard, self.silence_limit_s)
                )
            if now >= next_beat:
                next_beat = max(next_beat + self.heartbeat_s, now)
                try:
                    seq, _ = self._send(port, beat, (), want_reply=False)
                except FirmwareError as err:
                    raise LinkFailure(str(err)) from err
                beats[seq] = now
                # Old entries are PINGs whose replies were lost; silence detection covers them.
                for old in [s for s, sent in beats.items() if now - sent > self.watchdog_s]:
                    del beats[old]

    def _sensed(self, args: tuple[str, ...], at: float) -> None:
        """Keep a SENSE reply's readings and hand them to on_guard (no lock held)."""
        try:
            readings = protocol.parse_sense(args)
        except protocol.FrameError:
            raise LinkFailure(
                "The firmware on %s sent a SENSE reply that could not be read: %r." % (self.url, " ".join(args))
            ) from None
        if len(readings) != len(self.guards):
            raise LinkFailure(
                "The firmware on %s reported %d guard readings where %d channels are configured."
                % (self.url, len(readings), len(self.guards))
            )
        self.sensed = (at, readings)
        if self.on_guard is None:
            return
        try:
            self.on_guard(readings)
        except Exception:
            # A broken callback must not stop heartbeats or reconnects.
            log.exception("on_guard raised; the firmware link keeps running")

    def _pump(self, port: Port, splitter: protocol.LineSplitter) -> list[protocol.Reply]:
        """Read what has arrived (waiting at most READ_TIMEOUT_S), hand replies to waiters.

        Returns every valid reply frame, waited for or not.
        """
        try:
            data = port.read(1)
            if data:
                waiting = port.in_waiting
                while waiting and len(data) < 4096:
                    data += port.read(min(waiting, 4096))
                    waiting = port.in_waiting
        except (serial.SerialException, OSError) as err:
            raise LinkFailure(sentence("Lost %s: %s" % (self.url, err))) from err
        replies = []
        for line in splitter.feed(data):
            if isinstance(line, protocol.FrameError):
                log.debug("ignored an over-long line from %s", self.url)
                continue
            try:
                reply = protocol.parse_reply(line)
            except protocol.FrameError as err:
                log.debug("ignored a bad frame from %s (%s): %r", self.url, err.reason, line)
                continue
            replies.append(reply)
            with self._state_lock:
                waiter = self._pending.pop(reply.seq, None)
            if waiter is not None:
                waiter.reply = reply
                waiter.event.set()
        return replies

    def _set_down(self, reason: str, report: bool = True) -> None:
        with self._state_changed:
            self._up = False
            self._reason = reason
            pending = list(self._pending.values())
            self._pending.clear()
            self._state_changed.notify_all()
        # The owner hears of the loss before any caller waiting for a reply wakes up: a
        # start whose ARM was in flight is still "being started" when the owner looks.
        if report:
            self._report(False, reason)
        for waiter in pending:
            waiter.error = FirmwareTimeout(
                "The firmware link went down before %s was answered: %s"
                % (waiter.word, reason[:1].lower() + reason[1:])
            )
            waiter.event.set()

    def _report(self, up: bool, reason: str) -> None:
        with self._state_lock:
            self._reason = reason
            if self._reported_up is up:
                return
            self._reported_up = up
        log.info("firmware link %s: %s", "up" if up else "down", reason)
        if self.on_link_change is None:
            return
        try:
            self.on_link_change(up, reason)
        except Exception:
            # A broken callback must not stop heartbeats or reconnects.
            log.exception("on_link_change raised; the firmware link keeps running")
