"""Simulated microcontroller: the reference firmware logic served on a TCP port or a pty.

    python -m firmware_bridge.simulator --listen 127.0.0.1:PORT --lamps N [--watchdog S]
    python -m firmware_bridge.simulator --pty --lamps N [--watchdog S]

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
) -> Firmware:
    """Firmware on real time: MicroPython ticks from time.monotonic(), shifted by tick_offset_ms."""

    def ticks_ms() -> int:
        return (int(time.monotonic() * 1000) + tick_offset_ms) & mpshim.TICKS_MAX

    outputs = [_Output() for _ in range(lamps)]
    return Firmware(
        outputs,
        ticks_ms,
        mpshim.ticks_diff,
        mpshim.ticks_add,
        watchdog_ms=max(1, round(watchdog_s * 1000)),
        bad_frame_limit=bad_frame_limit,
        on_change=on_change,
    )


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
    return parser


def serve(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if args.bad_frames < 1:
        stderr.write("--bad-frames must be at least 1, got %d\n" % args.bad_frames)
        return 2
    firmware = make_firmware(
        args.lamps,
        args.watchdog,
        ChangePrinter(stdout),
        bad_frame_limit=args.bad_frames,
        tick_offset_ms=args.tick_offset_ms,
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
