"""The [mqtt] table: every value checked, one-line errors, exit 2."""

from __future__ import annotations

import pytest

from lampctl import config as config_mod
from lampctl.testing import lampctl
from tests.conftest import BASE_CONFIG, write_config


def load(tmp_path, table: str):
    return config_mod.load(write_config(tmp_path, BASE_CONFIG + "\n[mqtt]\n" + table))


def test_mqtt_defaults(tmp_path):
    m = load(tmp_path, 'url = "mqtt://broker.local"\n').mqtt
    assert (m.host, m.port, m.tls, m.commands, m.discovery_prefix) == (
        "broker.local",
        1883,
        False,
        False,
        "homeassistant",
    )
    assert m.node and all(c.isalnum() or c in "_-" for c in m.node)


def test_mqtt_absent_means_none(tmp_path):
    assert config_mod.load(write_config(tmp_path)).mqtt is None


def test_mqtt_tls_username_password_file(tmp_path):
    (tmp_path / "mqtt.pw").write_text("s3cret\n")
    m = load(
        tmp_path,
        'url = "mqtts://b.example:8884"\nnode = "site-a_1"\nusername = "pi"\n'
        'password_file = "mqtt.pw"\ncommands = true\ndiscovery_prefix = "ha/disc"\n',
    ).mqtt
    assert (m.host, m.port, m.tls, m.node, m.username, m.commands) == ("b.example", 8884, True, "site-a_1", "pi", True)
    assert m.password() == "s3cret"
    assert "s3cret" not in repr(m)
    assert load(tmp_path, 'url = "mqtts://b.example"\n').mqtt.port == 8883


@pytest.mark.parametrize(
    "table, words",
    [
        ('node = "x"\n', "mqtt.url: missing"),
        ('url = "http://b"\n', "must start with mqtt:// or mqtts://"),
        ('url = "mqtt://"\n', "must be mqtt[s]://host[:port]"),
        ('url = "mqtt://u:p@b"\n', "credentials go in username"),
        ('url = "mqtt://b:99999"\n', "not a broker URL"),
        ('url = "mqtt://b:0"\n', "port must be from 1"),
        ('url = "mqtt://b"\nnode = "a/b"\n', "mqtt.node"),
        ('url = "mqtt://b"\nnode = "#"\n', "mqtt.node"),
        ('url = "mqtt://b"\ndiscovery_prefix = "ha/+"\n', "mqtt.discovery_prefix"),
        ('url = "mqtt://b"\ndiscovery_prefix = "ha//x"\n', "mqtt.discovery_prefix"),
        ('url = "mqtt://b"\ncommands = "yes"\n', "mqtt.commands: must be true or false"),
        ('url = "mqtt://b"\nusername = "u"\npassword_file = "missing.pw"\n', "mqtt.password_file: cannot read"),
        ('url = "mqtt://b"\npassword_file = "config.toml"\n', "needs mqtt.username"),
        ('url = "mqtt://b"\nport = 1883\n', "mqtt.port: unknown key"),
        ("url = 5\n", "mqtt.url: must be a string"),
    ],
)
def test_mqtt_bad_values_are_one_line_errors(tmp_path, table, words):
    with pytest.raises(config_mod.ConfigError) as err:
        load(tmp_path, table)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_mqtt_bad_table_exits_2_from_check_config(tmp_path):
    path = write_config(tmp_path, BASE_CONFIG + '\n[mqtt]\nurl = "ftp://b"\n')
    proc = lampctl("check-config", config=path, check=False)
    assert proc.returncode == 2
    assert "mqtt.url" in proc.stderr and "Traceback" not in proc.stderr
