"""`lampctl log`: date bounds, local time or UTC, CSV, a closed pipe, and errors that are not turned into others."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from lampctl.cli import main
from lampctl.storage.accounts import Accounts
from lampctl.storage.store import UsageLog, connect, transaction
from tests.conftest import write_config
from tests.csv_cases import FORMULA_CELLS
from tests.procs import ROOT

# 2026-03-02 09:00 UTC is 10:00 in Central European (winter) time.
SESSIONS = [
    (1, "room1", "=ann", "2026-03-02T09:00:00.000Z", "2026-03-02T09:10:00.000Z", 600, 600, "completed"),
    (2, "room2", "bob", "2026-03-02T22:30:00.000Z", "2026-03-02T22:35:00.250Z", 600, 300.25, "stopped"),
    (3, "room1", "bob", "2026-03-03T08:00:00.000Z", None, 600, None, None),
]
CET = "CET-1CEST,M3.5.0,M10.5.0/3"  # a POSIX TZ rule: no zoneinfo files needed


@pytest.fixture
def config(tmp_path):
    return str(write_config(tmp_path))


def fill(database: Path, rows) -> None:
    UsageLog(database).close()  # creates the schema
    with closing(connect(database)) as conn, transaction(conn):
        conn.executemany(
            "INSERT INTO sessions (id, lamp_id, user, started_at, ended_at, planned_s, actual_s, "
            "end_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


@pytest.fixture
def logged(tmp_path, config):
    fill(tmp_path / "lampctl.db", SESSIONS)
    return config


@pytest.fixture
def in_cet():
    """The process in Central European time, restored afterwards (time.tzset reads TZ)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = CET
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_log_table_in_local_time_to_the_second_zone_in_header(logged, capsys, in_cet):
    rc, out, err = run(capsys, "log", "--config", logged)
    lines = out.splitlines()
    assert rc == 0 and err == "" and len(lines) == 4
    assert "started (local, CET/CEST)" in lines[0]
    assert "2026-03-02 10:00:00" in lines[1] and lines[1].endswith("completed")
    assert "2026-03-02 23:30:00" in lines[2] and "10 min        5 min" in lines[2]  # durations with their unit
    assert "2026-03-03 09:00:00" in lines[3] and lines[3].endswith("running")


def test_cli_log_utc_flag_shows_utc(logged, capsys, in_cet):
    rc, out, _ = run(capsys, "log", "--utc", "--config", logged)
    lines = out.splitlines()
    assert rc == 0 and "started (UTC)" in lines[0]
    assert "2026-03-02 09:00:00" in lines[1] and "2026-03-02 22:30:00" in lines[2]


def test_cli_log_bounds_are_local_days_inclusive(logged, capsys, in_cet):
    # 22:30 UTC on the 2nd is 23:30 local on the 2nd: a local date as --to includes it.
    rc, out, _ = run(capsys, "log", "--from", "2026-03-02", "--to", "2026-03-02", "--config", logged)
    assert rc == 0 and [l.split()[0] for l in out.splitlines()[1:]] == ["1", "2"]
    rc, out, _ = run(capsys, "log", "--from", "2026-03-02T23:00", "--config", logged)
    assert [l.split()[0] for l in out.splitlines()[1:]] == ["2", "3"]
    rc, out, _ = run(capsys, "log", "--to", "2026-03-02T09:00Z", "--config", logged)
    assert [l.split()[0] for l in out.splitlines()[1:]] == ["1"]
    # The ends of the accepted range work and include everything.
    rc, out, _ = run(capsys, "log", "--from", "1970-01-01", "--to", "9998-12-31T23:59:59+14:00", "--config", logged)
    assert rc == 0 and len(out.splitlines()) == 4


