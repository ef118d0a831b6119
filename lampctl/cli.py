"""The `lampctl` command line: serve, check-config, users, tokens, the log, and remote control of the service."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from lampctl import config as config_mod
from lampctl.safety import is_duration

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Failed(Exception):
    """A run-time refusal or failure: message printed, exit 1."""


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH",
                   help="config file (default: $LAMPCTL_CONFIG, else ./config.toml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lampctl",
        description="Timed, fail-safe control of infrared heat lamps through relays.",
        epilog="Exit codes: 0 done, 1 refused or failed at run time, 2 bad usage or config.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("serve", help="run the service: relays, timers, log, web panel and API")
    _add_config(p)
    p.add_argument("--simulate", action="store_true",
                   help="use simulated GPIO (gpiozero's mock pins) whatever the config says")

    p = sub.add_parser("check-config", help="validate the config without touching hardware")
    _add_config(p)

    p = sub.add_parser("user", help="manage practitioner and admin accounts")
    usub = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    q = usub.add_parser("add", help="add a user")
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=["practitioner", "admin"])
    q.add_argument("--pin", required=True, help="4 to 8 digits")
    _add_config(q)
    q = usub.add_parser("list", help="list users")
    _add_config(q)
    q = usub.add_parser("remove", help="remove a user and their API tokens")
    q.add_argument("name")
    _add_config(q)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    q = tsub.add_parser("create", help="create an API token for USER; prints the token alone")
    q.add_argument("user")
    _add_config(q)

    p = sub.add_parser("log", help="print the session log (read from the database)")
    p.add_argument("--from", dest="start", metavar="WHEN", help="ISO-8601 date or time, inclusive")
    p.add_argument("--to", dest="end", metavar="WHEN", help="ISO-8601 date or time, inclusive (a date means the whole day)")
    p.add_argument("--lamp", metavar="ID", help="only this lamp")
    p.add_argument("--csv", action="store_true", help="CSV with a header row instead of a table")
    _add_config(p)

    remote = "talks to the running service; token from --token, $LAMPCTL_TOKEN, or the service's cli.token file"
    p = sub.add_parser("status", help="show every lamp (" + remote + ")")
    _add_remote(p)
    p = sub.add_parser("start", help="start a timed session (" + remote + ")")
    _add_duration(p)
    p = sub.add_parser("extend", help="add time to a running session (" + remote + ")")
    _add_duration(p)
    p = sub.add_parser("stop", help="stop one lamp (" + remote + ")")
    p.add_argument("lamp", metavar="LAMP")
    _add_remote(p)
    p = sub.add_parser("stop-all", help="turn every lamp off at once (" + remote + ")")
    _add_remote(p)
    p = sub.add_parser("reset", help="clear a lamp's latched fault, as an admin (" + remote + ")")
    p.add_argument("lamp", metavar="LAMP")
    _add_remote(p)
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if not is_duration(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number greater than 0")
    return value


def _add_duration(p: argparse.ArgumentParser) -> None:
    p.add_argument("lamp", metavar="LAMP")
    dur = p.add_mutually_exclusive_group(required=True)
    dur.add_argument("--minutes", type=_positive, help="duration in minutes")
    dur.add_argument("--seconds", type=_positive, help="duration in seconds")
    _add_remote(p)


def _add_remote(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument("--token", help="API token (default: $LAMPCTL_TOKEN, else the service's cli.token file)")
    p.add_argument("--json", action="store_true", help="print the API's JSON reply")


def config_path(args) -> str:
    return args.config or os.environ.get("LAMPCTL_CONFIG") or "config.toml"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except config_mod.ConfigError as exc:
        print(f"lampctl: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failed as exc:
        print(f"lampctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def cmd_serve(args) -> int:
    from lampctl.service import configure_logging, serve

    configure_logging()
    try:
        return serve(config_path(args), simulate=args.simulate)
    except OSError as exc:
        # The usual one: the port is taken by another lampctl.
        raise Failed(f"cannot serve: {exc.strerror or exc}") from None
    except Exception as exc:
        from gpiozero.exc import GPIOZeroError

        # A pin factory missing or a pin claimed by another process, or the simulator
        # failing to start: one line, and the relays were never switched on.
        if isinstance(exc, (GPIOZeroError, RuntimeError)):
            raise Failed(f"cannot serve: {exc}") from None
        raise


def cmd_check_config(args) -> int:
    cfg = config_mod.load(config_path(args))
    fw = f", firmware on {cfg.firmware.port}" if cfg.firmware else ", no firmware backstop"
    print(f"{cfg.path}: OK: {len(cfg.lamps)} lamp(s) ({', '.join(l.id for l in cfg.lamps)}){fw}")
    return EXIT_OK


@contextmanager
def _opened_store(args):
    """The usage log of the config's database; a StoreError becomes exit 1 with its sentence."""
    from lampctl.store import StoreError, UsageLog

    cfg = config_mod.load(config_path(args))
    try:
        log = UsageLog(cfg.service.database)
    except Exception as exc:  # sqlite3 errors: a missing directory, a locked or corrupt file
        raise Failed(f"cannot open the database {cfg.service.database}: {exc}") from None
    try:
        yield log
    except StoreError as exc:
        raise Failed(str(exc)) from None
    finally:
        log.close()


