"""What a node (or anyone who can publish) sends the collector is checked field by field: a bad state or record
is refused, counted and named in the log, and no page answers 500, for what arrives or for rows stored before."""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.error
import urllib.request

import pytest

from lampctl.fleet.central_log import CentralLog
from lampctl.testing import wait_until
from lampctl.testing.mqtt import Broker, Listener, mosquitto_path
from tests.test_collector import StubCollector, fleet_client, session
from tests.test_fleet_integration import Collect

NESTED = "[" * 50_000  # under the size bound, past the JSON parser's recursion limit

# lamp -> (the retained state's payload, the field the log line must name)
BAD_STATES = {
    "soon": ('{"state": "on", "remaining_s": "soon"}', "'remaining_s' has the wrong type"),
    "infinity": ('{"state": "on", "remaining_s": Infinity}', "'remaining_s' must be a number of seconds"),
    "nan": ('{"state": "on", "remaining_s": NaN}', "'remaining_s' must be a number of seconds"),
    "negative": ('{"state": "on", "remaining_s": -5}', "'remaining_s' must be a number of seconds"),
    "melting": ('{"state": "melting"}', "'state' must be one of off, on, cooldown, fault"),
    "no-state": ('{"remaining_s": 5}', "without 'state'"),
    "long-name": (json.dumps({"state": "off", "name": "x" * 65}), "'name' must be text of 1 to 64"),
    "huge": (json.dumps({"state": "off", "name": "x" * 100_000}), "more than the 65536 taken"),
    "user-number": ('{"state": "on", "user": 7}', "'user' has the wrong type"),
    "relay-text": ('{"state": "on", "relay_on": "yes"}', "'relay_on' has the wrong type"),
    "surrogate": ('{"state": "on", "user": "\\ud800"}', "'user' holds a character that is not Unicode"),
    "ends-yesterday": ('{"state": "on", "ends_at": "yesterday"}', "'ends_at' must be an ISO-8601 time"),
    "other-lamp": ('{"state": "on", "id": "room9"}', "names lamp 'room9'"),
    "array": ("[1, 2]", "a lamp state must be a JSON object"),
    "not-json": ("{state: on}", "not JSON"),
    "nested": (NESTED, "not JSON"),
}
BAD_STATES["bytes"] = (b'{"state": "\xff\xfe"}', "not UTF-8")  # not UTF-8 text

# name -> (the session record's payload, the field the log line must name); every other field is good.
BAD_RECORDS = {
    "started-yesterday": ({**session(11), "started_at": "yesterday"}, "'started_at' must be an ISO-8601 time"),
    "ended-without-zone": (
        {**session(12), "ended_at": "2026-11-20T10:10:00"},
        "'ended_at' must be an ISO-8601 time with its time zone",
    ),
    "actual-infinity": ({**session(13), "actual_s": float("inf")}, "'actual_s' must be a number of seconds"),
    "actual-nan": ({**session(14), "actual_s": float("nan")}, "'actual_s' must be a number of seconds"),
    "planned-negative": ({**session(15), "planned_s": -600}, "'planned_s' must be a number of seconds"),
    "actual-huge": ({**session(16), "actual_s": 1e308}, "'actual_s' must be a number of seconds"),
    "user-long": ({**session(17), "user": "u" * 65}, "'user' must be text of 1 to 64"),
    "user-huge": ({**session(18), "user": "u" * 100_000}, "more than the 65536 taken"),
    "user-surrogate": ({**session(19), "user": "\ud800"}, "'user' holds a character that is not Unicode"),
    "reason-unknown": ({**session(20), "end_reason": "exploded"}, "'end_reason' must be one of completed"),
    "lamp-number": ({**session(21), "lamp_id": 5}, "'lamp_id' has the wrong type"),
    "continues-negative": ({**session(22), "continues": -1}, "'continues' must be a whole number from 1"),
    "array": ([session(23)], "a record must be a JSON object"),
    "nested": (NESTED, "not JSON"),
    "bytes": (b'{"id": 24, "user": "\xff"}', "not UTF-8"),
}
BAD_EVENTS = {
    "at-soon": ({"id": 31, "at": "soon", "who": "system", "why": "x"}, "'at' must be an ISO-8601 time"),
    "state-unknown": (
        {"id": 32, "at": "2026-11-25T10:00:00.000Z", "who": "system", "why": "x", "from_state": "melting"},
        "'from_state' must be one of off, on",
    ),
}

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed (./test.sh installs it)")


