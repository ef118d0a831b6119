"""The `lampctl` command line: serve, check-config, users, tokens, the log, and remote control of the service."""

from __future__ import annotations

# Only argparse and the config at module level: `lampctl serve` must reach the relay claim
# (S1) with as little imported as possible, so every other import sits in the command using it.
import argparse
import os
import sys

from lampctl import config as config_mod
from lampctl.cli import args as cli_args
from lampctl.cli.args import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError, Failed, UsageError, command


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One sentence: argparse would list every command after a mistyped one.
        if "invalid choice" in message:
            message = message.split(" (choose from", 1)[0] + f" (see '{self.prog} --help')"
        super().error(message)


def build_parser(with_tools: bool = True, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Every command; without the maintenance tools when with_tools is False, or when argv names a main command."""
    parser = _Parser(
        prog="lampctl",
        description="Timed, fail-safe control of infrared heat lamps through relays.",
        epilog="Exit codes: 0 done, 1 refused or failed at run time, 2 bad usage or config.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_main_commands(sub)
    # The main commands (serve above all: S1, relays OFF first) parse without importing the
    # maintenance tools; help, a tool's name or a typo get the whole list.
    if with_tools and not (argv and argv[0] in sub.choices):
        from lampctl.cli import tools as cli_tools

        cli_tools.add_parsers(sub)
    return parser


def _add_main_commands(sub) -> None:
    p = command(sub, "serve", cmd_serve, help="run the service: relays, timers, log, web panel and API")
    cli_args.add_config(p)
    p.add_argument(
        "--simulate",
        action="store_true",
        help="use gpiozero's mock pins whatever the config says, and with a [firmware] table "
        "a simulated microcontroller instead of firmware.port",
    )

    p = command(sub, "check-config", cmd_check_config, help="validate the config without touching hardware")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="check it as `serve --simulate` uses it: mock pins and a simulated microcontroller",
    )
    cli_args.add_config(p)
    _add_account_commands(sub)
    _add_log_command(sub)
    _add_remote_commands(sub)


def _add_account_commands(sub) -> None:
    p = command(sub, "user", cmd_user, help="manage practitioner and admin accounts")
    usub = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    q = usub.add_parser("add", help="add a user")
    q.add_argument(
        "name",
        type=cli_args.user_name,
        help="letters of any script, digits, spaces and . - ' _, at most 32 characters; one user per "
        "name whatever its case (quote a name with spaces)",
    )
    q.add_argument("--role", required=True, choices=["practitioner", "admin"])
    q.add_argument("--pin", required=True, type=cli_args.pin, help="4 to 8 digits")
    cli_args.add_config(q)
    q = usub.add_parser("list", help="list users")
    cli_args.add_config(q)
    q = usub.add_parser("remove", help="remove a user and their API tokens")
    q.add_argument("name", help="the user's name, in any case")
    cli_args.add_config(q)

    p = command(sub, "token", cmd_token, help="API tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    q = tsub.add_parser("create", help="create an API token for USER; prints the token alone")
    q.add_argument("user", help="the user's name, in any case")
    cli_args.add_config(q)


def _add_log_command(sub) -> None:
    p = command(
        sub,
        "log",
        cmd_log,
        help="print the session log (read from the database)",
        description="Print the session log. The table shows local time to the second (the zone is named in "
        "its header), or UTC with --utc; --csv keeps the database's UTC timestamps.",
    )
    p.add_argument(
        "--from",
        dest="start",
        metavar="WHEN",
        type=_when,
        help="YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM|Z], inclusive; local time unless a zone is given",
    )
    p.add_argument(
        "--to", dest="end", metavar="WHEN", type=_when, help="same forms, inclusive (a date means the whole day)"
    )
    p.add_argument("--lamp", metavar="ID", help="only this lamp (an id from the config)")
    p.add_argument("--csv", action="store_true", help="CSV with a header row instead of a table")
    p.add_argument("--utc", action="store_true", help="show times in UTC instead of local time")
    cli_args.add_config(p)


def _when(text: str):
    """argparse type of --from and --to (lampctl.cli.log.parse_when), imported only when `log` reads one."""
    from lampctl.cli.log import parse_when

    try:
        return parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_remote_commands(sub) -> None:
    remote = "talks to the running service; token from --token, $LAMPCTL_TOKEN, or the service's cli.token file"
    p = command(sub, "status", cmd_status, help="show every lamp (" + remote + ")")
    _add_remote(p)
    p = command(sub, "start", cmd_start, help="start a timed session (" + remote + ")")
    _add_duration(p)
    p.add_argument(
        "--new-patient",
        action="store_true",
        help="a new patient: do not continue the last session's time budget even within the "
        "lamp's rest window (rest_window_s)",
    )
    p = command(sub, "extend", cmd_extend, help="add time to a running session (" + remote + ")")
    _add_duration(p)
    p = command(sub, "stop", cmd_stop, help="stop one lamp (" + remote + ")")
    p.add_argument("lamp", metavar="LAMP")
    _add_remote(p)
    p = command(sub, "stop-all", cmd_stop_all, help="turn every lamp off at once (" + remote + ")")
    _add_remote(p)
    p = command(
        sub,
        "estop",
        cmd_estop,
        help="emergency stop: every lamp off and latched in fault until an admin "
        "resets it, as the E-stop button does (" + remote + ")",
    )
    _add_remote(p)
    p = command(sub, "reset", cmd_reset, help="clear a lamp's latched fault, as an admin (" + remote + ")")
    p.add_argument("lamp", metavar="LAMP")
    _add_remote(p)


def _add_duration(p: argparse.ArgumentParser) -> None:
    p.add_argument("lamp", metavar="LAMP")
    dur = p.add_mutually_exclusive_group(required=True)
    dur.add_argument("--minutes", type=cli_args.duration("minutes"), help="duration in minutes")
    dur.add_argument("--seconds", type=cli_args.duration("seconds"), help="duration in seconds")
    _add_remote(p)


def _add_remote(p: argparse.ArgumentParser) -> None:
    cli_args.add_config(p)
    p.add_argument("--token", help="API token (default: $LAMPCTL_TOKEN, else the service's cli.token file)")
    p.add_argument("--json", action="store_true", help="print the API's JSON reply")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv=argv).parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here when the output was small
        return code
    except config_mod.ConfigError as exc:
        print(f"lampctl: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        # A usage error names the command, as argparse's own do.
        where = f"lampctl {args.command}: error" if exc.exit_code == EXIT_USAGE else "lampctl"
        print(f"{where}: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `lampctl log | head`: the reader has gone, which is no error worth a message.
        _silence_stdout()
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the user, the traceback kept for its fixer
        known = _known_failure(exc, args)
        if known:
            print(f"lampctl: {known}", file=sys.stderr)
            return EXIT_FAILED
        what = " ".join(str(exc).split())[:200]  # one line, whatever the exception holds
        print(f"lampctl: internal error: {type(exc).__name__}: {what}; {_save_details(argv)}", file=sys.stderr)
        return EXIT_FAILED


def _known_failure(exc: BaseException, args) -> str | None:
    """One sentence with what to do for a damaged, newer or misplaced database or runtime file; None for a bug.

    Checked by type where the module is already loaded, so `serve` imports nothing for it.
    """
    sqlite3 = sys.modules.get("sqlite3")
    db = sys.modules.get("lampctl.storage.db")
    runtime = sys.modules.get("lampctl.platform.runtime")
    try:
        where = str(cli_args.load_config(args).service.database)
    except Exception:  # noqa: BLE001 - the sentence still helps without the path
        where = "the database"
    if runtime is not None and isinstance(exc, runtime.DamagedFile):
        return str(exc)
    if db is not None and isinstance(exc, db.StoreError) and "schema version" in str(exc):
        return (
            f"{where}: {exc} Upgrade lampctl to the version that wrote it, or restore a backup made by this "
            "version (lampctl restore FILE)."
        )
    if sqlite3 is not None and isinstance(exc, sqlite3.DatabaseError):
        text = " ".join(str(exc).split())[:200]
        if isinstance(exc, sqlite3.OperationalError) and "unable to open" in text:
            return (
                f"{where} cannot be opened ({text}): service.database must name a file, not a folder, in a "
                "folder the service's user may write."
            )
        return (
            f"{where} is damaged or is not a lampctl database ({text}): restore a backup with "
            "`lampctl restore FILE`, or move the file away to start with an empty log."
        )
    return None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again (Python docs, SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (captured by a test): nothing will flush it
        pass


def _save_details(argv: list[str]) -> str:
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="lampctl-error-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(f"lampctl {' '.join(argv)}\n{traceback.format_exc()}")
        return f"details in {path}"
    except OSError as exc:
        return f"details could not be saved ({exc.strerror})"


def cmd_serve(args) -> int:
    from lampctl.platform.logs import configure_logging
    from lampctl.service import serve

    configure_logging()
    try:
        return serve(cli_args.config_path(args), simulate=args.simulate)
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
    cfg = cli_args.load_config(args)
    if getattr(args, "simulate", False):
        # `serve --simulate` replaces the configured port with a simulator of its own.
        fw = ", firmware simulated (the configured port is not used)"
    else:
        fw = f", firmware on {cfg.firmware.port}" if cfg.firmware else ", no firmware backstop"
    print(f"{cfg.path}: OK: {len(cfg.lamps)} lamp(s) ({', '.join(l.id for l in cfg.lamps)}){fw}")
    return EXIT_OK


def _lamp_id(cfg, lamp_id: str) -> str:
    """A lamp named on the command line must be in the config: a typo gets a sentence, not an empty answer."""
    if not any(lamp.id == lamp_id for lamp in cfg.lamps):
        raise UsageError(
            f"there is no lamp {lamp_id[:40]!r} in {cfg.path} (lamps: {', '.join(lamp.id for lamp in cfg.lamps)})"
        )
    return lamp_id


def cmd_user(args) -> int:
    from lampctl.cli import store as cli_store

    cfg = cli_args.load_config(args)
    if args.user_command == "add":
        print(f"added {args.role} {cli_store.add_user(cfg, args.name, args.role, args.pin)}")
    elif args.user_command == "remove":
        print(f"removed {cli_store.remove_user(cfg, args.name)}")
    else:
        for user in cli_store.users(cfg):
            print(f"{user['name']:<20} {user['role']:<13} since {user['created_at']}")
    return EXIT_OK


def cmd_token(args) -> int:
    from lampctl.cli import store as cli_store

    print(cli_store.create_token(cli_args.load_config(args), args.user))
    return EXIT_OK


def cmd_log(args) -> int:
    from lampctl.cli import store as cli_store
    from lampctl.cli.log import print_table
    from lampctl.cli.store import write_log_csv

    cfg = cli_args.load_config(args)
    lamp = _lamp_id(cfg, args.lamp) if args.lamp is not None else None
    start = args.start.bound(upper=False) if args.start else None
    end = args.end.bound(upper=True) if args.end else None
    if args.csv:
        write_log_csv(cfg, sys.stdout, start=start, end=end, lamp=lamp)
    else:
        print_table(cli_store.sessions(cfg, start=start, end=end, lamp=lamp), sys.stdout, utc=args.utc)
    return EXIT_OK


# ---- remote commands ---------------------------------------------------------------------
def _remote(args, method: str, action: str, body: dict | None = None) -> int:
    """One API call; action is "/stop-all" for the whole bank, or "start" etc. for args.lamp."""
    from lampctl.cli.remote import RemoteFailed, call_api, print_lamps, stop_sentences

    cfg = cli_args.load_config(args)
    path = action if action.startswith("/") else _lamp_path(cfg, args.lamp, action)
    try:
        reply = call_api(cfg, args.token, method, path, body)
    except RemoteFailed as exc:
        if exc.status != 400:
            raise
        # The service found the request malformed or too long: a usage error like argparse's own.
        raise UsageError(str(exc)) from None
    if args.json:
        import json

        print(json.dumps(reply, indent=2))
    else:
        print_lamps(_lamps(reply) if action.startswith("/") else _lamp(reply))
        for line in stop_sentences(reply):  # what a Stop did: ended, cancelled a start, already off
            print(line)
    return EXIT_OK


def _lamp_path(cfg, lamp_id: str, action: str) -> str:
    from urllib.parse import quote

    return f"/lamps/{quote(_lamp_id(cfg, lamp_id), safe='')}/{action}"


def _duration(args) -> dict:
    return {"minutes": args.minutes} if args.minutes is not None else {"seconds": args.seconds}


def _lamps(reply: dict) -> list:
    lamps = reply.get("lamps")
    if not isinstance(lamps, list) or not all(isinstance(lamp, dict) for lamp in lamps):
        raise Failed("the service's reply has no list of lamps: is it a newer or older lampctl?")
    return lamps


def _lamp(reply: dict) -> list:
    if not isinstance(reply.get("lamp"), dict):
        raise Failed("the service's reply has no lamp: is it a newer or older lampctl?")
    return [reply["lamp"]]


def cmd_status(args) -> int:
    return _remote(args, "GET", "/lamps")


def cmd_start(args) -> int:
    return _remote(args, "POST", "start", _duration(args) | ({"new_patient": True} if args.new_patient else {}))


def cmd_extend(args) -> int:
    return _remote(args, "POST", "extend", _duration(args))


def cmd_stop(args) -> int:
    return _remote(args, "POST", "stop")


def cmd_stop_all(args) -> int:
    return _remote(args, "POST", "/stop-all")


def cmd_estop(args) -> int:
    code = _remote(args, "POST", "/estop")
    if not args.json:
        print("emergency stop: every lamp is off and latched until an admin resets it (lampctl reset LAMP)")
    return code


def cmd_reset(args) -> int:
    return _remote(args, "POST", "reset")


if __name__ == "__main__":
    sys.exit(main())
