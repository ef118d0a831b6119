"""`lampctl firmware check` and `flash`: keep the microcontroller's firmware, pins and watchdog in step with the config."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from firmware_bridge import protocol
from firmware_bridge.firmware.logic import FIRMWARE_VERSION
from lampctl.core import sensors
from lampctl.tools import ToolFailed

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = PACKAGE_ROOT / "firmware_bridge"
# What the board imports (firmware/main.py: `from firmware_bridge.firmware.logic import ...`),
# as (file in this package, path on the board). main.py and settings.py are generated.
BOARD_FILES = (
    ("__init__.py", "firmware_bridge/__init__.py"),
    ("protocol.py", "firmware_bridge/protocol.py"),
    ("firmware/__init__.py", "firmware_bridge/firmware/__init__.py"),
    ("firmware/logic.py", "firmware_bridge/firmware/logic.py"),
)
# Pico GPIOs a relay may use: GP23-25 are wired inside the board, GP22 is the maintenance jumper.
PICO_RELAY_GPIOS = tuple(range(22)) + (26, 27, 28)
DEFAULT_PICO_PINS = tuple(range(2, 10))  # lamp 0 on GP2, lamp 1 on GP3, ... (docs/wiring.md)
REPLY_TIMEOUT_S = 1.0


class FirmwareSession:
    """A short, direct conversation with the board over the protocol (no heartbeat thread).

    HELLO turns every lamp off; close() sends OFFALL. Only for maintenance while the
    service is stopped: the service's own link would otherwise lose its sequence numbers.
    """

    def __init__(self, url: str, timeout: float = REPLY_TIMEOUT_S, opener=None):
        # Imported here: cli.py imports this module before `serve` claims the relays (S1).
        import serial

        opener = opener or serial.serial_for_url
        self._serial_errors = (serial.SerialException, OSError)
        self.url = url
        self.timeout = timeout
        options = {} if "://" in url else {"exclusive": True}
        try:
            self._port = opener(url, timeout=0.05, **options)
        except (*self._serial_errors, ValueError) as exc:
            raise ToolFailed(f"cannot open the firmware port {url}: {exc}") from None
        self._seq = 0
        self._splitter = protocol.LineSplitter()

    def command(self, word: str, *args: int) -> protocol.Reply:
        """Send one command and return its OK reply; ToolFailed on ERR, silence or a broken port."""
        self._seq = protocol.next_seq(self._seq)
        try:
            self._port.write(protocol.encode_command(self._seq, word, *args))
            self._port.flush()
            reply = self._reply(self._seq, time.monotonic() + self.timeout)
        except self._serial_errors as exc:
            raise ToolFailed(f"the firmware port {self.url} failed: {exc}") from None
        if reply is None:
            raise ToolFailed(
                f"the firmware on {self.url} did not answer {word} within {self.timeout:g} s "
                f"(is MicroPython with lampctl's main.py on the board, and is the board in maintenance mode?)"
            )
        if reply.word != "OK":
            raise ToolFailed(f"the firmware on {self.url} refused {word}: {reply.args[0]}")
        return reply

    def _reply(self, seq: int, deadline: float) -> protocol.Reply | None:
        while time.monotonic() < deadline:
            for line in self._splitter.feed(self._port.read(64)):
                if isinstance(line, protocol.FrameError):
                    continue
                try:
                    frame = protocol.parse_reply(line)
                except protocol.FrameError:
                    continue  # noise, a REPL banner: wait for our reply
                if frame.seq == seq:
                    return frame
        return None

    def hello(self) -> protocol.Hello:
        self._port.write(b"\n")  # ends any half line the board holds
        reply = self.command("HELLO")
        try:
            return protocol.parse_hello(reply.args)
        except protocol.FrameError:
            raise ToolFailed(
                f"the firmware on {self.url} sent a HELLO reply that could not be read: {reply.args}"
            ) from None

    def guards(self) -> list[protocol.GuardRow]:
        """The board's guard channels, (lamp, adc, low, high) in channel order (protocol 2 on)."""
        reply = self.command("GUARDS")
        try:
            return protocol.parse_guards(reply.args)
        except protocol.FrameError:
            raise ToolFailed(
                f"the firmware on {self.url} sent a GUARDS reply that could not be read: {' '.join(reply.args)}"
            ) from None

    def close(self) -> None:
        try:
            self.command("OFFALL")
        except ToolFailed:
            pass
        finally:
            self._port.close()


