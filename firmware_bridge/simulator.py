"""Simulated microcontroller: the reference firmware logic served on a TCP port or a pty.

    python -m firmware_bridge.simulator --listen 127.0.0.1:PORT --lamps N [--watchdog S]
    python -m firmware_bridge.simulator --pty --lamps N [--watchdog S]
        [--guard LAMP:ADC:LOW:HIGH ...] [--control HOST:PORT]

stderr gets one ``listening 127.0.0.1:<port>`` (or ``listening /dev/pts/N``)
line once the port is open, so a parent started with port 0 can find it.
stdout gets exactly one JSON line per output change, flushed at once::

    {"t": <time.monotonic() s>, "lamp": <0-based index>, "on": <bool>, "why": "<reason>"}

starting with one ``"why": "boot"`` line per lamp.  One TCP client at a time:
a new connection replaces the current one (a host that reconnects after a
half-open socket must win over its own stale connection).  The firmware state
is not touched when a client comes or goes, exactly as a Pico does not notice
a host process exiting: the watchdog cuts the lamps.  Replies that the client
is too slow to take are dropped, as on a UART without flow control.
SIGTERM and SIGINT turn every lamp off (printed) and exit 0.

``--guard LAMP:ADC:LOW:HIGH`` (repeatable) gives the firmware an analog guard
channel, as GUARDS on the board's main.py does; each simulated ADC input reads
the middle of its channel's range until told otherwise.  ``--control HOST:PORT``
opens a second TCP port (any number of clients) that sets what the ADC inputs
read while the simulator runs, without going through the host: one line per
request, each answered with one line::

    adc <n> <raw>    input n (0..2) reads raw (0..65535) from now on   -> ok
    adc <n> fail     input n's read raises (the firmware counts it out of range) -> ok
    anything else                                               -> error: <sentence>

Its address goes to stderr as ``control 127.0.0.1:<port>``, before the
``listening`` line.  A trip cuts its lamp with ``"why": "guard"``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time
import tty
from collections.abc import Callable
from types import FrameType
from typing import TextIO

from firmware_bridge import protocol
from firmware_bridge.firmware import mpshim
from firmware_bridge.firmware.logic import Firmware

MAX_IDLE_WAIT_S = 0.5  # wake-up when no timer is pending: only to notice a stop request
MAX_CONTROL_LINE = 128  # a control client sending a longer line is dropped
FAIL = "fail"  # what a control line sets to make an ADC input's read raise


class AdcInputs:
    """What each simulated ADC input reads: an int, or FAIL to make the read raise."""

    def __init__(self, guards: list[protocol.GuardRow]) -> None:
        self._values: dict[int, int | str] = {adc: (low + high) // 2 for _lamp, adc, low, high in guards}

    def reader(self, adc: int) -> Callable[[], int]:
        def read() -> int:
            value = self._values.get(adc, 0)
            if isinstance(value, str):
                raise OSError("ADC %d read failed (set by the control port)" % adc)
            return value

        return read

    def command(self, line: str) -> str:
        """Apply one control line; returns the reply line ("ok" or "error: ...")."""
        words = line.split()
        if len(words) != 3 or words[0] != "adc":
            return "error: expected 'adc <n> <raw>' or 'adc <n> fail', got %r" % line
        if words[1] not in [str(n) for n in range(protocol.MAX_GUARDS)]:
            return "error: ADC input must be 0..%d, got %r" % (protocol.MAX_GUARDS - 1, words[1])
        adc = int(words[1])
        if words[2] == FAIL:
            self._values[adc] = FAIL
            return "ok"
        if not words[2].isdigit() or int(words[2]) > protocol.MAX_RAW:
            return "error: a reading must be 0..%d or 'fail', got %r" % (protocol.MAX_RAW, words[2])
        self._values[adc] = int(words[2])
        return "ok"


class _Output:
    """A simulated relay: just a level (the firmware reports every change itself)."""

    def __init__(self) -> None:
        self.level = 0

    def value(self, level: int) -> None:
        self.level = level


class ChangePrinter:
    """Writes the JSON change lines; a closed stdout must not stop the firmware."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._broken = False

    def __call__(self, lamp: int, on: bool, why: str) -> None:
        if self._broken:
            return
        line = json.dumps({"t": time.monotonic(), "lamp": lamp, "on": on, "why": why})
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except OSError:
            # Nobody reads the log any more; the lamps still need their timers.
            self._broken = True
            _silence_stdout()


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def make_firmware(
    lamps: int,
    watchdog_s: float,
    on_change: Callable[[int, bool, str], object],
    bad_frame_limit: int = 3,
    tick_offset_ms: int = 0,
    guards: list[protocol.GuardRow] | None = None,
    inputs: AdcInputs | None = None,
) -> Firmware:
    """Firmware on real time: MicroPython ticks from time.monotonic(), shifted by tick_offset_ms.

    ``guards`` are (lamp, adc, low, high) channels read from ``inputs`` (by default
    inputs reading the middle of each range).
    """

    def ticks_ms() -> int:
        return (int(time.monotonic() * 1000) + tick_offset_ms) & mpshim.TICKS_MAX

    table = guards or []
    inputs = inputs or AdcInputs(table)
    outputs = [_Output() for _ in range(lamps)]
    return Firmware(
        outputs,
        ticks_ms,
        mpshim.ticks_diff,
        mpshim.ticks_add,
        watchdog_ms=max(1, round(watchdog_s * 1000)),
        bad_frame_limit=bad_frame_limit,
        on_change=on_change,
        guards=[(lamp, inputs.reader(adc), low, high, adc) for lamp, adc, low, high in table],
    )


