"""The collector's users and PINs: the node's accounts, in a file beside the central log, with their audit log.

The central log's own tables are the nodes' records, so the accounts (users, PIN hashes,
browser logins, saved lockouts) live in `accounts.db` in the same folder, made and migrated as
a node's database is (lampctl.storage.db). Its events table is the collector's audit log: who
logged in or out, who was locked out, and what `lampctl user` changed.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from lampctl.storage.accounts import BUILTIN_USER, Accounts
from lampctl.storage.store import UsageLog

log = logging.getLogger(__name__)

ACCOUNTS_FILE = "accounts.db"


def accounts_path(central_database: Path) -> Path:
    return Path(central_database).parent / ACCOUNTS_FILE


class CollectorLogins:
    """The accounts the fleet pages answer from (reloaded when `lampctl user` changes them) and their audit."""

    def __init__(self, central_database: Path):
        self.path = accounts_path(central_database)
        self._log = UsageLog(self.path)  # no writer thread: each audit row goes straight to disk
        self.accounts = Accounts(self.path, audit=self._log.event)

    def audit(self, who: str, why: str) -> None:
        try:
            self._log.event(None, None, None, who, why)
        except (sqlite3.Error, OSError) as exc:  # a login is not refused for its audit row
            log.error("fleet audit not recorded (%s): %s %s", exc, who, why)

    def admins(self) -> list[str]:
        return [u["name"] for u in self.accounts.users() if u["role"] == "admin" and u["name"] != BUILTIN_USER]

    def start(self) -> None:
        self.accounts.start()

    def close(self) -> None:
        self.accounts.close()
        self._log.close()
