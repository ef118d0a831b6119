"""Config validation: every kind of bad input stops with one line naming the file and the key (exit 2)."""

from __future__ import annotations

import pytest

from lampctl import config as config_mod
from lampctl.cli import main
from tests.conftest import BASE_CONFIG, write_config


def test_config_base_parses_into_frozen_records(tmp_path):
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
    ("relay_pin = 18\n", "", "lamps[1].relay_pin", "missing"),
    ("relay_pin = 18", "relay_pin = 17", "lamps[1].relay_pin", "pin 17 is already used by lamps[0].relay_pin"),
    ("relay_pin = 18", "relay_pin = 27", "lamps[1].relay_pin", "already used by safety.estop_pin"),
    ('id = "room2"', 'id = "Room 2"', "lamps[1].id", "a-z"),
    ('id = "room2"', 'id = "room1"', "lamps[1].id", "duplicate"),
    ("max_minutes = 60", "max_minutes = 61", "lamps[0].max_minutes", "from 1 to 60"),
    ("max_minutes = 60", "max_minutes = 0.5", "lamps[0].max_minutes", "from 1 to 60"),
    ("default_minutes = 20", "default_minutes = 90", "lamps[0].default_minutes", "above max_minutes"),
    ("presets = [10, 20, 30]", "presets = [10, 20, 45]", "lamps[1].presets", "above max_minutes"),
    ("presets = [10, 20, 30]", 'presets = [10, "x"]', "lamps[1].presets", "greater than 0"),
    ('pin_factory = "mock"', 'pin_factory = "gpio9000"', "service.pin_factory", "unknown pin factory"),
    ("relay_pin = 17", "relay_pin = true", "lamps[0].relay_pin", "not a boolean"),
    ("relay_pin = 17", 'relay_pin = "17"', "lamps[0].relay_pin", "must be an integer"),
    ("relay_pin = 17", "relay_pin = 99", "lamps[0].relay_pin", "0 to 53"),
    ("cooldown_s = 60", "cooldown_s = -1", "lamps[1].cooldown_s", "from 0 to 3600"),
    ("presets = [10, 20, 30]", "presets = [10, 20, 20]", "lamps[1].presets", "only once"),
    ('id = "room2"', 'id = "room2\\n"', "lamps[1].id", "a-z"),
    ('name = "Room 1"', 'name = "Room\\n1"', "lamps[0].name", "no control characters"),
    ('name = "Room 1"', 'name = ""', "lamps[0].name", "not empty"),
    ('database = "lampctl.db"', 'database = "a\\u0000b"', "service.database", "no control characters"),
    ('bind = "127.0.0.1:0"', 'bind = "127.0.0.1:\u00b2"', "service.bind", "host:port"),
    ('bind = "127.0.0.1:0"', 'bind = "127.0.0.1:70000"', "service.bind", "from 0 to 65535"),
    ('bind = "127.0.0.1:0"', 'bind = "localhost"', "service.bind", "host:port"),
    ("[safety]", "[safty]", "safty", "unknown key"),
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
    path = write_config(tmp_path, BASE_CONFIG + "\n[firmware]\nwatchdog_s = 3.0\n")
    assert main(["check-config", "--config", str(path)]) == 2
    assert "firmware.port" in capsys.readouterr().err
    text = (
        BASE_CONFIG.replace("estop_pin = 27", "estop_pin = 27\nheartbeat_s = 5")
        + '\n[firmware]\nport = "loop://"\nwatchdog_s = 3.0\n'
    )
    assert main(["check-config", "--config", str(write_config(tmp_path, text))]) == 2
    assert "safety.heartbeat_s" in capsys.readouterr().err


def test_config_check_config_of_the_demo_names_the_simulator_not_the_port(capsys):
    from lampctl.config import load

    assert load("config.toml").firmware.port == "/dev/ttyACM0"  # the demo's config names a real port
    assert main(["check-config", "--simulate", "--config", "config.toml"]) == 0
    out = capsys.readouterr().out
    assert "firmware simulated" in out and "/dev/ttyACM0" not in out
    assert main(["check-config", "--config", "config.toml"]) == 0
    assert "firmware on /dev/ttyACM0" in capsys.readouterr().out


