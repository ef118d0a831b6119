"""The command line's calls into the store, one small function per command, with the errors a user can meet."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from lampctl.store import StoreError, UsageLog

CLI_USER = "cli"  # who the audit log names for a change made here (the service's own account)


class StoreFailed(Exception):
    """The store refused (StoreError) or the database could not be used: one sentence, exit 1."""


@contextmanager
def _opened(cfg):
    """The config's usage log for one command; a refusal or a database problem becomes StoreFailed."""
    path = cfg.service.database
    try:
        log = UsageLog(path)
    except (sqlite3.Error, OSError) as exc:  # a missing directory, a locked, corrupt or read-only file
        raise StoreFailed(f"cannot open the database {path}: {exc}") from None
    except StoreError as exc:
        raise StoreFailed(str(exc)) from None
    try:
        yield log
    except StoreError as exc:
        raise StoreFailed(str(exc)) from None
    except sqlite3.Error as exc:
        raise StoreFailed(f"cannot use the database {path}: {exc}") from None
    finally:
        log.close()


def add_user(cfg, name: str, role: str, pin: str) -> None:
    with _opened(cfg) as log:
        log.add_user(name, role, pin, by=CLI_USER)


def remove_user(cfg, name: str) -> None:
    with _opened(cfg) as log:
        log.remove_user(name)
        log.event(None, None, None, CLI_USER, f"user {name} removed")


def users(cfg) -> list[dict]:
    with _opened(cfg) as log:
        return log.users()


def create_token(cfg, name: str) -> str:
    with _opened(cfg) as log:
        return log.create_token(name)


def sessions(cfg, *, start: str | None, end: str | None, lamp: str | None) -> Iterator[dict]:
    """Sessions oldest first, streamed; bounds are ISO-8601 times with a zone.

    The database opens now, so a problem with it shows before any output.
    """
    stack = ExitStack()
    log = stack.enter_context(_opened(cfg))

    def rows() -> Iterator[dict]:
        with stack:
            yield from log.iter_sessions(start=start, end=end, lamp=lamp)
    return rows()
