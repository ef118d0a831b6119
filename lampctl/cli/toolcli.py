"""Shared plumbing of the maintenance commands (backup, restore, prune-events, firmware, doctor).

Each tool module declares its subcommands with ``add_parser(subparsers)`` and maps their
names to functions in ``COMMANDS``; every such function takes the parsed arguments and
returns an exit code itself (0 done, 1 refused or failed at run time, 2 bad usage or
config), printing one sentence on failure, so ``lampctl.cli.tools`` only has to wire them in.
"""
from __future__ import annotations

import argparse
import functools
import math
import socket
import sys
from collections.abc import Callable
from contextlib import contextmanager

from lampctl import config as config_mod
from lampctl.cli.args import add_config, config_path  # noqa: F401  (the tool modules import them from here)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ToolFailed(Exception):
    """A run-time refusal or failure: the message is printed and the exit code is 1."""


def load_config(args) -> config_mod.Config:
    return config_mod.load(config_path(args))


def guarded(func: Callable[..., int]) -> Callable[..., int]:
    """Turn ConfigError into exit 2 and ToolFailed into exit 1, each with one line on stderr."""
    @functools.wraps(func)
    def run(args, *rest, **kwargs) -> int:
        try:
            return func(args, *rest, **kwargs)
        except config_mod.ConfigError as exc:
            print(f"lampctl: config error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except ToolFailed as exc:
            print(f"lampctl: {exc}", file=sys.stderr)
            return EXIT_FAILED
    return run


def positive_number(text: str) -> float:
    """argparse type: a finite number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number greater than 0")
    return value


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


def service_answers(cfg: config_mod.Config, timeout: float = 0.5) -> bool:
    """Whether something accepts connections on the service's port (a running `lampctl serve`)."""
    host = cfg.service.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, cfg.service.port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def service_stopped(cfg: config_mod.Config, what: str):
    """Hold the service's own S16 lock while `what` runs, so no `lampctl serve` uses the database
    or the board meanwhile (nor starts); refuse if one is running (its lock, or its port answering)."""
    from lampctl.platform.runtime import AlreadyRunning, InstanceLock

    advice = f"stop it before {what} (sudo systemctl stop lampctl), then start it again"
    try:
        lock = InstanceLock(cfg.service.database).acquire()
    except AlreadyRunning as exc:
        raise ToolFailed(f"{exc}: {advice}") from None
    except OSError as exc:
        raise ToolFailed(f"cannot take the service's lock beside {cfg.service.database}: {exc.strerror}") from None
    try:
        if service_answers(cfg):
            raise ToolFailed(f"the service answers on port {cfg.service.port}: {advice}")
        yield
    finally:
        lock.release()