def test_config_env_variable_and_default_path(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path)
    monkeypatch.setenv("LAMPCTL_CONFIG", str(path))
    assert main(["check-config"]) == 0
    assert "OK: 2 lamp(s)" in capsys.readouterr().out
    monkeypatch.delenv("LAMPCTL_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"]) == 0


# Every key of the contract set, so each S14 case changes one line of a valid file.
FULL_CONFIG = """
[service]
bind = "127.0.0.1:0"
database = "lampctl.db"
pin_factory = "mock"
log_queue = 10000
secure_cookies = true

[safety]
estop_pin = 27
heartbeat_s = 1.0
indicator_pin = 5

[firmware]
port = "loop://"
watchdog_s = 3.0
grace_s = 0.1
reply_timeout_s = 0.5

[panel]
lock_after_s = 120

[[lamps]]
id = "room1"
name = "Room 1"
relay_pin = 17
max_minutes = 30
default_minutes = 20
presets = [10, 15, 20, 30]
cooldown_s = 0
bulb_life_h = 5000
rest_window_s = 300
feedback_pin = 22
buzzer_pin = 23
lamp_indicator = 24

[[lamps]]
id = "room2"
relay_pin = 18
""".replace("lamp_indicator", "indicator_pin")


def test_config_new_keys_parse_into_records(tmp_path):
    cfg = config_mod.load(write_config(tmp_path, FULL_CONFIG))
    assert cfg.service.secure_cookies is True and cfg.panel.lock_after_s == 120
    assert (cfg.lamps[0].buzzer_pin, cfg.lamps[0].indicator_pin) == (23, 24)
    assert (cfg.lamps[1].buzzer_pin, cfg.lamps[1].indicator_pin) == (None, None)
    base = config_mod.load(write_config(tmp_path, BASE_CONFIG, name="base.toml"))
    assert base.service.secure_cookies is False and base.panel.lock_after_s == 0