def test_cli_log_csv_keeps_utc_and_escapes_formulas(logged, capsys):
    rc, out, _ = run(capsys, "log", "--csv", "--lamp", "room1", "--config", logged)
    rows = list(csv.reader(io.StringIO(out)))
    assert rc == 0 and rows[0] == [
        "id",
        "lamp_id",
        "user",
        "started_at",
        "ended_at",
        "planned_s",
        "actual_s",
        "end_reason",
        "continues",
        "new_patient",
        "new_patient_by",
    ]
    assert rows[1][:4] == ["1", "room1", "'=ann", "2026-03-02T09:00:00.000Z"] and rows[1][7:] == [
        "completed",
        "",
        "false",
        "",
    ]
    assert [r[0] for r in rows[1:]] == ["1", "3"]


def test_cli_log_csv_quotes_every_first_character_a_spreadsheet_would_run(tmp_path, config, capsys):
    fill(
        tmp_path / "lampctl.db",
        [
            (i, "room1", name, "2026-03-02T09:00:00.000Z", None, 60, None, None)
            for i, (name, _) in enumerate(FORMULA_CELLS, 1)
        ],
    )
    rc, out, _ = run(capsys, "log", "--csv", "--config", config)
    rows = list(csv.reader(io.StringIO(out, newline="")))
    assert rc == 0 and [r[2] for r in rows[1:]] == [cell for _, cell in FORMULA_CELLS]


@pytest.mark.parametrize("form", [[], ["--csv"]], ids=["table", "csv"])
def test_cli_log_database_problem_is_one_line_exit_1(tmp_path, capsys, form):
    # The database's directory is a file: a real "cannot open", named as such.
    (tmp_path / "var").write_text("not a directory")
    config = write_config(tmp_path, '[service]\ndatabase = "var/x.db"\n[[lamps]]\nid = "a"\nrelay_pin = 17\n')
    rc, out, err = run(capsys, "log", *form, "--config", str(config))
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("lampctl: ") and str(tmp_path / "var" / "x.db") in err and "cannot be opened" in err


def test_cli_bug_is_internal_error_not_a_database_problem(logged, capsys, mocker):
    mocker.patch.object(Accounts, "users", side_effect=TypeError("unhashable type: 'list'"))
    rc, out, err = run(capsys, "user", "list", "--config", logged)
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert "cannot open the database" not in err and "Traceback" not in err
    assert err.startswith("lampctl: internal error: TypeError: unhashable type: 'list'; details in ")
    details = Path(err.strip().rsplit("details in ", 1)[1])
    try:
        text = details.read_text()
        assert "Traceback" in text and "unhashable type" in text
    finally:
        details.unlink()


def lampctl_proc(*args, stdout, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lampctl", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        **kwargs,
    )


def env(buffered: bool) -> dict:
    """The child's environment: stdout block-buffered as for a user, or unbuffered as under systemd."""
    out = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return out if buffered else {**out, "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", [["log"], ["check-config"]])
def test_cli_output_into_a_closed_pipe_exits_quietly(logged, buffered, command):
    read, write = os.pipe()
    os.close(read)  # no reader from the start: the first write meets EPIPE, whatever the timing
    proc = lampctl_proc(*command, "--config", logged, stdout=write, env=env(buffered))
    os.close(write)
    _, err = proc.communicate(timeout=60)
    proc.stderr.close()
    assert err == b"" and proc.returncode == 1


@pytest.mark.integration
@pytest.mark.parametrize("form, first", [([], "   id  lamp"), (["--csv"], "id,lamp_id,user,")], ids=["table", "csv"])
def test_cli_log_piped_to_head_exits_quietly(tmp_path, config, form, first):
    rows = [
        (i, "room1", "ann", f"2026-03-{1 + i % 28:02d}T09:00:00.000Z", None, 600, None, None) for i in range(1, 3001)
    ]  # ~250 kB, far more than a pipe holds
    fill(tmp_path / "lampctl.db", rows)
    pipeline = f'"{sys.executable}" -m lampctl log {" ".join(form)} --config "{config}" | head -1'
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=env(True),
        check=False,
    )
    assert proc.stdout.startswith(first) and len(proc.stdout.splitlines()) == 1
    assert proc.stderr == "" and proc.returncode == 1
