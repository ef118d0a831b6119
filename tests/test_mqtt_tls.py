"""mqtts:// against a real mosquitto with certificates made here: mqtt.ca_file, a client certificate, a wrong CA."""

from __future__ import annotations

import pytest

from lampctl import config as config_mod
from lampctl.fleet.outbox import Outbox
from lampctl.testing import TWO_LAMPS, ServiceProcess, add_users, service_config, wait_until
from lampctl.testing.mqtt import Broker, make_certificates, mosquitto_path, openssl_path
from tests.conftest import BASE_CONFIG, write_config
from tests.test_fleet_integration import Collect

pytestmark = pytest.mark.skipif(
    openssl_path() is None, reason="the openssl command is not installed: no test certificates"
)
needs_mosquitto = pytest.mark.skipif(
    mosquitto_path() is None, reason="mosquitto is not installed (./test.sh installs it)"
)
UNTRUSTED = "the broker's TLS certificate is not trusted"


def node_tls(broker, node: str, certs) -> str:
    """A node's [mqtt] table for the TLS broker (absolute paths; the collector's are relative)."""
    return (
        f'\n[mqtt]\nurl = "{broker.url}"\nnode = "{node}"\nca_file = "{certs.ca}"\n'
        f'cert_file = "{certs.client_cert}"\nkey_file = "{certs.client_key}"\n'
    )


@pytest.fixture
def tls(tmp_path):
    certs = make_certificates(tmp_path)
    broker = Broker(tmp_path, tls=certs).start()
    yield certs, broker
    broker.stop()


@needs_mosquitto
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_mqtt_tls_node_and_collector_connect_and_a_session_arrives(tmp_path, tls):
    certs, broker = tls
    collect = Collect(
        tmp_path,
        broker.url,
        mqtt_extra='ca_file = "ca/ca.pem"\ncert_file = "ca/client.pem"\nkey_file = "ca/client.key"\n',
    )
    (tmp_path / "n1").mkdir()
    config = service_config(tmp_path / "n1", TWO_LAMPS, extra=node_tls(broker, "n1", certs))
    tokens = add_users(config)
    node = ServiceProcess(config).start()
    try:
        assert node.post("/api/lamps/room1/start", {"seconds": 0.5}, token=tokens["ann"])[0] == 201
        rows = wait_until(lambda: collect.sessions("n1"), 30, "the session at the collector through TLS")
        assert [(r["id"], r["lamp_id"], r["user"]) for r in rows] == [("1", "room1", "ann")]
        assert UNTRUSTED not in node.stderr()
    finally:
        assert node.stop() == 0
        assert collect.stop() == 0
    assert UNTRUSTED not in collect.err.read_text()


@needs_mosquitto
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_mqtt_tls_wrong_ca_is_refused_in_one_line_and_the_records_wait(tmp_path, tls):
    certs, broker = tls
    other = make_certificates(tmp_path, "other")  # a CA that did not sign the broker's certificate
    (tmp_path / "n1").mkdir()
    table = node_tls(broker, "n1", certs).replace(str(certs.ca), str(other.ca))
    config = service_config(tmp_path / "n1", TWO_LAMPS, extra=table)
    tokens = add_users(config)
    node = ServiceProcess(config).start()
    try:
        assert node.post("/api/lamps/room1/start", {"seconds": 0.3}, token=tokens["ann"])[0] == 201
        wait_until(lambda: node.get("/api/lamps/room1", token=tokens["ann"])[1]["state"] == "off", 10, "session over")
        wait_until(lambda: UNTRUSTED in node.stderr(), 60, "the node's log sentence")
        wait_until(lambda: broker.refused_handshakes() >= 3, 60, "the node's retries")
        line = next(x for x in node.stderr().splitlines() if UNTRUSTED in x)
        assert f"MQTT node n1 cannot connect to {broker.url}" in line
        assert f"check mqtt.ca_file ({other.ca})" in line and line.endswith("records wait in the outbox")
        assert "Traceback" not in node.stderr()
    finally:
        assert node.stop() == 0
    assert node.stderr().count(UNTRUSTED) == 1  # said once, not at each of its retries
    waiting = Outbox(tmp_path / "n1" / "var" / "lampctl.db").unsent(1000)
    assert [r["id"] for _, kind, r in waiting if kind == "session"] == [1]


# ---- the config's rows ---------------------------------------------------------------------
def load(tmp_path, table: str):
    return config_mod.load(write_config(tmp_path, BASE_CONFIG + "\n[mqtt]\n" + table))


def test_mqtt_tls_files_are_relative_to_the_config(tmp_path):
    certs = make_certificates(tmp_path)
    m = load(
        tmp_path, 'url = "mqtts://b"\nca_file = "ca/ca.pem"\ncert_file = "ca/client.pem"\nkey_file = "ca/client.key"\n'
    ).mqtt
    assert (m.ca_file, m.cert_file, m.key_file) == (certs.ca, certs.client_cert, certs.client_key)
    assert load(tmp_path, 'url = "mqtts://b"\n').mqtt.ca_file is None  # the system's CA store


@pytest.mark.parametrize(
    "table, words",
    [
        ('url = "mqtt://b"\nca_file = "ca/ca.pem"\n', "mqtt.ca_file: needs a TLS broker: an mqtts:// url"),
        ('url = "mqtts://b"\nca_file = "missing.pem"\n', "mqtt.ca_file: cannot read"),
        ('url = "mqtts://b"\nca_file = "config.toml"\n', "holds no PEM certificate"),
        ('url = "mqtts://b"\ncert_file = "ca/client.pem"\n', "mqtt.key_file: missing"),
        ('url = "mqtts://b"\nkey_file = "ca/client.key"\n', "mqtt.cert_file: missing"),
        ('url = "mqtts://b"\ncert_file = "ca/client.pem"\nkey_file = "ca/server.key"\n', "are not a PEM certificate"),
        ('url = "mqtts://b"\nca_file = 1\n', "mqtt.ca_file: must be a string"),
    ],
)
def test_mqtt_tls_bad_files_are_one_line_errors(tmp_path, table, words):
    make_certificates(tmp_path)
    with pytest.raises(config_mod.ConfigError) as err:
        load(tmp_path, table)
    assert words in str(err.value) and "\n" not in str(err.value)