S14_BAD = [
    # (line of FULL_CONFIG, its replacement, key named in the message, words in the message)
    ("watchdog_s = 3.0", "watchdog_s = 3600", "firmware.watchdog_s", "from 0.2 to 10"),
    ("watchdog_s = 3.0", "watchdog_s = nan", "firmware.watchdog_s", "finite"),
    ("watchdog_s = 3.0", "watchdog_s = 0.1", "firmware.watchdog_s", "from 0.2 to 10"),
    ("grace_s = 0.1", "grace_s = 3000", "firmware.grace_s", "from 0 to 10"),
    ("grace_s = 0.1", "grace_s = -0.1", "firmware.grace_s", "from 0 to 10"),
    # The firmware arms at most a 60-minute session x 1.10 + 10 s: a larger grace could never be armed.
    (
        "grace_s = 0.1",
        "grace_s = 11",
        "firmware.grace_s",
        "must be from 0 to 10 (the firmware arms a lamp for at most "
        "3970 s: a 60-minute session x 1.10 and 10 s more), got 11",
    ),
    ("grace_s = 0.1", "grace_s = 10.001", "firmware.grace_s", "got 10.001"),
    ("grace_s = 0.1", "grace_s = inf", "firmware.grace_s", "finite"),
    ("reply_timeout_s = 0.5", "reply_timeout_s = 1e9", "firmware.reply_timeout_s", "from 0.05 to 5"),
    ("reply_timeout_s = 0.5", "reply_timeout_s = -inf", "firmware.reply_timeout_s", "finite"),
    ("heartbeat_s = 1.0", "heartbeat_s = 1e-9", "safety.heartbeat_s", "from 0.05"),
    ("heartbeat_s = 1.0", "heartbeat_s = 1.5", "safety.heartbeat_s", "under half of firmware.watchdog_s (1.5)"),
    ("heartbeat_s = 1.0", "heartbeat_s = nan", "safety.heartbeat_s", "finite"),
    ("cooldown_s = 0", "cooldown_s = nan", "lamps[0].cooldown_s", "finite"),
    ("cooldown_s = 0", "cooldown_s = 3601", "lamps[0].cooldown_s", "from 0 to 3600"),
    ("rest_window_s = 300", "rest_window_s = 86401", "lamps[0].rest_window_s", "from 0 to 86400"),
    ("rest_window_s = 300", "rest_window_s = -inf", "lamps[0].rest_window_s", "finite"),
    ("default_minutes = 20", "default_minutes = nan", "lamps[0].default_minutes", "finite"),
    ("default_minutes = 20", "default_minutes = 0", "lamps[0].default_minutes", "greater than 0"),
    ("presets = [10, 15, 20, 30]", "presets = [10, nan]", "lamps[0].presets", "finite"),
    ("presets = [10, 15, 20, 30]", "presets = [10, inf]", "lamps[0].presets", "finite"),
    ("presets = [10, 15, 20, 30]", "presets = [10, -0.0]", "lamps[0].presets", "greater than 0"),
    ("bulb_life_h = 5000", "bulb_life_h = 0.5", "lamps[0].bulb_life_h", "from 1 to 100000"),
    ("bulb_life_h = 5000", "bulb_life_h = 100001", "lamps[0].bulb_life_h", "from 1 to 100000"),
    ("bulb_life_h = 5000", "bulb_life_h = nan", "lamps[0].bulb_life_h", "finite"),
    ("max_minutes = 30", "max_minutes = nan", "lamps[0].max_minutes", "finite"),
    ("max_minutes = 30", "max_minutes = inf", "lamps[0].max_minutes", "finite"),
    ("log_queue = 10000", "log_queue = 99", "service.log_queue", "from 100 to 1000000"),
    ("log_queue = 10000", "log_queue = " + "9" * 400, "service.log_queue", "more than 15 digits"),
    ("lock_after_s = 120", "lock_after_s = -1", "panel.lock_after_s", "from 0 to 86400"),
    ("lock_after_s = 120", "lock_after_s = 86401", "panel.lock_after_s", "from 0 to 86400"),
    ("lock_after_s = 120", "lock_after_s = nan", "panel.lock_after_s", "finite"),
    ("lock_after_s = 120", "lock_after = 120", "panel.lock_after", "unknown key"),
    ("secure_cookies = true", "secure_cookies = 1", "service.secure_cookies", "true or false"),
    ("buzzer_pin = 23", "buzzer_pin = 17", "lamps[0].buzzer_pin", "already used by lamps[0].relay_pin"),
    ("buzzer_pin = 23", "buzzer_pin = 54", "lamps[0].buzzer_pin", "from 0 to 53"),
    ("indicator_pin = 24", "indicator_pin = 18", "lamps[1].relay_pin", "already used by lamps[0].indicator_pin"),
    ("indicator_pin = 24", "indicator_pin = 5", "lamps[0].indicator_pin", "already used by safety.indicator_pin"),
]


@pytest.mark.parametrize("old,new,key,words", S14_BAD, ids=[f"{b[2]}={b[1].split('= ')[1][:12]}" for b in S14_BAD])
def test_s14_no_setting_switches_safety_off(tmp_path, capsys, old, new, key, words):
    assert config_mod.load(write_config(tmp_path, FULL_CONFIG, name="good.toml"))
    needle = "\n" + old + "\n"
    assert needle in FULL_CONFIG
    path = write_config(tmp_path, FULL_CONFIG.replace(needle, "\n" + new + "\n", 1))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 300
    assert str(path) in err and f" {key}: " in err and words in err