class _ControlPort:
    """The control port: line requests that set what the ADC inputs read, one reply line each."""

    def __init__(self, selector: selectors.BaseSelector, host: str, port: int, inputs: AdcInputs) -> None:
        self._selector = selector
        self._inputs = inputs
        self._clients: dict[socket.socket, bytearray] = {}
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, port))
        self._server.listen(4)
        self._server.setblocking(False)
        selector.register(self._server, selectors.EVENT_READ, self._accept)
        bound_host, bound_port = self._server.getsockname()[:2]
        self.address = "%s:%d" % (bound_host, bound_port)

    def _accept(self) -> None:
        try:
            client, _ = self._server.accept()
        except BlockingIOError:
            return
        client.setblocking(False)
        self._clients[client] = bytearray()
        self._selector.register(client, selectors.EVENT_READ, lambda: self._read(client))

    def _read(self, client: socket.socket) -> None:
        try:
            data = client.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        buf = self._clients[client]
        buf.extend(data)
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            reply = self._inputs.command(line.decode("ascii", "replace").strip())
            try:
                client.sendall((reply + "\n").encode())
            except OSError:
                self._drop(client)
                return
        if len(buf) > MAX_CONTROL_LINE:
            self._drop(client)

    def _drop(self, client: socket.socket) -> None:
        if self._clients.pop(client, None) is not None:
            self._selector.unregister(client)
            client.close()

    def close(self) -> None:
        for client in list(self._clients):
            self._drop(client)
        self._selector.unregister(self._server)
        self._server.close()


class _TcpPort:
    """Listening socket plus at most one client; a newcomer replaces the current client."""

    def __init__(
        self, selector: selectors.BaseSelector, host: str, port: int, on_data: Callable[[bytes], None]
    ) -> None:
        self._selector = selector
        self._on_data = on_data
        self._client: socket.socket | None = None
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Lets a restarted simulator take its old port back at once.
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, port))
        self._server.listen(4)
        self._server.setblocking(False)
        selector.register(self._server, selectors.EVENT_READ, self._accept)
        bound_host, bound_port = self._server.getsockname()[:2]
        self.address = "%s:%d" % (bound_host, bound_port)

    def _accept(self) -> None:
        try:
            client, _ = self._server.accept()
        except BlockingIOError:
            return
        self._drop_client()
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = client
        self._selector.register(client, selectors.EVENT_READ, self._read)

    def _read(self) -> None:
        if self._client is None:
            return
        try:
            data = self._client.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client()
            return
        self._on_data(data)

    def send(self, data: bytes) -> None:
        if self._client is None:
            return
        try:
            self._client.send(data)
        except (BlockingIOError, InterruptedError):
            pass  # the client is not reading: drop, like a UART would
        except OSError:
            self._drop_client()

    def _drop_client(self) -> None:
        if self._client is not None:
            self._selector.unregister(self._client)
            self._client.close()
            self._client = None

    def close(self) -> None:
        self._drop_client()
        self._selector.unregister(self._server)
        self._server.close()


class _PtyPort:
    """A pty pair in raw mode; the host opens the slave path like a USB serial device."""

    def __init__(self, selector: selectors.BaseSelector, on_data: Callable[[bytes], None]) -> None:
        self._selector = selector
        self._on_data = on_data
        self._master, self._slave = os.openpty()
        # Raw: no echo of the host's own frames, no newline translation.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        # Keeping the slave open ourselves means a host closing it is not EOF here.
        self.address = os.ttyname(self._slave)
        selector.register(self._master, selectors.EVENT_READ, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            self._on_data(data)

    def send(self, data: bytes) -> None:
        try:
            os.write(self._master, data)
        except BlockingIOError:
            pass  # the host is not reading: drop, like a UART would

    def close(self) -> None:
        self._selector.unregister(self._master)
        os.close(self._master)
        os.close(self._slave)


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            "expected HOST:PORT such as 127.0.0.1:7777 (port 0 picks a free one), got %r" % text
        )
    return host, int(port)


