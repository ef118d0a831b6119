"""Argument types of the `lampctl` command line: a bad value is a usage error (exit 2) before anything runs."""
from __future__ import annotations

import argparse
import os


def add_config(p: argparse.ArgumentParser) -> None:
    """Every command takes --config after its name (the design's contract)."""
    p.add_argument("--config", metavar="PATH",
                   help="config file (default: $LAMPCTL_CONFIG, else ./config.toml)")


def config_path(args) -> str:
    return getattr(args, "config", None) or os.environ.get("LAMPCTL_CONFIG") or "config.toml"


def _checked(check, text: str) -> str:
    """text if check(text) accepts it; its sentence as an argparse error otherwise."""
    from lampctl.storage.accounts import StoreError

    try:
        check(text)
    except (StoreError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def positive(text: str) -> float:
    from lampctl.core.safety import is_duration

    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not is_duration(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number greater than 0")
    return value


def user_name(text: str) -> str:
    from lampctl.storage.accounts import check_user_name

    return _checked(check_user_name, text)


def pin(text: str) -> str:
    from lampctl.storage.accounts import check_pin

    return _checked(check_pin, text)


def when(text: str):
    from lampctl.cli.log import parse_when

    try:
        return parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