def test_s14_every_number_key_has_a_range_in_the_one_table():
    # A numeric key added without a range would escape S14: every number row of the schema carries one.
    numbers = [row for row in config_mod.SETTINGS if row.kind in ("int", "number", "pin", "minutes")]
    assert {"firmware.grace_s", "lamps[].presets", "lamps[].relay_pin", "service.log_queue"} <= {
        r.name for r in numbers
    }
    for row in numbers:
        assert row.kind == "pin" or row.range is not None, f"{row.name} has no range"
        if row.kind != "pin":
            assert config_mod.RANGES[row.name] is row.range
    assert config_mod.setting("service.bind").range == config_mod.Range(0, 65535)  # the port's
    assert config_mod.RANGES["pin"] == config_mod.Range(0, 53)


S14_EDGES = [  # both ends of each documented range are accepted
    {
        "watchdog_s = 3.0": "watchdog_s = 0.2",
        "heartbeat_s = 1.0": "heartbeat_s = 0.05",
        "grace_s = 0.1": "grace_s = 0",
        "reply_timeout_s = 0.5": "reply_timeout_s = 0.05",
        "cooldown_s = 0": "cooldown_s = 3600",
        "rest_window_s = 300": "rest_window_s = 0",
        "bulb_life_h = 5000": "bulb_life_h = 1",
        "lock_after_s = 120": "lock_after_s = 0",
        "log_queue = 10000": "log_queue = 100",
        "max_minutes = 30": "max_minutes = 1",
        "default_minutes = 20": "default_minutes = 1",
        "presets = [10, 15, 20, 30]": "presets = [0.5, 1]",
    },
    {
        "watchdog_s = 3.0": "watchdog_s = 10",
        "heartbeat_s = 1.0": "heartbeat_s = 4.99",
        "grace_s = 0.1": "grace_s = 10",
        "reply_timeout_s = 0.5": "reply_timeout_s = 5",
        "rest_window_s = 300": "rest_window_s = 86400",
        "bulb_life_h = 5000": "bulb_life_h = 100000",
        "lock_after_s = 120": "lock_after_s = 86400",
        # The largest grace_s with the longest session: armed for exactly the firmware's longest arm
        # (test_s14_what_check_config_accepts_the_firmware_accepts arms it).
        "log_queue = 10000": "log_queue = 1000000",
        "max_minutes = 30": "max_minutes = 60",
        "default_minutes = 20": "default_minutes = 60",
        "presets = [10, 15, 20, 30]": "presets = [60]",
    },
]


@pytest.mark.parametrize("changes", S14_EDGES, ids=["low", "high"])
def test_s14_range_ends_are_accepted(tmp_path, changes):
    text = FULL_CONFIG
    for old, new in changes.items():
        assert "\n" + old + "\n" in text
        text = text.replace("\n" + old + "\n", "\n" + new + "\n", 1)
    cfg = config_mod.load(write_config(tmp_path, text))
    numbers = [cfg.firmware.watchdog_s, cfg.firmware.grace_s, cfg.safety.heartbeat_s, cfg.lamps[0].bulb_life_h]
    assert numbers == [
        float(changes[k].split("= ")[1])
        for k in ("watchdog_s = 3.0", "grace_s = 0.1", "heartbeat_s = 1.0", "bulb_life_h = 5000")
    ]