def test_the_states_taken_are_the_lamps_states():
    from lampctl.core.lamp import LampState
    from lampctl.fleet.inbound import STATES

    assert tuple(s.value for s in LampState) == STATES


def _status(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _payload(body) -> bytes:
    if isinstance(body, bytes):
        return body
    return (body if isinstance(body, str) else json.dumps(body)).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def collect(tmp_path_factory):
    work = tmp_path_factory.mktemp("bad-input")
    broker = Broker(work).start()
    collect = Collect(work, broker.url)
    sender = Listener(broker.port, [])
    try:
        yield {"collect": collect, "sender": sender, "log": collect.err}
    finally:
        sender.close()
        assert collect.stop() == 0
        broker.kill()


def _log_lines(path, needle: str) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if needle in line]


def _publish(sender, topic: str, body, retain: bool = False) -> None:
    sender.client.publish(topic, _payload(body), qos=1, retain=retain).wait_for_publish(5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lamp", list(BAD_STATES))
def test_a_bad_retained_state_is_refused_counted_named_and_the_page_stays_up(collect, lamp):
    c, sender = collect["collect"], collect["sender"]
    payload, words = BAD_STATES[lamp]
    before = c.fleet().get("rejected_states", 0)
    _publish(sender, f"lampctl/bad/lamp/{lamp}/state", payload, retain=True)
    # A good state after it: the collector still hears (nothing above stopped its network thread).
    _publish(
        sender, f"lampctl/bad/lamp/after-{lamp}/state", {"state": "on", "remaining_s": 90, "user": "ann"}, retain=True
    )
    fleet = wait_until(
        lambda: (f := c.fleet()) and any(x["lamp_id"] == f"after-{lamp}" for x in f["lamps"]) and f,
        20,
        "the good state after it",
    )
    assert _status(f"http://127.0.0.1:{c.port}/") == 200
    assert lamp not in [x["lamp_id"] for x in fleet["lamps"]]
    assert fleet.get("rejected_states") == before + 1
    lines = _log_lines(collect["log"], f"node bad: state on lampctl/bad/lamp/{lamp}/state refused")
    assert len(lines) == 1 and words in lines[0], lines


@pytest.mark.timeout(60)
def test_a_status_neither_online_nor_offline_is_refused(collect):
    c, sender = collect["collect"], collect["sender"]
    before = c.fleet().get("rejected_states", 0)
    _publish(sender, "lampctl/badstatus/status", b"kaputt", retain=True)
    _publish(sender, "lampctl/goodstatus/status", b"online", retain=True)
    fleet = wait_until(lambda: (f := c.fleet()) and "goodstatus" in f["nodes"] and f, 20, "the good status")
    assert "badstatus" not in fleet["nodes"] and fleet.get("rejected_states") == before + 1
    lines = _log_lines(collect["log"], "node badstatus: state on lampctl/badstatus/status refused")
    assert len(lines) == 1 and "'status' must be one of online, offline, got 'kaputt'" in lines[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kind, case", [("sessions", name) for name in BAD_RECORDS] + [("events", name) for name in BAD_EVENTS]
)
def test_a_bad_record_is_refused_counted_named_and_the_log_pages_stay_up(collect, kind, case):
    c, sender = collect["collect"], collect["sender"]
    body, words = (BAD_RECORDS if kind == "sessions" else BAD_EVENTS)[case]
    node = f"rec-{case}"
    before = c.fleet()
    _publish(sender, f"lampctl/{node}/{kind}", body)
    # A good one after it: the writer is still alive and it alone is stored.
    _publish(sender, f"lampctl/{node}/sessions", session(40))
    fleet = wait_until(lambda: (f := c.fleet())["stored"] > before["stored"] and f, 20, "the good record after it")
    assert fleet["rejected"] == before["rejected"] + 1
    assert fleet["stored"] == before["stored"] + 1
    assert [s["id"] for s in c.sessions(node)] == ["40"]
    for path in ("/log", f"/log?node={node}", "/log.csv", "/usage", "/"):
        assert _status(f"http://127.0.0.1:{c.port}{path}") == 200, path
    lines = _log_lines(collect["log"], f"node {node}: record on lampctl/{node}/{kind} refused")
    assert len(lines) == 1 and words in lines[0], lines


@pytest.mark.timeout(60)
def test_a_good_record_keeps_its_times_in_the_logs_one_format(collect):
    c, sender = collect["collect"], collect["sender"]
    _publish(
        sender,
        "lampctl/zoned/sessions",
        {**session(1), "started_at": "2026-11-20T11:00:00+01:00", "ended_at": "2026-11-20T10:10:00Z"},
    )
    stored = wait_until(lambda: c.sessions("zoned"), 20, "the record")
    assert (stored[0]["started_at"], stored[0]["ended_at"]) == ("2026-11-20T10:00:00.000Z", "2026-11-20T10:10:00.000Z")


# ---- rows stored before every field was checked --------------------------------------------
def _store_raw(path, rows: list[tuple]) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO sessions (node, id, lamp_id, user, started_at, ended_at, planned_s, actual_s, "
            "end_reason, continues) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        # Bytes that are not UTF-8, stored as text: SQLite keeps them, Python cannot decode them.
        conn.execute(
            "INSERT INTO sessions (node, id, lamp_id, user, started_at, planned_s) "
            "VALUES ('old', 9, 'room1', CAST(x'fffe41' AS TEXT), '2026-11-20T10:00:00.000Z', 60)"
        )
    conn.close()


STORED_BAD = {  # name -> a row as an older collector stored it (the sessions' columns from node)
    "started-yesterday": (
        "old",
        1,
        "room1",
        "ann",
        "yesterday",
        "2026-11-20T10:10:00.000Z",
        600.0,
        600.0,
        "completed",
        None,
    ),
    "ended-soon": ("old", 2, "room1", "ann", "2026-11-20T10:00:00.000Z", "soon", 600.0, 600.0, "completed", None),
    "actual-infinity": ("old", 3, "room1", "ann", "2026-11-20T10:00:00.000Z", None, 600.0, float("inf"), None, None),
    "planned-text": ("old", 4, "room1", "ann", "2026-11-20T10:00:00.000Z", None, "soon", None, None, None),
    "planned-minus-infinity": (
        "old",
        5,
        "room1",
        "ann",
        "2026-11-20T10:00:00.000Z",
        None,
        float("-inf"),
        None,
        None,
        None,
    ),
    "actual-bytes": ("old", 6, "room1", "ann", "2026-11-20T10:00:00.000Z", None, 600.0, b"\x00\x01", None, None),
}


def _store_raw(path, row: tuple | None) -> None:
    conn = sqlite3.connect(path)
    with conn:
        if row is None:  # bytes that are not UTF-8, stored as text: SQLite keeps them, Python cannot decode them
            conn.execute(
                "INSERT INTO sessions (node, id, lamp_id, user, started_at, planned_s) "
                "VALUES ('old', 9, 'room1', CAST(x'fffe41' AS TEXT), '2026-11-20T10:00:00.000Z', 60)"
            )
        else:
            conn.execute(
                "INSERT INTO sessions (node, id, lamp_id, user, started_at, ended_at, planned_s, actual_s, "
                "end_reason, continues) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
    conn.close()


@pytest.mark.parametrize("case", [*STORED_BAD, "user-not-utf8"])
def test_a_row_stored_before_the_checks_renders_as_a_placeholder_never_a_500(tmp_path, case):
    central = CentralLog(tmp_path / "central.db")
    _store_raw(tmp_path / "central.db", STORED_BAD.get(case))
    client = fleet_client(central)
    try:
        for path in ("/log", "/log?node=old", "/log.csv", "/usage"):
            assert client.get(path).status_code == 200, path
        page = client.get("/log").get_data(as_text=True)
        assert page.count('data-node="old"') == 1
        if case == "user-not-utf8":
            assert "<td>\ufffd\ufffdA</td>" in page  # shown replaced
        else:
            assert re.search(r">\?</(time|td)>", page)  # the placeholder where the bad value would be
        assert len(client.get("/log.csv").get_data(as_text=True).splitlines()) == 2
    finally:
        central.close()


# Lamp states a collector took in before states were checked (it keeps them in memory).
HELD_STATES = {"remaining-text": "soon", "remaining-infinity": float("inf"), "remaining-list": [1]}


@pytest.mark.parametrize("case", list(HELD_STATES))
def test_a_state_held_from_before_the_checks_renders_as_a_placeholder(tmp_path, case):
    central = CentralLog(tmp_path / "central.db")
    stub = StubCollector(central)
    stub.fleet = lambda: [
        {
            "node": "old",
            "lamp_id": "a",
            "name": "A",
            "state": "on",
            "node_status": "online",
            "remaining_s": HELD_STATES[case],
            "user": "ann",
        }
    ]
    try:
        resp = fleet_client(central, stub).get("/")
        assert resp.status_code == 200
        assert '<td class="num">?</td>' in resp.get_data(as_text=True)
    finally:
        central.close()
