"""`lampctl doctor`: check a fresh install end to end and say what to fix, one line per check."""

from __future__ import annotations

import contextlib
import errno
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from lampctl import config as config_mod
from lampctl.platform import clocksync
from lampctl.tools import ToolFailed, service_answers
from lampctl.tools.firmware import (
    FirmwareSession,
    describe,
    firmware_mismatches,
    query_board,
)

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
LOW_DISK_BYTES = 100 * 1024 * 1024
CLICK_S = 0.5  # how long each lamp is on in the click test
FEEDBACK_WAIT_S = 1.0  # how long a feedback input may take to follow its relay


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def check_port(cfg) -> Check:
    host, port = cfg.service.host, cfg.service.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and service_answers(cfg):
                return Check(
                    "port",
                    FAIL,
                    f"{host}:{port} is in use, probably by the running service: "
                    f"stop it for the doctor (sudo systemctl stop lampctl)",
                )
            if exc.errno == errno.EACCES:
                return Check(
                    "port", FAIL, f"port {port} needs privileges: bind above 1023 and put the TLS proxy in front"
                )
            return Check(
                "port", FAIL, f"cannot bind {host}:{port}: {exc.strerror} (fix service.bind or stop the other program)"
            )
    return Check("port", OK, f"{host}:{port} is free")


def check_database(cfg) -> Check:
    db = cfg.service.database
    folder = db.parent
    if not folder.is_dir():
        return Check(
            "database", FAIL, f"the directory {folder} does not exist: sudo install -d -o lampctl -g lampctl {folder}"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            "database",
            FAIL,
            f"cannot write in {folder} ({exc.strerror}): run as the service's user "
            f"(sudo -u lampctl) or sudo chown lampctl: {folder}",
        )
    notes = []
    if db.exists():
        try:
            conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return Check("database", FAIL, f"cannot read {db}: {exc} (restore a backup: docs/install.md)")
        if result != "ok":
            return Check(
                "database", FAIL, f"{db} fails PRAGMA quick_check ({result}): restore a backup (docs/install.md)"
            )
        notes.append("opens and passes quick_check")
    else:
        notes.append("will be created at the first start")
    free = shutil.disk_usage(folder).free
    if free < LOW_DISK_BYTES:
        return Check("database", WARN, f"only {free // (1024 * 1024)} MB free in {folder}: free space or prune events")
    return Check("database", OK, f"{db} {' and '.join(notes)}; {folder} is writable")


def check_clock(synchronised: Callable[[], bool | None]) -> Check:
    state = synchronised()
    # Sessions, timeouts and lockouts run on the monotonic clock (S22): an unsynchronised wall
    # clock only mislabels the log, so it is a warning, never a reason not to serve.
    status = OK if state else WARN
    detail = clocksync.describe(state)
    if state is False:
        detail += (
            " To fix: sudo timedatectl set-ntp true, and let the Pi reach an NTP server (a clinic LAN "
            "without a time server may point timesyncd at a router that serves NTP)."
        )
    return Check("clock", status, detail)


def check_firmware(cfg) -> Check:
    if cfg.firmware is None:
        return Check("firmware", WARN, "no [firmware] table: the second channel is off (see docs/wiring.md)")
    try:
        info, guards = query_board(cfg)
    except ToolFailed as exc:
        return Check("firmware", FAIL, str(exc))
    problems = firmware_mismatches(info, cfg, guards)
    if problems:
        return Check("firmware", FAIL, "; ".join(problems))
    return Check("firmware", OK, describe(info, cfg.firmware.port))


def claim_relays(cfg, wire_feedback: bool = True):
    """(relay bank, pin factory) with every relay claimed OFF; RuntimeError-like errors on failure."""
    from lampctl.devices.hardware import RelayBank, make_pin_factory

    factory = make_pin_factory(cfg.service.pin_factory)
    try:
        bank = RelayBank(
            cfg.lamps,
            factory,
            estop_pin=cfg.safety.estop_pin,
            indicator_pin=cfg.safety.indicator_pin,
            wire_feedback=wire_feedback,
        )
    except BaseException:
        factory.close()
        raise
    return bank, factory


def check_pins(cfg, bank_or_error) -> Check:
    if isinstance(bank_or_error, Exception):
        return Check(
            "pins",
            FAIL,
            f"cannot claim the pins with pin_factory {cfg.service.pin_factory!r}: "
            f"{bank_or_error} (is the user in the gpio group? is another program using them?)",
        )
    pins = ", ".join(str(lamp.relay_pin) for lamp in cfg.lamps)
    if cfg.service.pin_factory == "mock":
        return Check(
            "pins",
            WARN,
            'pin_factory is "mock": simulated pins, no relay will switch (set pin_factory = "lgpio" on a Pi)',
        )
    return Check("pins", OK, f"relays on BCM {pins} claimed and left OFF")


