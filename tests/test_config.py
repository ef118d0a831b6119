"""Config validation: every kind of bad input stops with one line naming the file and the key (exit 2)."""
from __future__ import annotations

import pytest

from lampctl import config as config_mod
from lampctl.cli import main
from tests.conftest import BASE_CONFIG, write_config


def test_config_base_parses_into_frozen_dataclasses(tmp_path):
    cfg = config_mod.load(write_config(tmp_path))
    assert [l.id for l in cfg.lamps] == ["room1", "room2"]
    assert cfg.lamps[1].active_high is False
    assert cfg.lamps[0].presets == (10, 15, 20, 30)
    assert cfg.service.database == (tmp_path / "lampctl.db").resolve()
    assert cfg.firmware is None
    with pytest.raises(AttributeError):
        cfg.lamps[0].max_minutes = 99


def test_config_shipped_file_is_valid():
    cfg = config_mod.load("config.toml")
    assert len(cfg.lamps) == 2


BAD = [
    # (replace this, with this, key named in the message, words in the message)
    ('pin_factory = "mock"', 'pin_factory = "mock"\nport = 3', "service.port", "unknown key"),
    ('relay_pin = 18\n', '', "lamps[1].relay_pin", "missing"),
    ('relay_pin = 18', 'relay_pin = 17', "lamps[1].relay_pin", "pin 17 is already used by lamps[0].relay_pin"),
    ('relay_pin = 18', 'relay_pin = 27', "lamps[1].relay_pin", "already used by safety.estop_pin"),
    ('id = "room2"', 'id = "Room 2"', "lamps[1].id", "a-z"),
    ('id = "room2"', 'id = "room1"', "lamps[1].id", "duplicate"),
    ('max_minutes = 60', 'max_minutes = 61', "lamps[0].max_minutes", "from 1 to 60"),
    ('max_minutes = 60', 'max_minutes = 0.5', "lamps[0].max_minutes", "from 1 to 60"),
    ('default_minutes = 20', 'default_minutes = 90', "lamps[0].default_minutes", "above max_minutes"),
    ('presets = [10, 20, 30]', 'presets = [10, 20, 45]', "lamps[1].presets", "above max_minutes"),
    ('presets = [10, 20, 30]', 'presets = [10, "x"]', "lamps[1].presets", "greater than 0"),
    ('pin_factory = "mock"', 'pin_factory = "gpio9000"', "service.pin_factory", "unknown pin factory"),
    ('relay_pin = 17', 'relay_pin = true', "lamps[0].relay_pin", "not a boolean"),
    ('relay_pin = 17', 'relay_pin = "17"', "lamps[0].relay_pin", "must be an integer"),
    ('relay_pin = 17', 'relay_pin = 99', "lamps[0].relay_pin", "0 to 53"),
    ('cooldown_s = 60', 'cooldown_s = -1', "lamps[1].cooldown_s", "0 or more"),
    ('bind = "127.0.0.1:0"', 'bind = "localhost"', "service.bind", "host:port"),
    ('[safety]', '[safty]', "safty", "unknown key"),
]


@pytest.mark.parametrize("old,new,key,words", BAD, ids=[b[2] + ":" + b[3][:18] for b in BAD])
def test_config_bad_value_exits_2_naming_file_and_key(tmp_path, capsys, old, new, key, words):
    assert old in BASE_CONFIG
    path = write_config(tmp_path, BASE_CONFIG.replace(old, new, 1))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(path) in err and key in err and words in err


def test_config_malformed_toml_names_line(tmp_path, capsys):
    path = write_config(tmp_path, BASE_CONFIG.replace('name = "Room 1"', 'name = "Room 1'))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "malformed TOML" in err and "line 12" in err and str(path) in err
    assert len(err.splitlines()) == 1


def test_config_missing_file_and_no_lamps(tmp_path, capsys):
    assert main(["check-config", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "file not found" in capsys.readouterr().err
    path = write_config(tmp_path, '[service]\nbind = "127.0.0.1:8080"\n')
    assert main(["check-config", "--config", str(path)]) == 2
    assert "lamps" in capsys.readouterr().err


def test_config_firmware_table_needs_port_and_heartbeat_below_watchdog(tmp_path, capsys):
    path = write_config(tmp_path, BASE_CONFIG + '\n[firmware]\nwatchdog_s = 3.0\n')
    assert main(["check-config", "--config", str(path)]) == 2
    assert "firmware.port" in capsys.readouterr().err
    text = BASE_CONFIG.replace("estop_pin = 27", "estop_pin = 27\nheartbeat_s = 5") + \
        '\n[firmware]\nport = "loop://"\nwatchdog_s = 3.0\n'
    assert main(["check-config", "--config", str(write_config(tmp_path, text))]) == 2
    assert "safety.heartbeat_s" in capsys.readouterr().err


def test_config_env_variable_and_default_path(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path)
    monkeypatch.setenv("LAMPCTL_CONFIG", str(path))
    assert main(["check-config"]) == 0
    assert "OK: 2 lamp(s)" in capsys.readouterr().out
    monkeypatch.delenv("LAMPCTL_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"]) == 0