def _parse_lamps(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= protocol.MAX_LAMPS:
        raise argparse.ArgumentTypeError("lamp count must be 1..%d, got %r" % (protocol.MAX_LAMPS, text))
    return int(text)


def _parse_guard(text: str) -> protocol.GuardRow:
    parts = text.split(":")
    if len(parts) != 4 or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError("expected LAMP:ADC:LOW:HIGH such as 0:0:9000:52000, got %r" % text)
    lamp, adc, low, high = (int(part) for part in parts)
    try:
        return protocol.check_guards([(lamp, adc, low, high)])[0]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.001 <= value <= 3600:
        raise argparse.ArgumentTypeError("watchdog must be 0.001..3600 seconds, got %r" % text)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m firmware_bridge.simulator",
        description="Serve the reference lamp firmware on a TCP port or a pty; print one JSON line per output change.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--listen", type=_parse_listen, metavar="HOST:PORT", help="serve socket://HOST:PORT (port 0: any free port)"
    )
    where.add_argument("--pty", action="store_true", help="serve on a new pty; its path goes to stderr")
    parser.add_argument("--lamps", type=_parse_lamps, required=True, help="number of outputs (1..8)")
    parser.add_argument(
        "--watchdog",
        type=_parse_seconds,
        default=3.0,
        metavar="S",
        help="cut every lamp after S seconds without a valid frame (default 3)",
    )
    parser.add_argument(
        "--bad-frames",
        type=int,
        default=3,
        metavar="N",
        help="cut every lamp after N consecutive bad frames (default 3)",
    )
    parser.add_argument(
        "--tick-offset-ms",
        type=int,
        default=0,
        metavar="MS",
        help="shift the firmware's tick counter, e.g. to cross its 2**30 wrap soon",
    )
    parser.add_argument(
        "--guard",
        type=_parse_guard,
        action="append",
        default=[],
        metavar="LAMP:ADC:LOW:HIGH",
        help="an analog guard channel: ADC input 0..2 must read LOW..HIGH (0..65535) or LAMP is cut "
        "(repeatable, up to 3; each input reads the middle of its range until --control says otherwise)",
    )
    parser.add_argument(
        "--control",
        type=_parse_listen,
        metavar="HOST:PORT",
        help="a TCP port setting what the ADC inputs read: lines 'adc <n> <raw>' or 'adc <n> fail', "
        "each answered 'ok' or 'error: ...'; its address goes to stderr as 'control HOST:PORT'",
    )
    return parser


def serve(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if args.bad_frames < 1:
        stderr.write("--bad-frames must be at least 1, got %d\n" % args.bad_frames)
        return 2
    try:
        guards = protocol.check_guards(args.guard, args.lamps)
    except ValueError as err:
        stderr.write("--guard: %s\n" % err)
        return 2
    inputs = AdcInputs(guards)
    firmware = make_firmware(
        args.lamps,
        args.watchdog,
        ChangePrinter(stdout),
        bad_frame_limit=args.bad_frames,
        tick_offset_ms=args.tick_offset_ms,
        guards=guards,
        inputs=inputs,
    )
    stop_requested: list[int] = []
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(wake_r, selectors.EVENT_READ, None)
    previous: dict[signal.Signals, signal._HANDLER] = {}  # typeshed's name for what signal.signal() returns

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.append(signum)

    port: _PtyPort | _TcpPort | None = None
    control: _ControlPort | None = None
    previous_wakeup = None
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, request_stop)
        # The handler only records the signal; the byte on wake_w ends select() at once.
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)

        def on_data(data: bytes) -> None:
            for reply in firmware.feed(data):
                if port is not None:
                    port.send(reply)

        try:
            if args.control is not None:
                control = _ControlPort(selector, args.control[0], args.control[1], inputs)
                stderr.write("control %s\n" % control.address)
            if args.pty:
                port = _PtyPort(selector, on_data)
            else:
                port = _TcpPort(selector, args.listen[0], args.listen[1], on_data)
        except OSError as err:
            stderr.write("cannot open the simulator's port: %s\n" % err)
            stderr.flush()
            return 1
        stderr.write("listening %s\n" % port.address)
        stderr.flush()
        _run_until_stopped(firmware, selector, wake_r, stop_requested)
        return 0
    finally:
        firmware.shutdown()
        if port is not None:
            port.close()
        if control is not None:
            control.close()
        if previous_wakeup is not None:
            signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        selector.close()
        wake_r.close()
        wake_w.close()


def _run_until_stopped(
    firmware: Firmware, selector: selectors.BaseSelector, wake_r: socket.socket, stop_requested: list[int]
) -> None:
    """Poll the firmware's timers and serve the port until a signal asks to stop."""
    while not stop_requested:
        wait_ms = firmware.poll()
        # Wake when the firmware's next timer is due (a hair late rather than
        # early, so one poll() settles it).
        timeout = MAX_IDLE_WAIT_S if wait_ms is None else min(wait_ms / 1000 + 0.0005, MAX_IDLE_WAIT_S)
        for key, _ in selector.select(timeout):
            if key.data is None:
                try:
                    wake_r.recv(64)  # the signal's wake-up byte
                except BlockingIOError:
                    pass
            else:
                key.data()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
