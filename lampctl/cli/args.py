"""The `lampctl` command line's one framework: exit codes, the errors that set them, how a command is
registered, and the argument types (a bad value is a usage error, exit 2, before anything runs).

Every command, the main ones (lampctl.cli) and the maintenance tools (lampctl.cli.tools) alike, is
registered with `command(sub, name, run, ...)`; `run` takes the parsed arguments and returns an
exit code, or raises Failed (exit 1), UsageError (exit 2) or a ConfigError (exit 2) with one
sentence, which lampctl.cli.main prints.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

# The design's CLI contract: 0 done, 1 refused or failed at run time, 2 bad usage or config.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command that cannot go on: str() is the one sentence printed, exit_code what lampctl exits with."""

    exit_code = EXIT_FAILED


class Failed(CommandError):
    """A run-time refusal or failure: message printed, exit 1."""


class UsageError(CommandError):
    """A command line that cannot be right (an unknown lamp, say): message printed, exit 2."""

    exit_code = EXIT_USAGE


def command(sub, name: str, run: Callable[[argparse.Namespace], int], **kwargs) -> argparse.ArgumentParser:
    """Register one command: its subparser (kwargs as for add_parser) and the function that runs it."""
    p = sub.add_parser(name, **kwargs)
    p.set_defaults(run=run)
    return p


def add_config(p: argparse.ArgumentParser) -> None:
    """Every command takes --config after its name (the design's contract)."""
    p.add_argument("--config", metavar="PATH", help="config file (default: $LAMPCTL_CONFIG, else ./config.toml)")


def config_path(args) -> str:
    return getattr(args, "config", None) or os.environ.get("LAMPCTL_CONFIG") or "config.toml"


def load_config(args):
    """The config the command names (--config, $LAMPCTL_CONFIG, ./config.toml); ConfigError exits 2."""
    from lampctl import config as config_mod

    return config_mod.load(config_path(args))


def _checked(check, text: str) -> str:
    """text if check(text) accepts it; its sentence as an argparse error otherwise."""
    from lampctl.storage.accounts import StoreError

    try:
        check(text)
    except (StoreError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def duration(unit: str, most: tuple[float, str] | None = None):
    """argparse type: a number of `unit` greater than 0 (lampctl.core.errors.check_duration, the one check and
    its one sentence), kept in `unit`."""

    def parse(text: str) -> float:
        from lampctl.core.errors import BadDuration, check_duration

        try:
            number: float | None = float(text)
        except ValueError:
            number = None
        try:
            check_duration(text if number is None else number, "the value", unit=unit, most=most)
        except BadDuration as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        assert number is not None  # check_duration refuses any text
        return number

    return parse


def user_name(text: str) -> str:
    from lampctl.storage.accounts import check_user_name

    return _checked(check_user_name, text)


def pin(text: str) -> str:
    from lampctl.storage.accounts import check_pin

    return _checked(check_pin, text)


def count_in(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an integer from low to high."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not from {low} to {high}")
        return value

    return parse
