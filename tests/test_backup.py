"""lampctl backup / restore / prune-events: checked copies, retention, restore, and a backup while serving."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lampctl import cli
from lampctl.storage.store import UsageLog
from lampctl.tools import ToolFailed as Failed
from lampctl.tools.backup import BACKUP_RE, backup_database, prune_events, restore_database
from tests.conftest import write_config
from tests.procs import (
    ROOT,
    TWO_LAMPS,
    ServiceProcess,
    add_users,
    service_config,
    wait_until,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def record_sessions(log, count: int, start: datetime = T0) -> None:
    for i in range(count):
        sid = log.new_session_id()
        at = start + timedelta(minutes=30 * i)
        log.session_started(sid, "room1", "ann", at, 600)
        log.session_ended(sid, at + timedelta(minutes=10), 600, "completed")
        log.event("room1", "on", "off", "ann", "session completed", at=at + timedelta(minutes=10))
    assert log.flush(10)


def rows(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def test_backup_copy_is_one_checked_file(cfg, usage_log, tmp_path):
    record_sessions(usage_log, 3)
    result = backup_database(cfg.service.database, tmp_path / "backups", keep=5)
    assert BACKUP_RE.match(result.path.name)
    assert (result.sessions, result.events) == (3, 3)
    conn = sqlite3.connect(result.path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == [result.path.name]


def test_backup_keeps_only_the_newest_n(cfg, usage_log, tmp_path):
    record_sessions(usage_log, 1)
    dest = tmp_path / "backups"
    made = [backup_database(cfg.service.database, dest, keep=2, now=T0 + timedelta(days=d)) for d in range(4)]
    assert sorted(dest.iterdir()) == [made[2].path, made[3].path]
    assert made[3].removed == [made[1].path]


def test_backup_command_prints_the_copy(cfg, usage_log, tmp_path, capsys):
    record_sessions(usage_log, 2)
    rc = cli.main(["backup", "--config", str(cfg.path), str(tmp_path / "b"), "--keep", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith(f"backup: {tmp_path / 'b'}/lampctl-") and "2 session(s)" in out and "integrity ok" in out


def test_backup_without_a_database_exits_1(tmp_path, capsys):
    config = write_config(tmp_path)
    rc = cli.main(["backup", "--config", str(config), str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("lampctl: there is no database at ") and err.count("\n") == 1


def test_backup_into_a_file_exits_1(cfg, usage_log, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert cli.main(["backup", "--config", str(cfg.path), str(tmp_path / "afile")]) == 1
    assert "afile" in capsys.readouterr().err


@pytest.mark.parametrize("keep", ["0", "-1", "many", "10001"])
def test_backup_bad_keep_is_a_usage_error(cfg, tmp_path, keep, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["backup", "--config", str(cfg.path), str(tmp_path), "--keep", keep])
    assert exc.value.code == 2


def test_backup_of_a_damaged_database_exits_1_and_keeps_no_copy(tmp_path, capsys):
    db = tmp_path / "lampctl.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY, lamp_id TEXT)")
    conn.execute("CREATE INDEX by_lamp ON sessions (lamp_id)")
    conn.executemany("INSERT INTO sessions (lamp_id) VALUES (?)", [(f"lamp{i:05d}",) for i in range(5000)])
    conn.commit()
    conn.close()
    with open(db, "r+b") as fh:  # scribble over an index page
        fh.seek(db.stat().st_size - 3 * 4096 + 100)
        fh.write(b"\xff" * 200)
    config = write_config(tmp_path)
    rc = cli.main(["backup", "--config", str(config), str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "integrity_check" in err and err.count("\n") == 1
    assert list((tmp_path / "b").iterdir()) == []


def test_restore_brings_the_rows_back_and_saves_what_it_replaced(cfg, usage_log, tmp_path):
    record_sessions(usage_log, 3)
    backup = backup_database(cfg.service.database, tmp_path / "b", keep=5).path
    record_sessions(usage_log, 2, start=T0 + timedelta(days=1))
    usage_log.close()
    assert rows(cfg.service.database, "sessions") == 5
    result, saved = restore_database(cfg.service.database, backup)
    assert (result.sessions, result.events) == (3, 3)
    assert rows(cfg.service.database, "sessions") == 3
    assert rows(saved, "sessions") == 5
    conn = sqlite3.connect(cfg.service.database)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_restore_refuses_a_file_that_is_not_a_backup(cfg, usage_log, tmp_path):
    record_sessions(usage_log, 1)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(Failed, match="nothing was changed"):
        restore_database(cfg.service.database, junk)
    assert rows(cfg.service.database, "sessions") == 1


def test_restore_refuses_while_the_service_answers(cfg, usage_log, tmp_path, capsys):
    record_sessions(usage_log, 1)
    backup = backup_database(cfg.service.database, tmp_path / "b", keep=5).path
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        config = write_config(tmp_path, cfg.path.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"), "c2.toml")
        assert cli.main(["restore", "--config", str(config), str(backup)]) == 1
    assert "stop it before restoring" in capsys.readouterr().err


def test_s16_restore_refuses_while_a_service_holds_the_database_lock(cfg, usage_log, tmp_path, capsys):
    from lampctl.platform.runtime import InstanceLock

    record_sessions(usage_log, 1)
    backup = backup_database(cfg.service.database, tmp_path / "b", keep=5).path
    lock = InstanceLock(cfg.service.database).acquire()  # as a running `lampctl serve` holds it
    try:
        assert cli.main(["restore", "--config", str(cfg.path), str(backup)]) == 1
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert "already using" in err and "stop it before restoring" in err and len(err.splitlines()) == 1
    assert cli.main(["restore", "--config", str(cfg.path), str(backup)]) == 0  # and once it is free


def test_prune_events_keeps_sessions_unless_asked(cfg, usage_log):
    record_sessions(usage_log, 2, start=T0)  # old
    record_sessions(usage_log, 1, start=T0 + timedelta(days=60))  # recent
    open_sid = usage_log.new_session_id()
    usage_log.session_started(open_sid, "room2", "ann", T0, 600)  # never ended: always kept
    assert usage_log.flush(10)
    now = T0 + timedelta(days=61)
    assert prune_events(cfg.service.database, 30, now=now) == (2, 0)
    assert rows(cfg.service.database, "sessions") == 4
    assert prune_events(cfg.service.database, 30, sessions=True, now=now) == (0, 2)
    conn = sqlite3.connect(cfg.service.database)
    left = [r[0] for r in conn.execute("SELECT id FROM sessions ORDER BY id")]
    whys = [r[0] for r in conn.execute("SELECT why FROM events WHERE who = 'cli'")]
    conn.close()
    assert open_sid in left and len(left) == 2
    assert len(whys) == 2 and whys[0].startswith("retention: 2 event(s) older than 2026-04-02T09:00")


# 1000000 days: before year 1, which no date can hold (it was a traceback).
@pytest.mark.parametrize("days", ["0", "-3", "nan", "inf", "x", "1000000"])
def test_prune_events_bad_days_is_a_usage_error(cfg, days):
    with pytest.raises(SystemExit) as exc:
        cli.main(["prune-events", "--config", str(cfg.path), "--older-than", days])
    assert exc.value.code == 2


def tool(*args: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lampctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_backup_while_the_service_writes_then_restore(tmp_path):
    config = service_config(tmp_path, TWO_LAMPS)
    service = ServiceProcess(config).start(timeout=60)
    tokens = add_users(config)
    stop = threading.Event()
    done = []

    def clinic():  # sessions started and stopped as fast as the service takes them
        while not stop.is_set():
            for lamp in ("room1", "room2"):
                assert service.post(f"/api/lamps/{lamp}/start", {"seconds": 60}, tokens["ann"])[0] == 201
                assert service.post(f"/api/lamps/{lamp}/stop", None, tokens["ann"])[0] == 200
                done.append(lamp)

    writer = threading.Thread(target=clinic, daemon=True)
    writer.start()
    try:
        wait_until(lambda: len(done) >= 4, 60, "sessions running")
        counts = []
        for _ in range(4):
            proc = tool("backup", str(tmp_path / "backups"), "--keep", "3", config=config)
            assert proc.returncode == 0, proc.stderr
            counts.append(int(proc.stdout.split("(")[1].split(" session")[0]))
        assert writer.is_alive(), "the writer failed while the backups ran"
    finally:
        stop.set()
        writer.join(30)
        service.stop()
    assert counts == sorted(counts) and counts[-1] > counts[0] > 0
    backups = sorted((tmp_path / "backups").iterdir())
    assert len(backups) == 3
    for path in backups:
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
    database = tmp_path / "var" / "lampctl.db"
    assert rows(database, "sessions") > counts[-1]
    proc = tool("restore", str(backups[-1]), config=config)
    assert proc.returncode == 0, proc.stderr
    assert rows(database, "sessions") == counts[-1]
    # The service starts on the restored database and serves its records.
    service = ServiceProcess(config).start(timeout=60)
    try:
        status, body = service.get("/api/sessions", tokens["admin"])
        assert status == 200 and len(body["sessions"]) == counts[-1]
    finally:
        service.stop()
    assert os.path.exists(database)


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root-created database needs handing over")
def test_restore_as_root_gives_a_new_database_to_the_data_directory_owner(cfg, usage_log, tmp_path):
    record_sessions(usage_log, 1)
    backup = backup_database(cfg.service.database, tmp_path / "b", keep=2).path
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 4321, 4321)
    restore_database(data / "lampctl.db", backup)
    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in data.glob("lampctl.db*")}
    assert "lampctl.db" in owners and set(owners.values()) == {(4321, 4321)}


def test_s20_restore_never_unlatches_and_keeps_the_latches_of_both(cfg, usage_log, tmp_path):
    usage_log.fault_latched("room2", "relay stuck", T0)
    assert usage_log.flush(5)
    backup = backup_database(cfg.service.database, tmp_path / "b", keep=5).path
    usage_log.fault_cleared("room2")  # reset after the backup: the union latches it again (the safe side)
    usage_log.fault_latched("room1", "emergency stop by ann", T0 + timedelta(hours=1))
    assert usage_log.flush(5)
    usage_log.close()
    result, _ = restore_database(cfg.service.database, backup)
    assert result.kept_latches == 1
    assert UsageLog(cfg.service.database).latched_faults() == {"room1": "emergency stop by ann", "room2": "relay stuck"}


def _modes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777)
        for p in sorted(folder.rglob("*"))
        if not p.name.startswith("serve-")
    }


@pytest.mark.integration
@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_store_database_backups_lock_and_data_folder_are_private_whatever_the_umask(tmp_path, umask):
    from tests.procs import TWO_LAMPS, ServiceProcess, add_users, lampctl, service_config

    config = service_config(tmp_path, TWO_LAMPS)
    var = tmp_path / "var"
    old = os.umask(umask)  # inherited by every lampctl process below
    try:
        add_users(config)  # creates the database (the PIN hashes) and its folder
        svc = ServiceProcess(config).start()
        try:
            backed_up = lampctl("backup", str(tmp_path / "backups"), config=config)
            assert backed_up.returncode == 0
            serving = _modes(var)
            backups = _modes(tmp_path / "backups")
        finally:
            svc.stop()
        (backup,) = (tmp_path / "backups").glob("lampctl-*.db")
        lampctl("restore", str(backup), config=config)
        restored = _modes(var)
    finally:
        os.umask(old)
    assert oct(var.stat().st_mode & 0o777) == "0o700"
    for name in (
        "lampctl.db",
        "lampctl.db-wal",
        "lampctl.db-shm",
        "lampctl.db.lock",
        "cli.token",
        "secret.key",
        "service.address",
    ):
        assert serving.get(name) == "0o600", f"{name} while serving: {serving}"
    assert oct((tmp_path / "backups").stat().st_mode & 0o777) == "0o700"
    assert set(backups.values()) == {"0o600"}, backups
    assert restored["before-restore"] == "0o700", restored
    assert {n: m for n, m in restored.items() if n != "before-restore"} == {
        n: "0o600" for n in restored if n != "before-restore"
    }, restored


def test_store_database_an_older_lampctl_left_readable_is_made_private(tmp_path):
    from lampctl.storage.db import open_database

    db = tmp_path / "lampctl.db"
    open_database(db)
    db.chmod(0o644)
    open_database(db)
    assert oct(db.stat().st_mode & 0o777) == "0o600"