# Settings that span the host and the firmware: (lines of FULL_CONFIG replaced, the keys a refusal names,
# or None where check-config accepts and the firmware must then take what the host sends).
ONE_HOUR = {"max_minutes = 30": "max_minutes = 60"}
CROSS_LAYER = [
    # grace_s stops at what the firmware's longest arm leaves past the longest session, whatever max_minutes.
    ({**ONE_HOUR, "grace_s = 0.1": "grace_s = 60"}, ("firmware.grace_s", "3970 s")),
    ({**ONE_HOUR, "grace_s = 0.1": "grace_s = 10.001"}, ("firmware.grace_s", "3970 s")),
    ({"max_minutes = 30": "max_minutes = 59", "grace_s = 0.1": "grace_s = 60"}, ("firmware.grace_s", "from 0 to 10")),
    ({"grace_s = 0.1": "grace_s = 11"}, ("firmware.grace_s", "from 0 to 10")),
    ({**ONE_HOUR, "grace_s = 0.1": "grace_s = 10"}, None),
    ({**ONE_HOUR, "grace_s = 0.1": "grace_s = 0"}, None),
    ({"max_minutes = 30": "max_minutes = 59.9", "grace_s = 0.1": "grace_s = 10"}, None),
    ({"grace_s = 0.1": "grace_s = 10"}, None),
    (
        {"watchdog_s = 3.0": "watchdog_s = 0.2004", "heartbeat_s = 1.0": "heartbeat_s = 0.1001"},
        ("safety.heartbeat_s", "firmware.watchdog_s"),
    ),
    ({"watchdog_s = 3.0": "watchdog_s = 0.2", "heartbeat_s = 1.0": "heartbeat_s = 0.0999"}, None),
    ({"watchdog_s = 3.0": "watchdog_s = 10", "heartbeat_s = 1.0": "heartbeat_s = 4.99"}, None),
]


@pytest.mark.parametrize("changes,refused", CROSS_LAYER, ids=[" ".join(c.values()) for c, _ in CROSS_LAYER])
def test_s14_what_check_config_accepts_the_firmware_accepts(tmp_path, capsys, changes, refused):
    from firmware_bridge import protocol
    from firmware_bridge.bridge import check_hello
    from firmware_bridge.firmware.logic import Firmware
    from firmware_bridge.firmware.mpshim import FakeTicks, Pin, ticks_add, ticks_diff
    from lampctl.core.safety import s7_backstop_ms

    text = FULL_CONFIG
    for old, new in changes.items():
        assert "\n" + old + "\n" in text
        text = text.replace("\n" + old + "\n", "\n" + new + "\n", 1)
    path = write_config(tmp_path, text)
    code = main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    if refused:
        assert code == 2 and out == "" and len(err.splitlines()) == 1, err
        assert all(key in err for key in refused), err
        return
    assert code == 0, err
    cfg = config_mod.load(path)
    # The firmware as flashed from this config: its watchdog in whole ms, one output per lamp.
    watchdog_ms = round(cfg.firmware.watchdog_s * 1000)
    clock = FakeTicks(0)
    firmware = Firmware(
        [Pin(n) for n in range(len(cfg.lamps))], clock.ticks_ms, ticks_diff, ticks_add, watchdog_ms=watchdog_ms
    )
    hello = protocol.parse_reply(firmware.feed(protocol.encode_command(1, "HELLO"))[0])
    check_hello(hello.args, "loop://", len(cfg.lamps), cfg.firmware.watchdog_s, cfg.safety.heartbeat_s)
    for index, lamp in enumerate(cfg.lamps):
        # The longest session the config allows, armed as the controller arms it.
        ms = s7_backstop_ms(lamp.max_s, cfg.firmware.grace_s)
        reply = protocol.parse_reply(firmware.feed(protocol.encode_command(2 + index, "ARM", index, ms))[0])
        assert reply.word == "OK", f"{lamp.id}: a {lamp.max_minutes}-minute session is refused: {reply.args}"


@pytest.mark.integration
def test_s14_the_longest_session_check_config_accepts_starts_on_the_firmware(tmp_path):
    from tests.procs import ServiceProcess, add_users, lampctl, service_config

    lamp = '[[lamps]]\nid = "room1"\nrelay_pin = 17\nmax_minutes = 60\n'
    for grace, accepted in (("60", False), ("10", True)):
        config = service_config(tmp_path, lamp, extra=f'[firmware]\nport = "/dev/null"\ngrace_s = {grace}\n')
        checked = lampctl("check-config", config=config, check=False)
        assert (checked.returncode == 0) is accepted, checked.stderr
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    try:
        status, body = svc.post("/api/lamps/room1/start", {"minutes": 60}, tokens["ann"])
        assert status == 201, body
        assert svc.post("/api/lamps/room1/stop", token=tokens["ann"])[0] == 200
    finally:
        svc.stop()
