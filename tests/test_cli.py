"""The command line: exit codes 0/1/2, one-line errors, and S5 stop-all through a real service."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from lampctl.cli import build_parser, main
from tests.conftest import write_config
from tests.procs import (
    ROOT,
    TWO_LAMPS,
    ServiceProcess,
    add_users,
    lampctl,
    service_config,
)


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
    assert run(capsys, "user", "remove", "ann", "--config", config)[0] == 0
    rc, _, err = run(capsys, "user", "remove", "ann", "--config", config)
    assert rc == 1 and "no user named 'ann'" in err


BAD_USAGE = [
    ["user", "add", "bob", "--role", "boss", "--pin", "1234"],
    ["user", "add", "bob", "--role", "admin", "--pin", "12"],
    ["user", "add", "bob@smith", "--role", "admin", "--pin", "1234"],
    ["start", "room1"],
    ["start", "room1", "--minutes", "ten"],
    ["start", "room1", "--minutes", "nan"],
    ["start", "room1", "--minutes", "1e999"],
    ["extend", "room1", "--seconds", "-5"],
    ["start", "room1", "--minutes", "0"],
    ["estop", "room1"],
    ["log", "--from", "0001-01-01"],
    ["log", "--to", "9999-12-31T23:59:59-10:00"],
    ["log", "--to", "20261125"],
    ["log", "--from", "2026-W48-3"],
    ["log", "--from", "soon"],
    ["log", "--to", "2026-02-30"],
    ["log", "--from", "2026-03-01T25:00"],
    ["log", "--from", "2026-03-01T10:00+25:00"],
    ["log", "--to", "\x00"],
    ["frobnicate"],
    [],
]


def test_cli_every_command_main_or_tool_is_registered_one_way():
    """cli_args.command registers each subparser with the function that runs it: no second table of commands."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    names = {
        "serve",
        "check-config",
        "user",
        "token",
        "log",
        "status",
        "start",
        "extend",
        "stop",
        "stop-all",
        "estop",
        "reset",
        "backup",
        "restore",
        "prune-events",
        "doctor",
        "firmware",
        "collect",
    }
    assert set(sub.choices) == names
    assert [name for name, p in sub.choices.items() if not callable(p.get_default("run"))] == []
    main_only = next(a for a in build_parser(with_tools=False)._actions if isinstance(a, argparse._SubParsersAction))
    assert "backup" not in main_only.choices and "serve" in main_only.choices


@pytest.mark.parametrize("argv", BAD_USAGE, ids=[" ".join(a)[:40] or "nothing" for a in BAD_USAGE])
def test_cli_bad_usage_exits_2_with_one_sentence(config, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv + (["--config", config] if argv and argv[0] != "frobnicate" else []))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("lampctl") and "error: " in last and len(last) < 200


@pytest.mark.parametrize(
    "argv",
    [
        ["log", "--lamp", "nosuch"],
        ["start", "nosuch", "--minutes", "5", "--token", "t"],
        ["extend", "nosuch", "--minutes", "5"],
        ["stop", "nosuch"],
        ["reset", "nosuch"],
        ["status", "--token", "two words"],
    ],
)
def test_cli_unknown_lamp_or_bad_token_is_usage_error_exit_2(config, capsys, argv):
    rc, out, err = run(capsys, *argv, "--config", config)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"lampctl {argv[0]}: error: ")
    assert ("there is no lamp 'nosuch'" in err and "(lamps: room1, room2)" in err) or "printable ASCII" in err


def test_cli_help_documents_estop_and_new_patient(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "estop" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["start", "--help"])
    out = capsys.readouterr().out
    assert "--new-patient" in out and "rest window" in out
    with pytest.raises(SystemExit):
        main(["log", "--help"])
    assert "--utc" in capsys.readouterr().out


def test_cli_token_create_prints_token_alone(config, capsys):
    run(capsys, "user", "add", "ann", "--role", "practitioner", "--pin", "2468", "--config", config)
    rc, out, _ = run(capsys, "token", "create", "ann", "--config", config)
    assert rc == 0 and len(out.splitlines()) == 1 and len(out.strip()) >= 40
    rc, _, err = run(capsys, "token", "create", "nobody", "--config", config)
    assert rc == 1 and "no user named 'nobody'" in err


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
        assert too_long.returncode == 2 and "(400)" in too_long.stderr
        out = lampctl("stop-all", config=config).stdout
        assert out.splitlines() == [
            "room1        off       relay off",
            "room2        off       relay off",
            "room1: stopped, its session ended",
            "room2: stopped, its session ended",
        ]
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


def test_cli_module_imports_nothing_beyond_argparse_and_config():
    # Issue 12: `lampctl serve` reaches the relay claim (S1) through this module; every other import is lazy.
    code = (
        "import sys, json; import argparse, lampctl.config; before = set(sys.modules); import lampctl.cli; "
        "after = set(sys.modules); from lampctl.cli import main; main(['check-config', '--config', 'config.toml']); "
        "print(json.dumps([sorted(after - before), sorted(set(sys.modules) - before)]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    )
    on_import, after_check = json.loads(proc.stdout.splitlines()[-1])
    assert on_import == ["lampctl.cli", "lampctl.cli.args"]
    slow = {
        "urllib",
        "urllib.request",
        "http.client",
        "csv",
        "sqlite3",
        "lampctl.storage.store",
        "werkzeug",
        "contextlib",
        "gpiozero",
        "flask",
        "tempfile",
    }
    assert not slow & set(after_check), slow & set(after_check)
