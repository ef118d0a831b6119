"""The collector: central log unique per (node, session id), its config, its pages, and a real broker."""

from __future__ import annotations

import csv
import io
import json
import threading

import pytest

from lampctl.config import ConfigError
from lampctl.fleet.central_log import BadRecord, CentralLog, check_record
from lampctl.fleet.collector import Collector, load_collector_config
from lampctl.fleet.logins import CollectorLogins
from lampctl.testing import lampctl, wait_until
from lampctl.testing.mqtt import Broker, Listener, mosquitto_path
from tests.csv_cases import FORMULA_CELLS
from tests.test_web_auth import login
from web.fleet import create_fleet_app


def session(i: int, **more) -> dict:
    return {
        "id": i,
        "lamp_id": "room1",
        "user": "ann",
        "started_at": f"2026-11-2{i % 5}T10:00:00.000Z",
        "ended_at": f"2026-11-2{i % 5}T10:10:00.000Z",
        "planned_s": 600.0,
        "actual_s": 600.0,
        "end_reason": "completed",
        "continues": None,
        **more,
    }


def test_central_log_replay_is_harmless(tmp_path):
    central = CentralLog(tmp_path / "central.db")
    rows = [
        ("session", check_record("session", "n1", session(1))),
        ("session", check_record("session", "n2", session(1))),
    ]
    assert central.write(rows) == 2
    assert central.write(rows) == 0  # the same records again: nothing new
    assert [(r["node"], r["id"]) for r in central.sessions()] == [("n1", 1), ("n2", 1)]
    assert central.nodes() == ["n1", "n2"]
    central.close()


def test_central_log_keyed_on_node_and_id_is_rebuilt_keeping_its_rows(tmp_path):
    """A central log from before origins: its rows stay (origin ''), and a repeated id of a new origin is stored."""
    from lampctl.storage.db import connect

    path = tmp_path / "central.db"
    conn = connect(path, create=True)
    conn.executescript("""
        CREATE TABLE sessions (node TEXT NOT NULL, id INTEGER NOT NULL, lamp_id TEXT NOT NULL, user TEXT NOT NULL,
            started_at TEXT NOT NULL, ended_at TEXT, planned_s REAL NOT NULL, actual_s REAL, end_reason TEXT,
            continues INTEGER, received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            PRIMARY KEY (node, id));
        CREATE INDEX sessions_by_start ON sessions (started_at);
        CREATE TABLE events (node TEXT NOT NULL, id INTEGER NOT NULL, at TEXT NOT NULL, lamp_id TEXT,
            from_state TEXT, to_state TEXT, who TEXT NOT NULL, why TEXT NOT NULL, PRIMARY KEY (node, id));
        INSERT INTO sessions (node, id, lamp_id, user, started_at, planned_s) VALUES ('n1', 1, 'room1', 'ann',
            '2026-11-20T10:00:00.000Z', 600);
        INSERT INTO events (node, id, at, who, why) VALUES ('n1', 1, '2026-11-20T10:00:00.000Z', 'ann', 'started');
    """)
    conn.close()
    central = CentralLog(path)
    try:
        assert (
            central.write(
                [
                    ("session", check_record("session", "n1", session(1))),
                    ("session", check_record("session", "n1", session(1, origin="0a1b"))),
                    (
                        "event",
                        check_record(
                            "event",
                            "n1",
                            {"id": 1, "at": "2026-11-21T10:00:00.000Z", "who": "ann", "why": "x", "origin": "0a1b"},
                        ),
                    ),
                ]
            )
            == 2
        )
        assert sorted((r["id"], r["origin"], r["started_at"][:10]) for r in central.sessions()) == [
            (1, "", "2026-11-20"),
            (1, "0a1b", "2026-11-21"),
        ]
        assert CentralLog(path).count() == 2  # opened again: already the newest version
    finally:
        central.close()


def test_central_log_refuses_a_bad_origin():
    with pytest.raises(BadRecord, match="'origin' must be a text"):
        check_record("session", "n1", session(1, origin=7))
    with pytest.raises(BadRecord, match="'origin' must be a text"):
        check_record("session", "n1", session(1, origin="x" * 65))


@pytest.mark.parametrize(
    "record, words",
    [
        ([1], "JSON object"),
        (session(1, node="n2"), "names node"),
        ({**session(1), "id": None}, "without 'id'"),
        ({**session(1), "id": "1"}, "wrong type"),
        ({**session(1), "planned_s": True}, "wrong type"),
    ],
)
def test_central_log_refuses_bad_records(record, words):
    with pytest.raises(BadRecord, match=words):
        check_record("session", "n1", record)


@pytest.mark.parametrize(
    "text, words",
    [
        ("[collector]\n", "mqtt: missing"),
        ('[mqtt]\nurl = "mqtt://b"\n[collector]\nbind = "nowhere"\n', "collector.bind"),
        ('[mqtt]\nurl = "mqtt://b"\n[collector]\ncolour = 1\n', "collector.colour: unknown key"),
        ('[mqtt]\nurl = "mqtt://b"\n[lamps]\n', "lamps: unknown key"),
        ("[mqtt\n", "cannot read"),
    ],
)
def test_collector_config_errors(tmp_path, text, words):
    path = tmp_path / "central.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_collector_config(path)