def describe_guards(table: list[protocol.GuardRow]) -> str:
    """A guard table in words, as the service's link words it."""
    # Imported here: the link module imports pyserial, which cli.py must not load before `serve` (S1).
    from firmware_bridge.bridge import describe_guards as words

    return words(table)


def guard_table(cfg) -> list[protocol.GuardRow]:
    """The guard channels (lamp, adc, low, high) cfg's lamps ask the firmware for (lampctl.core.sensors)."""
    return sensors.guard_table(cfg.lamps)


def guard_mismatches(board: list[protocol.GuardRow], want: list[protocol.GuardRow], where: str) -> list[str]:
    """One sentence per ADC input whose guard channel differs between the board and the config."""
    fix = "run `lampctl firmware flash`"
    if board == want:
        return []
    on_board = {row[1]: row for row in board}
    wanted = {row[1]: row for row in want}

    def words(row: protocol.GuardRow | None) -> str:
        if row is None:
            return "no channel"
        return f"lamp {row[0]} between {row[2]} and {row[3]}"

    problems = [
        f"guards: on ADC {adc} the board has {words(on_board.get(adc))}, {where} asks for {words(wanted.get(adc))} ({fix})"
        for adc in sorted(set(on_board) | set(wanted))
        if on_board.get(adc) != wanted.get(adc)
    ]
    if not problems:  # the same channels in another order: GUARDS and SENSE would not line up
        problems.append(
            f"guards: the board lists its channels as {describe_guards(board)}, "
            f"{where} as {describe_guards(want)} ({fix})"
        )
    return problems


def firmware_mismatches(info: protocol.Hello, cfg, guards: list[protocol.GuardRow] | None = None) -> list[str]:
    """One sentence per difference between what the board reports and what the config needs.

    ``guards`` is the board's GUARDS reply (query_board); None skips that comparison.
    """
    fix = "run `lampctl firmware flash`"
    problems = []
    if info["protocol"] != protocol.PROTOCOL_VERSION:
        problems.append(
            f"protocol: the board speaks version {info['protocol']}, "
            f"this lampctl speaks {protocol.PROTOCOL_VERSION} ({fix})"
        )
    if info["firmware"] != FIRMWARE_VERSION:
        problems.append(
            f"version: the board runs firmware {info['firmware']}, this lampctl ships {FIRMWARE_VERSION} ({fix})"
        )
    if info["lamps"] != len(cfg.lamps):
        problems.append(
            f"lamps: the board drives {info['lamps']} relay(s), {cfg.path} has {len(cfg.lamps)} [[lamps]] ({fix})"
        )
    want_ms = round(cfg.firmware.watchdog_s * 1000)
    if info["watchdog_ms"] != want_ms:
        problems.append(
            f"watchdog: the board cuts after {info['watchdog_ms']} ms of silence, "
            f"firmware.watchdog_s in {cfg.path} says {want_ms} ms ({fix})"
        )
    if info["max_arm_ms"] != protocol.MAX_ARM_MS:
        problems.append(
            f"ceiling: the board arms at most {info['max_arm_ms']} ms, "
            f"this lampctl expects {protocol.MAX_ARM_MS} ms ({fix})"
        )
    if guards is not None:
        problems += guard_mismatches(guards, guard_table(cfg), str(cfg.path))
    return problems


def describe(info: protocol.Hello, url: str) -> str:
    return (
        f"firmware {info['firmware']} on {url}: protocol {info['protocol']}, {info['lamps']} lamp(s), "
        f"watchdog {info['watchdog_ms']} ms, longest arm {info['max_arm_ms'] // 1000} s"
    )


def query_board(cfg, timeout: float = REPLY_TIMEOUT_S) -> tuple[protocol.Hello, list[protocol.GuardRow] | None]:
    """HELLO and GUARDS of the configured board (guards None when it speaks a protocol before 2)."""
    if cfg.firmware is None:
        raise ToolFailed(f"{cfg.path} has no [firmware] table: there is no microcontroller to talk to")
    session = FirmwareSession(cfg.firmware.port, timeout)
    try:
        info = session.hello()
        guards = session.guards() if info["protocol"] >= 2 else None
        return info, guards
    finally:
        session.close()


