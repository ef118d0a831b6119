"""The command line: exit codes 0/1/2, one-line errors, and S5 stop-all through a real service."""
from __future__ import annotations

import csv
import io

import pytest

from lampctl.cli import main
from tests.conftest import write_config
from tests.procs import TWO_LAMPS, ServiceProcess, add_users, lampctl, service_config


@pytest.fixture
def config(tmp_path):
    return str(write_config(tmp_path))


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_users_add_list_remove(config, capsys):
    assert run(capsys, "user", "add", "ann", "--role", "practitioner", "--pin", "2468", "--config", config)[0] == 0
    rc, out, _ = run(capsys, "user", "list", "--config", config)
    assert rc == 0 and "ann" in out and "practitioner" in out
    rc, _, err = run(capsys, "user", "add", "ann", "--role", "admin", "--pin", "1111", "--config", config)
    assert rc == 1 and err.strip() == "lampctl: A user named 'ann' already exists."
    rc, _, err = run(capsys, "user", "add", "bob", "--role", "admin", "--pin", "12", "--config", config)
    assert rc == 1 and "4 to 8 digits" in err
    assert run(capsys, "user", "remove", "ann", "--config", config)[0] == 0
    rc, _, err = run(capsys, "user", "remove", "ann", "--config", config)
    assert rc == 1 and "no user named 'ann'" in err


def test_cli_bad_usage_exits_2(config, capsys):
    for argv in (["user", "add", "bob", "--role", "boss", "--pin", "1234"], ["start", "room1"],
                 ["start", "room1", "--minutes", "ten"], ["start", "room1", "--minutes", "nan"],
                 ["extend", "room1", "--seconds", "-5"], ["start", "room1", "--minutes", "0"], ["frobnicate"], []):
        with pytest.raises(SystemExit) as exc:
            main(argv + (["--config", config] if argv and argv[0] != "frobnicate" else []))
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_cli_token_create_prints_token_alone(config, capsys):
    run(capsys, "user", "add", "ann", "--role", "practitioner", "--pin", "2468", "--config", config)
    rc, out, _ = run(capsys, "token", "create", "ann", "--config", config)
    assert rc == 0 and len(out.splitlines()) == 1 and len(out.strip()) >= 40
    rc, _, err = run(capsys, "token", "create", "nobody", "--config", config)
    assert rc == 1 and "no user named 'nobody'" in err


def test_cli_log_csv_and_bad_dates(tmp_path, capsys, config):
    from lampctl.store import UsageLog
    from datetime import datetime, timezone

    log = UsageLog(tmp_path / "lampctl.db")
    t = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    for sid, lamp in ((1, "room1"), (2, "room2")):
        log.session_started(sid, lamp, "=ann", t, 600)
        log.session_ended(sid, t, 600, "completed")
    log.close()
    rc, out, _ = run(capsys, "log", "--csv", "--lamp", "room2", "--config", config)
    rows = list(csv.reader(io.StringIO(out)))
    assert rc == 0 and rows[0] == ["id", "lamp_id", "user", "started_at", "ended_at", "planned_s", "actual_s",
                                   "end_reason"]
    assert rows[1][:3] == ["2", "room2", "'=ann"] and rows[1][-1] == "completed" and len(rows) == 2
    rc, out, _ = run(capsys, "log", "--from", "2026-03-02", "--to", "2026-03-02", "--config", config)
    assert rc == 0 and len(out.splitlines()) == 3
    rc, _, err = run(capsys, "log", "--from", "soon", "--config", config)
    assert rc == 1 and "ISO-8601" in err and len(err.splitlines()) == 1


def test_cli_remote_without_service_fails_with_one_line(tmp_path, capsys):
    config = str(service_config(tmp_path, TWO_LAMPS))
    rc, _, err = run(capsys, "status", "--config", config, "--token", "x")
    assert rc == 1 and "cannot reach the service" in err and len(err.splitlines()) == 1
    rc, _, err = run(capsys, "stop-all", "--config", config)
    assert rc == 1 and "no API token" in err


@pytest.mark.integration
def test_s5_stop_all_from_cli_turns_every_lamp_off(tmp_path):
    config = service_config(tmp_path, TWO_LAMPS)
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    try:
        # The CLI finds the service's own token file: no --token needed on the Pi.
        out = lampctl("start", "room1", "--minutes", "10", config=config).stdout
        assert out.startswith("room1        on        relay ON   10:00 left")
        lampctl("start", "room2", "--seconds", "90", config=config)
        refused = lampctl("start", "room2", "--seconds", "90", config=config, check=False)
        assert refused.returncode == 1 and "refused (409): Room 2 is already on." in refused.stderr
        too_long = lampctl("start", "room1", "--minutes", "45", config=config, check=False)
        assert too_long.returncode == 1 and "(400)" in too_long.stderr
        out = lampctl("stop-all", config=config).stdout
        assert out.splitlines() == ["room1        off       relay off", "room2        off       relay off"]
        status, sessions = svc.get("/api/sessions", token=tokens["admin"])
        assert [(s["user"], s["end_reason"]) for s in sessions["sessions"]] == [("cli", "stopped")] * 2
        bad = lampctl("status", "--token", "wrong", config=config, check=False)
        assert bad.returncode == 1 and "refused (401)" in bad.stderr
    finally:
        svc.stop()


def test_cli_serve_unavailable_pin_factory_exits_1_with_one_line(tmp_path):
    config = service_config(tmp_path, TWO_LAMPS)
    config.write_text(config.read_text().replace('pin_factory = "mock"', 'pin_factory = "pigpio"'))
    proc = lampctl("serve", config=config, check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lampctl: cannot serve: pin factory 'pigpio' needs the pigpio package")
    assert "Traceback" not in proc.stderr
