"""The command line's calls into the store, one small function per command, with the errors a user can meet."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from lampctl.cli.args import Failed
from lampctl.platform.runtime import CLI_USER  # who the audit log names for a change made here
from lampctl.storage.db import LogUnavailable, StoreError


class StoreFailed(Failed):
    """The store refused (StoreError) or the database could not be used: one sentence, exit 1."""


@contextmanager
def _failures(path):
    """A refusal or a database problem becomes StoreFailed with one sentence."""
    try:
        yield
    except (StoreError, LogUnavailable) as exc:
        raise StoreFailed(str(exc)) from None
    except (sqlite3.Error, OSError) as exc:  # a missing directory, a locked, corrupt or read-only file
        raise StoreFailed(f"cannot use the database {path}: {exc}") from None


@contextmanager
def _accounts(cfg):
    """The config's accounts, with a usage log (no writer thread: events go straight to disk) for the audit."""
    from lampctl.storage.accounts import Accounts
    from lampctl.storage.store import UsageLog

    path = cfg.service.database
    with _failures(path):
        log = UsageLog(path)
        try:
            yield Accounts(path, audit=log.event)
        finally:
            log.close()


def add_user(cfg, name: str, role: str, pin: str) -> str:
    """The name as kept (NFC)."""
    with _accounts(cfg) as accounts:
        return accounts.add_user(name, role, pin, by=CLI_USER)


def remove_user(cfg, name: str) -> str:
    """The name of the user removed, as kept (NAME may differ from it in case)."""
    with _accounts(cfg) as accounts:
        return accounts.remove_user(name, by=CLI_USER)


def users(cfg) -> list[dict]:
    with _accounts(cfg) as accounts:
        return accounts.users()


def create_token(cfg, name: str) -> str:
    with _accounts(cfg) as accounts:
        return accounts.create_token(name)


def sessions(cfg, *, start: str | None, end: str | None, lamp: str | None) -> Iterator[dict]:
    """Sessions oldest first, streamed; bounds are ISO-8601 times with a zone.

    The first row is read now, so a problem with the database shows before any output.
    """
    from lampctl.storage import queries

    path = cfg.service.database
    with _failures(path):
        rows = queries.iter_sessions(path, start=start, end=end, lamp=lamp)
        first = next(rows, None)

    def all_rows() -> Iterator[dict]:
        if first is None:
            return
        yield first
        with _failures(path):
            yield from rows

    return all_rows()


def write_log_csv(cfg, out, *, start: str | None, end: str | None, lamp: str | None) -> None:
    """`lampctl log --csv`: the web export's CSV (same columns, cells escaped the same way, timestamps as
    stored: UTC), streamed in chunks SQLite builds (lampctl.storage.queries.csv_chunks): flat memory
    and no Python per cell, whatever the log's size."""
    from lampctl.storage import queries

    path = cfg.service.database
    with _failures(path):
        for chunk in queries.csv_chunks(path, start=start, end=end, lamp=lamp):
            out.write(chunk)