def cmd_user(args) -> int:
    with _opened_store(args) as log:
        if args.user_command == "add":
            log.add_user(args.name, args.role, args.pin, by="cli")
            print(f"added {args.role} {args.name}")
        elif args.user_command == "remove":
            log.remove_user(args.name)
            log.event(None, None, None, "cli", f"user {args.name} removed")
            print(f"removed {args.name}")
        else:
            for user in log.users():
                print(f"{user['name']:<20} {user['role']:<13} since {user['created_at']}")
    return EXIT_OK


def cmd_token(args) -> int:
    with _opened_store(args) as log:
        print(log.create_token(args.user))
    return EXIT_OK


def cmd_log(args) -> int:
    from lampctl.reports import SESSION_COLUMNS, csv_cell

    with _opened_store(args) as log:
        rows = log.iter_sessions(start=args.start, end=args.end, lamp=args.lamp)
        if args.csv:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(SESSION_COLUMNS)
            for row in rows:
                writer.writerow([csv_cell(row[c]) for c in SESSION_COLUMNS])
        else:
            print(f"{'id':>5}  {'lamp':<10} {'user':<12} {'started':<24} {'planned':>8} {'actual':>8}  end")
            for row in rows:
                actual = "" if row["actual_s"] is None else f"{row['actual_s']:.1f}"
                print(f"{row['id']:>5}  {row['lamp_id']:<10} {row['user']:<12} {row['started_at']:<24} "
                      f"{row['planned_s']:>8.1f} {actual:>8}  {row['end_reason'] or 'running'}")
    return EXIT_OK


# ---- remote commands ---------------------------------------------------------------------
def _api(args, method: str, path: str, body: dict | None = None) -> dict:
    cfg = config_mod.load(config_path(args))
    token = args.token or os.environ.get("LAMPCTL_TOKEN")
    if not token:
        token_file = Path(cfg.service.database).parent / "cli.token"
        try:
            token = token_file.read_text().strip()
        except OSError:
            raise Failed(f"no API token: pass --token, set LAMPCTL_TOKEN, or run as the service's user "
                         f"(cannot read {token_file})") from None
    host = cfg.service.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{cfg.service.port}/api{path}"
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise Failed(f"refused ({exc.code}): {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Failed(f"cannot reach the service at {url}: {reason} (is 'lampctl serve' running?)") from None


def _duration(args) -> dict:
    return {"minutes": args.minutes} if args.minutes is not None else {"seconds": args.seconds}


def _print_lamps(lamps: list[dict]) -> None:
    for lamp in lamps:
        extra = ""
        if lamp["state"] == "on":
            m, s = divmod(int(round(lamp["remaining_s"] or 0)), 60)
            extra = f"{m}:{s:02d} left, session {lamp['session_id']} by {lamp.get('user')}"
        elif lamp["state"] == "cooldown":
            extra = f"{lamp.get('cooldown_remaining_s', 0):.0f} s of cooldown left"
        elif lamp["state"] == "fault":
            extra = lamp.get("fault_reason") or ""
        relay = "relay ON " if lamp["relay_on"] else "relay off"
        print(f"{lamp['id']:<12} {lamp['state']:<9} {relay}  {extra}".rstrip())


def _remote(args, method, path, body=None, pick=None) -> int:
    reply = _api(args, method, path, body)
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        _print_lamps(pick(reply))
    return EXIT_OK


def cmd_status(args) -> int:
    return _remote(args, "GET", "/lamps", pick=lambda r: r["lamps"])


def cmd_start(args) -> int:
    return _remote(args, "POST", f"/lamps/{quote(args.lamp, safe='')}/start", _duration(args), pick=lambda r: [r["lamp"]])


def cmd_extend(args) -> int:
    return _remote(args, "POST", f"/lamps/{quote(args.lamp, safe='')}/extend", _duration(args), pick=lambda r: [r["lamp"]])


def cmd_stop(args) -> int:
    return _remote(args, "POST", f"/lamps/{quote(args.lamp, safe='')}/stop", pick=lambda r: [r["lamp"]])


def cmd_stop_all(args) -> int:
    return _remote(args, "POST", "/stop-all", pick=lambda r: r["lamps"])


def cmd_reset(args) -> int:
    return _remote(args, "POST", f"/lamps/{quote(args.lamp, safe='')}/reset", pick=lambda r: [r["lamp"]])


COMMANDS = {
    "serve": cmd_serve, "check-config": cmd_check_config, "user": cmd_user, "token": cmd_token,
    "log": cmd_log, "status": cmd_status, "start": cmd_start, "extend": cmd_extend, "stop": cmd_stop,
    "stop-all": cmd_stop_all, "reset": cmd_reset,
}


if __name__ == "__main__":
    sys.exit(main())
