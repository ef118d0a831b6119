"""The settings schema: one row per key drives the parser; checks across keys and layers refuse with a sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_bridge import protocol
from lampctl import config as config_mod
from lampctl.cli import main
from lampctl.config.mqtt import MqttConfig
from lampctl.config.record import replace
from lampctl.core.safety import s7_backstop_ms
from lampctl.testing.mqtt import make_certificates, openssl_path
from tests.conftest import write_config
from tests.test_config import FULL_CONFIG

# Where each row's value lands in the parsed Config, for the rows whose attribute is not the key itself.
NOT_THE_KEY = {"service.bind": None, "service.database": None, "mqtt.url": None}
OWNERS = {
    "service": config_mod.ServiceConfig,
    "safety": config_mod.SafetyConfig,
    "firmware": config_mod.FirmwareConfig,
    "panel": config_mod.PanelConfig,
    "lamps[]": config_mod.LampConfig,
    "mqtt": MqttConfig,
}


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return repr(value)


def every_row_set_to_its_default(tmp_path: Path) -> Path:
    """A config naming every key of the schema: each at its default, a required one at a valid value."""
    given = {
        "firmware.port": '"loop://"',
        "mqtt.url": '"mqtt://broker.local"',
        "lamps[].id": '"room1"',
        "lamps[].relay_pin": "17",
        "lamps[].name": '"Room 1"',
        "mqtt.node": '"room-a"',
        "mqtt.username": '"pi"',
        "mqtt.password_file": '"mqtt.pw"',
        "safety.estop_pin": "27",
        "safety.indicator_pin": "5",
        "lamps[].feedback_pin": "22",
        "lamps[].buzzer_pin": "23",
        "lamps[].indicator_pin": "24",
        "lamps[].stop_pin": "25",
        "lamps[].tilt_pin": "26",
        "service.max_lamps_on": "1",
        "lamps[].thermistor_adc": "0",
        "lamps[].current_adc": "1",
        "lamps[].max_amps": "2.5",
    }
    tls_files = ("mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file")
    if openssl_path() is not None:  # real PEM files: the parser loads them
        certs = make_certificates(tmp_path)
        given.update(
            {
                "mqtt.url": '"mqtts://broker.local"',
                "mqtt.ca_file": f'"{certs.ca}"',
                "mqtt.cert_file": f'"{certs.client_cert}"',
                "mqtt.key_file": f'"{certs.client_key}"',
            }
        )
    tables: dict[str, list[str]] = {}
    for row in config_mod.SETTINGS:
        if row.name in tls_files and row.name not in given:
            continue
        value = given.get(row.name) or _toml(row.default)
        tables.setdefault(row.table, []).append(f"{row.key} = {value}")
    (tmp_path / "mqtt.pw").write_text("secret\n")
    text = "".join(
        f"\n[{'[lamps]' if t == 'lamps[]' else t}]\n" + "\n".join(lines) + "\n" for t, lines in tables.items()
    )
    return write_config(tmp_path, text)


def test_config_schema_every_row_is_read_and_its_default_parses_back_to_itself(tmp_path):
    cfg = config_mod.load(every_row_set_to_its_default(tmp_path))
    owners = {
        "service": cfg.service,
        "safety": cfg.safety,
        "firmware": cfg.firmware,
        "panel": cfg.panel,
        "lamps[]": cfg.lamps[0],
        "mqtt": cfg.mqtt,
    }
    checked = 0
    for row in config_mod.SETTINGS:
        if row.default in (None, config_mod.REQUIRED) or row.name in NOT_THE_KEY:
            continue
        assert getattr(owners[row.table], row.key) == row.default, row.name
        checked += 1
    assert checked >= 15
    assert (cfg.service.host, cfg.service.port) == ("127.0.0.1", 8080)
    assert cfg.service.database == (tmp_path / "var/lampctl.db").resolve()
    tls = openssl_path() is not None
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("broker.local", 8883 if tls else 1883, tls)
    assert (cfg.mqtt.ca_file is not None) == tls


def test_config_schema_dataclass_defaults_are_the_rows_defaults():
    # A Config built in code (tests, bench) gets the same defaults as a config file that leaves the key out.
    compared = []
    for row in config_mod.SETTINGS:
        defaults = OWNERS[row.table]._defaults
        if row.key in defaults and row.default is not config_mod.REQUIRED:
            expected = Path(row.default) if row.name == "service.database" else row.default
            assert defaults[row.key] == expected, row.name
            compared.append(row.name)
    assert {"firmware.grace_s", "lamps[].presets", "mqtt.discovery_prefix", "mqtt.commands"} <= set(compared)
    service = config_mod.ServiceConfig()
    assert f"{service.host}:{service.port}" == config_mod.setting("service.bind").default


def test_config_schema_a_row_the_parser_never_reads_is_refused_not_ignored(tmp_path, monkeypatch):
    # Klipper's rule: an option nothing uses is an error, so a row added without its point of use cannot
    # silently accept a setting that does nothing.
    extra = config_mod.Setting("panel.colour", "int", 0, range=config_mod.Range(0, 9), doc="unused")
    monkeypatch.setattr(config_mod, "SETTINGS", (*config_mod.SETTINGS, extra))
    path = write_config(tmp_path, FULL_CONFIG.replace("lock_after_s = 120", "lock_after_s = 120\ncolour = 3"))
    with pytest.raises(config_mod.ConfigError, match=r"panel\.colour: is not used by this version of lampctl"):
        config_mod.load(path)
    config_mod.load(write_config(tmp_path, FULL_CONFIG, name="without.toml"))  # left out, nothing to refuse


def test_config_schema_grace_s_ends_where_the_firmware_longest_arm_ends():
    from firmware_bridge.firmware.logic import Firmware
    from firmware_bridge.firmware.mpshim import FakeTicks, Pin, ticks_add, ticks_diff

    assert config_mod.GRACE_MAX_S == 10
    assert config_mod.setting("firmware.grace_s").range == config_mod.Range(0, 10)
    # The longest session at the largest grace is armed for exactly what the firmware accepts, and no more.
    assert s7_backstop_ms(60 * 60, config_mod.GRACE_MAX_S) == protocol.MAX_ARM_MS == 3_970_000
    firmware = Firmware([Pin(0)], FakeTicks(0).ticks_ms, ticks_diff, ticks_add)
    assert protocol.parse_reply(firmware.feed(protocol.encode_command(1, "HELLO"))[0]).word == "OK"
    for seq, (ms, word) in enumerate(((protocol.MAX_ARM_MS + 1, "ERR"), (protocol.MAX_ARM_MS, "OK")), 2):
        reply = protocol.parse_reply(firmware.feed(protocol.encode_command(seq, "ARM", 0, ms))[0])
        assert reply.word == word, (ms, reply)


def test_config_schema_the_backstop_check_refuses_what_the_firmware_could_not_arm(tmp_path, monkeypatch):
    # grace_s's range keeps every session armable today; the cross-layer check still holds it if the range
    # were ever widened beyond what MAX_ARM_MS leaves.
    lamp = config_mod.LampConfig(id="room1", name="Room 1", relay_pin=17, max_minutes=60)
    cfg = config_mod.Config(
        path=Path("c.toml"),
        service=config_mod.ServiceConfig(),
        safety=config_mod.SafetyConfig(),
        firmware=config_mod.FirmwareConfig(grace_s=60),
        lamps=(lamp,),
    )
    key, problem = config_mod._s14_check_backstop_fits(cfg)
    assert key == "firmware.grace_s" and "lamps[0].max_minutes = 60" in problem and "at most 10" in problem
    assert config_mod._s14_check_backstop_fits(replace(cfg, firmware=config_mod.FirmwareConfig(grace_s=10))) is None
    wide = replace(config_mod.setting("firmware.grace_s"), range=config_mod.Range(0, 60))
    monkeypatch.setattr(config_mod, "SETTINGS", tuple(wide if r.name == wide.name else r for r in config_mod.SETTINGS))
    text = FULL_CONFIG.replace("max_minutes = 30", "max_minutes = 60").replace("grace_s = 0.1", "grace_s = 60")
    with pytest.raises(config_mod.ConfigError, match=r"firmware\.grace_s: with lamps\[0\]\.max_minutes = 60"):
        config_mod.load(write_config(tmp_path, text))


# (lines of FULL_CONFIG replaced, the key the refusal names, its words): one case per check across keys.
ACROSS_KEYS = [
    (
        {"grace_s = 0.1": "grace_s = 11"},
        "firmware.grace_s",
        "must be from 0 to 10 (the firmware arms a lamp for at most 3970 s: a 60-minute session x 1.10 and 10 s more), "
        "got 11",
    ),
    (
        {"heartbeat_s = 1.0": "heartbeat_s = 1.6"},
        "safety.heartbeat_s",
        "must be under half of firmware.watchdog_s (1.5), got 1.6",
    ),
    (
        {"watchdog_s = 3.0": "watchdog_s = 0.5", "heartbeat_s = 1.0": "heartbeat_s = 0.25"},
        "safety.heartbeat_s",
        "must be under half of firmware.watchdog_s (0.25), got 0.25",
    ),
    ({"default_minutes = 20": "default_minutes = 31"}, "lamps[0].default_minutes", "31 is above max_minutes 30"),
    ({"presets = [10, 15, 20, 30]": "presets = [10, 45]"}, "lamps[0].presets", "45 is above max_minutes 30"),
    ({"max_minutes = 30": "max_minutes = 12"}, "lamps[0].default_minutes", "20 is above max_minutes 12"),
    ({"buzzer_pin = 23": "buzzer_pin = 27"}, "lamps[0].buzzer_pin", "pin 27 is already used by safety.estop_pin"),
    ({'id = "room2"': 'id = "room1"'}, "lamps[1].id", "duplicate lamp id 'room1'"),
    (
        {"cooldown_s = 0": "colour = 3"},
        "lamps[0].colour",
        "unknown key (allowed: active_high, bulb_life_h, buzzer_pin,",
    ),
    (
        {"relay_pin = 18": "relay_pin = 18\nmax_minutes = 61"},
        "lamps[1].max_minutes",
        "must be from 1 to 60 (the hard ceiling), got 61",
    ),
]


@pytest.mark.parametrize("changes, key, words", ACROSS_KEYS, ids=[c[1] + ":" + c[2][:24] for c in ACROSS_KEYS])
def test_config_schema_each_check_refuses_with_one_sentence_naming_key_value_and_limit(
    tmp_path, capsys, changes, key, words
):
    text = FULL_CONFIG
    for old, new in changes.items():
        assert "\n" + old + "\n" in text
        text = text.replace("\n" + old + "\n", "\n" + new + "\n", 1)
    path = write_config(tmp_path, text)
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"lampctl: config error: {path}: {key}: {words}"), err


def test_config_schema_without_a_max_minutes_default_presets_keep_within_it(tmp_path):
    # Derived defaults: a lamp of 12 minutes offers 10 only, and starts at 12 rather than 20.
    lamp = config_mod.load(write_config(tmp_path, '[[lamps]]\nid = "a"\nrelay_pin = 3\nmax_minutes = 12\n')).lamps[0]
    assert (lamp.presets, lamp.default_minutes, lamp.name) == ((10,), 12, "a")


def test_config_schema_constraints_and_bounds_name_rows_that_exist():
    names = {row.name for row in config_mod.SETTINGS}
    assert len(names) == len(config_mod.SETTINGS)  # one row per key
    for constraint in config_mod.CONSTRAINTS:
        assert set(constraint.keys) <= names and set(constraint.rows()) <= names, constraint.keys
    for row in config_mod.SETTINGS:
        if row.at_most:
            assert f"{row.table}.{row.at_most}" in names, row.name
        assert row.doc and row.kind in ("bool", "int", "number", "pin", "text", "minutes"), row.name
        assert row.table in {t.name for t in config_mod.TABLES} | {"lamps[]"}, row.name