def _wait_for(predicate: Callable[[], bool], timeout: float, sleep: Callable[[float], None]) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        sleep(0.01)
    return True


def click_lamp(
    bank,
    index: int,
    lamp,
    link: FirmwareSession | None,
    *,
    on_s: float,
    wait_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Check:
    """Switch one lamp on for on_s (its firmware relay armed too) and read its feedback input.

    Each pause (on_s, and wait_s for the feedback to follow) stays well inside the
    firmware's watchdog, with a frame between them, so the board never cuts mid-test.
    """
    name = f"click {lamp.id}"
    try:
        if link is not None:
            link.command("PING")
            link.command("ARM", index, int((on_s + wait_s) * 1000) + 1000)
        bank.set(index, True)
        powered = (
            _wait_for(lambda: bank.feedback_on(index), wait_s, sleep) if bank.feedback_on(index) is not None else None
        )
        if link is not None:
            link.command("PING")
        sleep(on_s)
    except ToolFailed as exc:
        return Check(name, FAIL, f"{exc}; the Pi's relay stayed off")
    finally:
        bank.set(index, False)
        if link is not None:
            with contextlib.suppress(ToolFailed):  # the firmware's own timer cuts it a second later
                link.command("OFF", index)
    if powered is None:
        return Check(
            name, WARN, f"relay {lamp.relay_pin} clicked; no feedback_pin: check by eye or ear that the lamp lit"
        )
    released = _wait_for(lambda: not bank.feedback_on(index), wait_s, sleep)
    if not powered:
        return Check(
            name,
            FAIL,
            f"feedback pin {lamp.feedback_pin} stayed off while the lamp was switched on: "
            f"check the relay, the fuse, the bulb and the sensor wiring",
        )
    if not released:
        return Check(
            name,
            FAIL,
            f"feedback pin {lamp.feedback_pin} still reads powered after the relay opened: "
            f"stuck relay? cut the power and call the electrician",
        )
    return Check(name, OK, f"lamp powered and released; feedback pin {lamp.feedback_pin} followed")


def click_all(cfg, bank, *, on_s: float, sleep) -> list[Check]:
    link = None
    if cfg.firmware is not None:
        try:
            link = FirmwareSession(cfg.firmware.port)
            link.hello()
        except ToolFailed as exc:
            if link is not None:
                link.close()
            return [Check("click", FAIL, f"{exc}; no lamp was switched")]
    # Every pause well inside the firmware's watchdog (0.2 s at the shortest allowed).
    limit = cfg.firmware.watchdog_s / 4 if cfg.firmware is not None else FEEDBACK_WAIT_S
    on_s, wait_s = min(on_s, limit), min(FEEDBACK_WAIT_S, limit)
    try:
        return [
            click_lamp(bank, i, lamp, link, on_s=on_s, wait_s=wait_s, sleep=sleep) for i, lamp in enumerate(cfg.lamps)
        ]
    finally:
        bank.all_off()
        if link is not None:
            link.close()


def run_checks(
    path: str,
    *,
    click: bool = False,
    synchronised=clocksync.clock_synchronised,
    click_s: float = CLICK_S,
    sleep: Callable[[float], None] = time.sleep,
    wire_feedback: bool = True,
) -> list[Check]:
    """Every check in order; hardware checks are skipped while the service runs (they would disturb it)."""
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as exc:
        return [Check("config", FAIL, f"{exc} (fix it, then run `lampctl check-config`)")]
    checks = [Check("config", OK, f"{cfg.path}: {len(cfg.lamps)} lamp(s), pin_factory {cfg.service.pin_factory}")]
    checks.append(check_port(cfg))
    checks.append(check_database(cfg))
    checks.append(check_clock(synchronised))
    if service_answers(cfg):
        why = "the service is running and owns the pins and the firmware link"
        return checks + [Check("firmware", SKIP, why), Check("pins", SKIP, why)]
    checks.append(check_firmware(cfg))
    try:
        bank, factory = claim_relays(cfg, wire_feedback)
    except Exception as exc:  # gpiozero and lgpio raise many types; each means "cannot claim"
        return checks + [check_pins(cfg, exc)]
    try:
        checks.append(check_pins(cfg, bank))
        if click:
            checks += click_all(cfg, bank, on_s=click_s, sleep=sleep)
    finally:
        bank.close()
        factory.close()
    return checks
