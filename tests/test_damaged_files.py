"""A damaged, newer or misplaced database or key file: `lampctl serve` says what is wrong and what to do."""

import os
import sqlite3

import pytest

from lampctl.storage.db import open_database
from tests.procs import TWO_LAMPS, lampctl, service_config


def _random_bytes(var):
    (var / "lampctl.db").write_bytes(os.urandom(8192))


def _truncated(var):
    open_database(var / "lampctl.db")
    whole = (var / "lampctl.db").read_bytes()
    (var / "lampctl.db").write_bytes(whole[:1000])


def _newer_schema(var):
    conn = sqlite3.connect(var / "lampctl.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()


def _a_folder(var):
    (var / "lampctl.db").mkdir()


def _key_not_text(var):
    (var / "secret.key").write_bytes(b"\xff\xfe\x00 not a key")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_random_bytes, ["is damaged or is not a lampctl database", "lampctl restore FILE"]),
        (_truncated, ["is damaged or is not a lampctl database", "lampctl restore FILE"]),
        (_newer_schema, ["schema version 99", "Upgrade lampctl"]),
        (_a_folder, ["cannot be opened", "not a folder"]),
        (_key_not_text, ["secret.key is not a key file", "remove it"]),
    ],
    ids=["random-bytes", "truncated", "schema-99", "a-folder", "key-not-text"],
)
def test_serve_on_a_damaged_file_says_what_is_wrong_and_what_to_do(tmp_path, damage, says):
    config = service_config(tmp_path, TWO_LAMPS)
    (tmp_path / "var").mkdir()
    damage(tmp_path / "var")
    served = lampctl("serve", "--simulate", config=config, check=False, timeout=60)
    assert served.returncode == 1
    last = served.stderr.strip().splitlines()[-1]
    assert "internal error" not in served.stderr and "Traceback" not in served.stderr, served.stderr
    assert all(part in last for part in says), last