def test_collect_bad_config_exits_2_in_one_line(tmp_path):
    path = tmp_path / "central.toml"
    path.write_text('[mqtt]\nurl = "ws://b"\n')
    proc = lampctl("collect", config=path, check=False)
    assert proc.returncode == 2
    assert "mqtt.url" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


class StubCollector:
    def __init__(self, central):
        self.central = central
        self.status = {"n1": "online", "n2": "offline"}
        self.stored = self.duplicates = self.rejected = self.rejected_states = 0
        self.subscribed = threading.Event()

    def fleet(self):
        return [
            {
                "node": "n1",
                "lamp_id": "room1",
                "name": "Room 1",
                "state": "on",
                "remaining_s": 90,
                "user": "ann",
                "node_status": "online",
            },
            {
                "node": "n2",
                "lamp_id": "room1",
                "name": "Room 1",
                "state": "off",
                "remaining_s": None,
                "user": None,
                "node_status": "offline",
            },
        ]


def fleet_client(central, collector=None):
    """The collector's pages over `central` (or `collector`), logged in as an admin of its own accounts
    (tests.test_fleet_logins)."""
    logins = CollectorLogins(central.path)
    logins.accounts.add_user("Boss", "admin", "1357", by="test")
    client = create_fleet_app(
        collector or StubCollector(central), logins.accounts, {"TESTING": True, "SECRET_KEY": "test-key"}
    ).test_client()
    assert login(client, "Boss", "1357").status_code == 303
    return client


@pytest.fixture
def pages(tmp_path):
    central = CentralLog(tmp_path / "central.db")
    central.write(
        [("session", check_record("session", node, session(i))) for node in ("n1", "n2") for i in range(1, 4)]
    )
    yield fleet_client(central)
    central.close()


def test_fleet_csv_quotes_every_first_character_a_spreadsheet_would_run(tmp_path):
    central = CentralLog(tmp_path / "central.db")
    names = [name for name, _ in FORMULA_CELLS]
    # The node and the lamp come from the broker too: free text like the user.
    central.write(
        [
            ("session", check_record("session", "=node", session(i, user=name, lamp_id=name)))
            for i, name in enumerate(names, 1)
        ]
    )
    try:
        text = fleet_client(central).get("/log.csv").get_data(as_text=True)
    finally:
        central.close()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = rows[0]
    got = sorted((r[header.index("user")], r[header.index("lamp_id")], r[header.index("node")]) for r in rows[1:])
    assert got == sorted((cell, cell, "'=node") for _, cell in FORMULA_CELLS)


def test_fleet_pages_filter_by_node(pages):
    text = pages.get("/log?node=n2").get_data(as_text=True)
    assert text.count('data-node="n2"') == 3 and 'data-node="n1"' not in text
    assert "6 sessions" in pages.get("/log").get_data(as_text=True)
    csv_text = pages.get("/log.csv?node=n1").get_data(as_text=True)
    assert csv_text.splitlines()[0].startswith("node,id,lamp_id") and len(csv_text.splitlines()) == 4
    usage = pages.get("/usage?node=n1").get_data(as_text=True)
    assert "<td>n1</td>" in usage and "<td>n2</td>" not in usage
    fleet = pages.get("/").get_data(as_text=True)
    assert "off (last known)" in fleet and 'data-node="n1"' in fleet


def test_fleet_pages_bad_query_is_a_sentence_not_a_500(pages):
    assert pages.get("/log?from=yesterday").status_code == 200
    assert "is not an ISO-8601 date" in pages.get("/log?from=yesterday").get_data(as_text=True)
    assert pages.get("/log.csv?to=soon").status_code == 400
    assert pages.get("/log?page=abc").status_code == 400


@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed (./test.sh installs it)")
def test_collector_stores_each_record_once_through_a_real_broker(tmp_path):
    broker = Broker(tmp_path).start()
    from lampctl.config.mqtt import MqttConfig

    central = CentralLog(tmp_path / "central.db")
    collector = Collector(MqttConfig(host="127.0.0.1", port=broker.port, tls=False, node="central"), central)
    sender = Listener(broker.port, [])
    try:
        collector.start()
        assert collector.subscribed.wait(10)
        sender.publish("lampctl/n1/sessions", {**session(1), "node": "n1"})
        for payload in (
            {**session(1), "node": "n1"},
            {**session(2), "node": "n1"},
            b"not json",
            {**session(3), "node": "n9"},
        ):
            sender.publish("lampctl/n1/sessions", payload if isinstance(payload, bytes) else json.dumps(payload))
        wait_until(
            lambda: collector.stored == 2 and collector.duplicates == 1 and collector.rejected == 2,
            10,
            "records committed",
        )
        sender.publish(
            "lampctl/n1/events",
            {
                "id": 7,
                "at": "2026-11-25T10:00:00.000Z",
                "lamp_id": None,
                "from_state": None,
                "to_state": None,
                "who": "system",
                "why": "hi",
            },
        )
        wait_until(lambda: collector.stored == 3, 10, "event committed")
        assert [(r["node"], r["id"]) for r in central.sessions()] == [("n1", 2), ("n1", 1)]
    finally:
        sender.close()
        collector.close()
        broker.kill()
