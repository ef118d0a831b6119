"""The maintenance commands (backup, restore, prune-events, doctor, firmware) and the fleet's `collect`.

Each command here reads its arguments, calls its tool (lampctl.tools, lampctl.fleet.collector) and
prints what it did; a tool's ToolFailed becomes Failed (exit 1) with the tool's own sentence.
The tools are imported only when one of these commands is named, so `serve` never loads them.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

from lampctl.cli.args import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Failed,
    add_config,
    command,
    config_path,
    count_in,
    duration,
    load_config,
)


def add_parsers(sub) -> None:
    """Register every maintenance command, as lampctl.cli does the main ones."""
    _add_backup(sub)
    _add_doctor(sub)
    _add_firmware(sub)
    _add_collect(sub)


def tool(run: Callable[..., int]) -> Callable[..., int]:
    """A command that calls a tool: the tool's ToolFailed is the command's Failed, same sentence."""

    @functools.wraps(run)
    def guarded(args, **options) -> int:
        from lampctl.tools import ToolFailed

        try:
            return run(args, **options)
        except ToolFailed as exc:
            raise Failed(str(exc)) from None

    return guarded


# ---- backup, restore, prune-events ---------------------------------------------------------
def _counts(result) -> str:
    return f"{result.sessions} session(s), {result.events} event(s), integrity ok"


@tool
def run_backup(args) -> int:
    from lampctl.tools import backup

    cfg = load_config(args)
    result = backup.backup_database(cfg.service.database, Path(args.dest), args.keep)
    print(f"backup: {result.path} ({_counts(result)})")
    for old in result.removed:
        print(f"removed old backup {old}")
    return EXIT_OK


@tool
def run_restore(args) -> int:
    from lampctl.tools import backup, service_stopped

    cfg = load_config(args)
    with service_stopped(cfg, "restoring"):
        result, saved = backup.restore_database(cfg.service.database, Path(args.backup))
    print(f"restored {result.path} from {args.backup} ({_counts(result)})")
    if saved:
        print(f"the previous database was saved as {saved}")
    if result.kept_latches:
        print(
            f"kept {result.kept_latches} latched fault(s) from before the restore: "
            "an admin resets each lamp once its cause is checked"
        )
    return EXIT_OK


@tool
def run_prune(args) -> int:
    from lampctl.tools import backup

    cfg = load_config(args)
    events, sessions = backup.prune_events(cfg.service.database, args.older_than, sessions=args.sessions)
    print(
        f"deleted {events} event(s)"
        + (f" and {sessions} ended session(s)" if args.sessions else "")
        + f" older than {args.older_than:g} day(s)"
    )
    return EXIT_OK


def _add_backup(sub) -> None:
    from lampctl.tools import backup

    p = command(
        sub,
        "backup",
        run_backup,
        help="copy the database into DEST (safe while serving), keep the newest N",
        description="SQLite online backup into DEST/lampctl-<UTC time>.db, checked with "
        "PRAGMA integrity_check; older copies beyond --keep are removed.",
    )
    p.add_argument("dest", metavar="DEST", help="directory for the backups (created if missing)")
    p.add_argument(
        "--keep",
        type=count_in(1, 10000),
        default=backup.DEFAULT_KEEP,
        help=f"how many backups to keep (default {backup.DEFAULT_KEEP})",
    )
    add_config(p)
    p = command(
        sub,
        "restore",
        run_restore,
        help="replace the database with a backup (the service must be stopped)",
        description="Checks BACKUP, saves the current database under before-restore/ beside it, "
        "then copies BACKUP in, keeping the current latched faults and login lockouts "
        "(a restore never unlatches). Stop the service first; run as its user.",
    )
    p.add_argument("backup", metavar="BACKUP", help="a file made by lampctl backup")
    add_config(p)
    most = backup.PRUNE_MOST_DAYS
    p = command(
        sub,
        "prune-events",
        run_prune,
        help="delete audit events older than DAYS (sessions too with --sessions)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--older-than",
        type=duration("days", (most * 86400, str(most))),
        required=True,
        metavar="DAYS",
        help=f"age in days of the oldest event to keep (at most {most})",
    )
    p.add_argument(
        "--sessions", action="store_true", help="also delete ended sessions older than DAYS (they are kept otherwise)"
    )
    add_config(p)


# ---- doctor --------------------------------------------------------------------------------
@tool
def run_doctor(args, **options) -> int:
    from lampctl.tools import doctor

    if args.click:
        print("click test: each lamp comes on for half a second; nobody may be under the lamps")
    checks = doctor.run_checks(config_path(args), click=args.click, **options)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c for c in checks if c.status == doctor.FAIL]
    print(f"doctor: {len(checks)} check(s), {len(failed)} failed" + ("" if failed else ": ready to serve"))
    if checks[0].status == doctor.FAIL:
        return EXIT_USAGE  # a bad config is a usage error, as everywhere in lampctl
    return EXIT_FAILED if failed else EXIT_OK


def _add_doctor(sub) -> None:
    p = command(
        sub,
        "doctor",
        run_doctor,
        help="check config, pins, database, firmware, clock and port; say what to fix",
        description="Run with the service stopped, as the service's user "
        "(sudo -u lampctl lampctl doctor). Exit 1 if any check fails.",
    )
    p.add_argument(
        "--click", action="store_true", help="also switch each lamp on for half a second and read its feedback input"
    )
    add_config(p)


# ---- firmware check, flash ----------------------------------------------------------------
@tool
def run_firmware(args) -> int:
    return _firmware_check(args) if args.firmware_command == "check" else _firmware_flash(args)


def _firmware_check(args) -> int:
    from lampctl.tools import firmware, service_stopped

    cfg = load_config(args)
    if cfg.firmware is None:
        raise Failed(f"{cfg.path} has no [firmware] table: there is no microcontroller to check")
    with service_stopped(cfg, "talking to the firmware"):
        info, guards = firmware.query_board(cfg)
    print(firmware.describe(info, cfg.firmware.port))
    if guards is not None:
        print(f"guards: {firmware.describe_guards(guards)}")
    problems = firmware.firmware_mismatches(info, cfg, guards)
    for problem in problems:
        print(f"MISMATCH {problem}")
    if problems:
        print(f"lampctl: the firmware does not match {cfg.path}", file=sys.stderr)
        return EXIT_FAILED
    print(f"OK: the firmware matches {cfg.path}")
    return EXIT_OK


def _firmware_flash(args) -> int:
    from lampctl.tools import firmware, service_stopped

    cfg = load_config(args)
    if cfg.firmware is None:
        raise Failed(f"{cfg.path} has no [firmware] table: add one (port, watchdog_s) before flashing")
    port = args.port or cfg.firmware.port
    pins = firmware.pico_pins(cfg, args.pico_pins)
    files = firmware.board_files(cfg, pins, firmware.pico_active_high(cfg, args.pico_active_high))
    if args.dry_run:
        for board, text in files:
            print(f"would copy :{board} ({len(text.encode())} bytes)")
        print("--- settings.py ---")
        print(files[-1][1], end="")
        print("--- then ---")
        print(" ".join(firmware.mpremote_command("mpremote", port, Path("STAGE"))))
        return EXIT_OK
    if "://" in port:
        raise Failed(f"flashing needs the board's serial device (e.g. /dev/lampctl-pico), not {port}: pass --port")
    with service_stopped(cfg, "flashing the firmware"):
        firmware.flash(port, files)
    print(
        f"flashed {len(files)} files to {port} (relays on {', '.join(f'GP{p}' for p in pins)}); "
        f"remove the maintenance jumper, replug the board, then run `lampctl firmware check`"
    )
    return EXIT_OK


def _pin_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace("GP", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of Pico GPIO numbers such as 2,3"
        ) from None


def _add_firmware(sub) -> None:
    p = command(sub, "firmware", run_firmware, help="check or flash the microcontroller (the second channel)")
    fsub = p.add_subparsers(dest="firmware_command", metavar="ACTION", required=True)
    q = fsub.add_parser(
        "check", help="HELLO the board; exit 1 if its version, lamps, watchdog or guards differ from the config"
    )
    add_config(q)
    q = fsub.add_parser("flash", help="copy the firmware with settings generated from the config through mpremote")
    q.add_argument("--dry-run", action="store_true", help="print the files and settings it would copy, copy nothing")
    q.add_argument("--port", help="serial device of the board (default: firmware.port)")
    q.add_argument(
        "--pico-pins",
        type=_pin_list,
        metavar="GP,GP,...",
        help="Pico GPIO of each lamp's relay, lamp 0 first (default: 2,3,... as in docs/wiring.md)",
    )
    level = q.add_mutually_exclusive_group()
    level.add_argument(
        "--pico-active-high",
        dest="pico_active_high",
        action="store_true",
        default=None,
        help="the Pico's relay board switches on a high input",
    )
    level.add_argument(
        "--pico-active-low",
        dest="pico_active_high",
        action="store_false",
        help="the Pico's relay board switches on a low input (default: as the lamps' active_high)",
    )
    add_config(q)


# ---- collect (the fleet's central log) -----------------------------------------------------
def run_collect(args) -> int:
    from lampctl.fleet.collector import CentralLog, Collector, load_collector_config
    from lampctl.fleet.logins import CollectorLogins, accounts_path
    from lampctl.platform.logs import configure_logging
    from lampctl.platform.runtime import DamagedFile
    from lampctl.service.serving import serve_fleet
    from lampctl.storage.db import StoreError

    cfg = load_collector_config(config_path(args))
    configure_logging()
    try:
        central = CentralLog(cfg.database)
    except (sqlite3.Error, OSError) as exc:
        raise Failed(f"cannot open the central log {cfg.database}: {exc}") from None
    try:
        logins = CollectorLogins(cfg.database)
    except (sqlite3.Error, OSError, StoreError) as exc:
        raise Failed(f"cannot open the collector's accounts {accounts_path(cfg.database)}: {exc}") from None
    try:
        collector = Collector(cfg.mqtt, central)
    except ImportError as exc:
        raise Failed(f"paho-mqtt cannot be loaded ({exc}): pip install 'lampctl[mqtt]'") from None
    try:
        server = serve_fleet(collector, logins, cfg.host, cfg.port)
    except DamagedFile as exc:
        raise Failed(str(exc)) from None
    except OSError as exc:
        raise Failed(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    if not logins.admins():
        print(
            f"lampctl collect: no admin can log in yet: add one with `lampctl user add NAME --role admin "
            f"--pin PIN --config {cfg.path}`",
            file=sys.stderr,
            flush=True,
        )

    def leave(signum, frame):
        raise SystemExit(EXIT_OK)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, leave)
    logins.start()
    collector.start()
    print(f"lampctl collect: listening on http://{cfg.host}:{server.port}/", flush=True)
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        server.close()
        collector.close()
        logins.close()
    return EXIT_OK


def _add_collect(sub) -> None:
    from lampctl.fleet.discovery import records_topic

    p = command(
        sub,
        "collect",
        run_collect,
        help="keep the central log of every node (MQTT) and serve its pages",
        description=f"Subscribe to {records_topic('+', 'sessions')} and "
        f"{records_topic('+', 'events')} on the broker in "
        "central.toml's [mqtt], store them in [collector] database and serve the "
        "fleet, log, CSV and usage pages on [collector] bind to its admins (log in with a "
        "PIN; add users with `lampctl user add ... --config central.toml`).",
    )
    add_config(p)