# ---- flash -------------------------------------------------------------------------------
def pico_pins(cfg, requested: tuple[int, ...] | None) -> tuple[int, ...]:
    """The Pico GPIO per lamp: --pico-pins, else GP2, GP3, ... (docs/wiring.md)."""
    pins = tuple(requested or DEFAULT_PICO_PINS[: len(cfg.lamps)])
    if len(pins) != len(cfg.lamps):
        raise ToolFailed(f"{len(pins)} Pico pin(s) given for {len(cfg.lamps)} lamp(s): give one per lamp, lamp 0 first")
    for pin in pins:
        if pin not in PICO_RELAY_GPIOS:
            raise ToolFailed(
                f"GP{pin} cannot drive a relay (use GP0-GP21 or GP26-GP28; GP22 is the maintenance jumper)"
            )
    if len(set(pins)) != len(pins):
        raise ToolFailed(f"the Pico pins {list(pins)} repeat a pin: one relay per lamp")
    return pins


def pico_active_high(cfg, requested: bool | None) -> bool:
    if requested is not None:
        return requested
    levels = {lamp.active_high for lamp in cfg.lamps}
    if len(levels) != 1:
        raise ToolFailed(
            "the lamps differ in active_high: say --pico-active-high or --pico-active-low for the Pico's relays"
        )
    return levels.pop()


def settings_source(cfg, pins: tuple[int, ...], active_high: bool, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    lamps = ", ".join(f"{lamp.id}=GP{pin}" for lamp, pin in zip(cfg.lamps, pins, strict=False))
    return (
        f'"""Board settings generated by `lampctl firmware flash` from {cfg.path} on {stamp}: do not edit, flash again."""\n'
        f"# lamp order as [[lamps]]: {lamps}\n"
        f"RELAY_PINS = {pins!r}\n"
        f"ACTIVE_HIGH = {active_high!r}\n"
        f"WATCHDOG_MS = {round(cfg.firmware.watchdog_s * 1000)}\n"
        f"GUARDS = {tuple(guard_table(cfg))!r}\n"
    )


def main_source(settings: dict) -> str:
    """firmware/main.py for the board: with its constants set to `settings` unless it reads settings.py itself."""
    text = (FIRMWARE_DIR / "firmware" / "main.py").read_text()
    if re.search(r"^\s*(import settings|from settings import)", text, re.MULTILINE):
        return text
    for name, value in settings.items():
        line = f"{name} = {value!r}"

        def keep_comment(m: re.Match[str], line: str = line) -> str:  # the line's own comment is kept
            return line + (m.group(1) or "")

        text, count = re.subn(rf"^{name} = [^#\n]*?(\s*#.*)?$", keep_comment, text, flags=re.MULTILINE)
        if count != 1:
            raise ToolFailed(f"firmware/main.py has {count} `{name} = ...` lines instead of one: cannot set it")
    return text


def board_files(cfg, pins: tuple[int, ...], active_high: bool) -> list[tuple[str, str]]:
    """(board path, file content) of everything flash copies, checked to compile."""
    settings = settings_source(cfg, pins, active_high)
    values = {
        "RELAY_PINS": pins,
        "ACTIVE_HIGH": active_high,
        "WATCHDOG_MS": round(cfg.firmware.watchdog_s * 1000),
        "GUARDS": tuple(guard_table(cfg)),
    }
    files = [(board, (FIRMWARE_DIR / local).read_text()) for local, board in BOARD_FILES]
    files += [("main.py", main_source(values)), ("settings.py", settings)]
    for board, text in files:
        compile(text, board, "exec")
    return files


def mpremote_command(mpremote: str, port: str, stage: Path) -> list[str]:
    return [
        mpremote,
        "connect",
        port,
        "fs",
        "cp",
        "-r",
        str(stage / "firmware_bridge"),
        ":",
        "+",
        "fs",
        "cp",
        str(stage / "main.py"),
        str(stage / "settings.py"),
        ":",
        "+",
        "reset",
    ]


def find_mpremote() -> str:
    found = shutil.which("mpremote", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if not found:
        raise ToolFailed(f"mpremote is not installed: {Path(sys.executable).parent / 'pip'} install mpremote")
    return found


def flash(port: str, files: list[tuple[str, str]]) -> None:
    mpremote = find_mpremote()
    with tempfile.TemporaryDirectory(prefix="lampctl-flash-") as tmp:
        stage = Path(tmp)
        for board, text in files:
            (stage / board).parent.mkdir(parents=True, exist_ok=True)
            (stage / board).write_text(text)
        try:
            proc = subprocess.run(mpremote_command(mpremote, port, stage), capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            raise ToolFailed(f"mpremote did not finish within 180 s on {port}") from None
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ToolFailed(
            f"mpremote failed on {port} (exit {proc.returncode}: {last[0]}); power the board up with "
            f"GP22 jumpered to GND (maintenance mode) and try again"
        )


# ---- commands ------------------------------------------------------------------------------
