"""The JSON API contract: auth, roles, status codes, error bodies."""

from __future__ import annotations

import pytest

from tests.conftest import bearer, pin_history


def test_api_health_needs_no_auth(client):
    resp = client.get("/api/health")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok"
    assert body["firmware"] == "absent"
    assert [l["id"] for l in body["lamps"]] == ["room1", "room2"]


@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/api/lamps"),
        ("get", "/api/lamps/room1"),
        ("post", "/api/lamps/room1/start"),
        ("post", "/api/lamps/room1/extend"),
        ("post", "/api/lamps/room1/reset"),
        ("post", "/api/reset-all"),
        ("get", "/api/sessions"),
    ],
)
def test_api_rejects_missing_and_bad_tokens(client, users, method, path):
    for headers in ({}, bearer("not-a-token"), {"Authorization": "Basic abc"}):
        resp = getattr(client, method)(path, headers=headers, json={"minutes": 1})
        assert resp.status_code == 401
        assert resp.get_json()["code"] == "unauthorized"
        assert resp.get_json()["error"].endswith(".")


def test_api_start_runs_lamp_and_reads_relay_back(client, users, factory):
    resp = client.post("/api/lamps/room1/start", json={"minutes": 10}, headers=bearer(users["ann"]))
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["session_id"] == 1
    assert body["lamp"]["state"] == "on" and body["lamp"]["relay_on"] is True
    assert body["lamp"]["remaining_s"] == 600
    assert pin_history(factory, 17) == [False, True]


def start(client, token, lamp="room1", body=None):
    return client.post(f"/api/lamps/{lamp}/start", json=body or {"minutes": 10}, headers=bearer(token))


@pytest.mark.parametrize(
    "data,content_type",
    [
        (b"not json", "application/json"),
        (b"[10]", "application/json"),
        (b"{}", "application/json"),
        (b'{"minutes": 10, "seconds": 5}', "application/json"),
        (b'{"minutes": -1}', "application/json"),
        (b'{"minutes": 0}', "application/json"),
        (b'{"minutes": "10"}', "application/json"),
        (b'{"minutes": true}', "application/json"),
        (b'{"minutes": 1e999}', "application/json"),
        (b'{"hours": 1}', "application/json"),
        (b"", "text/plain"),
    ],
)
def test_api_start_malformed_body_is_400_and_relay_untouched(client, users, factory, data, content_type):
    resp = client.post("/api/lamps/room1/start", data=data, content_type=content_type, headers=bearer(users["ann"]))
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["code"] in ("bad-body", "bad-duration") and body["error"].endswith(".")
    assert pin_history(factory, 17) == [False]


def test_api_status_codes_follow_the_contract(client, users, clock, factory):
    ann, admin = users["ann"], users["admin"]
    assert start(client, ann, "nope").status_code == 404
    assert start(client, ann, "nope").get_json()["code"] == "unknown-lamp"
    assert client.get("/api/lamps/nope", headers=bearer(ann)).status_code == 404
    resp = start(client, ann, "room2", {"minutes": 31})
    assert resp.status_code == 400 and "at most its limit of 30 min, got 31 min." in resp.get_json()["error"]
    assert start(client, ann, "room2", {"minutes": 30}).status_code == 201
    resp = start(client, ann, "room2")
    assert resp.status_code == 409 and resp.get_json()["code"] == "already-on"
    resp = client.post("/api/lamps/room2/extend", json={"minutes": 5}, headers=bearer(ann))
    assert resp.status_code == 409 and resp.get_json()["code"] == "over-limit"
    resp = client.post("/api/lamps/room1/stop", headers=bearer(ann))
    assert resp.status_code == 200 and resp.get_json()["result"] == "already-off"
    resp = client.post("/api/lamps/room2/stop", headers=bearer(ann))
    assert resp.status_code == 200 and resp.get_json()["lamp"]["state"] == "cooldown"
    resp = start(client, ann, "room2")
    assert resp.status_code == 409 and resp.get_json()["code"] == "cooldown"
    assert client.post("/api/lamps/room1/reset", headers=bearer(admin)).status_code == 409
    assert client.get("/api/nothing-here", headers=bearer(ann)).get_json()["code"] == "not-found"
    resp = client.get("/api/stop-all", headers=bearer(ann))
    assert resp.status_code == 405 and "error" in resp.get_json()


def test_api_extend_and_lamp_view(client, users, clock):
    start(client, users["ann"], "room1", {"minutes": 10})
    clock.advance(60)
    resp = client.post("/api/lamps/room1/extend", json={"minutes": 5}, headers=bearer(users["ann"]))
    assert resp.status_code == 200
    lamp = resp.get_json()["lamp"]
    assert lamp["remaining_s"] == 840 and lamp["planned_s"] == 900
    assert set(lamp) >= {"id", "name", "state", "relay_on", "remaining_s", "session_id", "max_minutes", "presets"}
    lamps = client.get("/api/lamps", headers=bearer(users["ann"])).get_json()["lamps"]
    assert [l["state"] for l in lamps] == ["on", "off"]


def test_s5_stop_all_api_turns_every_lamp_off(client, users, factory, usage_log):
    start(client, users["ann"], "room1")
    start(client, users["ann"], "room2")
    resp = client.post("/api/stop-all", headers=bearer(users["ann"]))
    assert resp.status_code == 200
    assert [l["relay_on"] for l in resp.get_json()["lamps"]] == [False, False]
    assert pin_history(factory, 17) == [False, True, False]
    assert pin_history(factory, 18)[1:] == [True, False, True]
    usage_log.flush(5)
    assert [s["end_reason"] for s in usage_log.sessions()] == ["stopped", "stopped"]


def test_api_admin_only_endpoints(client, users, controller):
    controller.fault("test fault")
    resp = client.post("/api/lamps/room1/reset", headers=bearer(users["ann"]))
    assert resp.status_code == 403 and resp.get_json()["code"] == "forbidden"
    assert client.get("/api/sessions", headers=bearer(users["ann"])).status_code == 403
    resp = client.post("/api/lamps/room1/reset", headers=bearer(users["admin"]))
    assert resp.status_code == 200 and resp.get_json()["lamp"]["state"] == "off"
    assert client.get("/api/health").get_json()["status"] == "fault"  # room2 still latched


def test_api_sessions_filters(client, users, clock, usage_log):
    for lamp in ("room1", "room2", "room1"):
        start(client, users["ann"], lamp, {"minutes": 1})
        clock.advance(3600)
        client.application.extensions["lampctl"].controller.tick()
    usage_log.flush(5)
    get = lambda q: client.get(f"/api/sessions{q}", headers=bearer(users["admin"]))
    rows = get("").get_json()["sessions"]
    assert [r["lamp_id"] for r in rows] == ["room1", "room2", "room1"]
    assert {r["end_reason"] for r in rows} == {"completed"}
    assert set(rows[0]) == {
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
    }
    assert len(get("?lamp=room1").get_json()["sessions"]) == 2
    assert len(get("?from=2026-01-05T10:00:00Z").get_json()["sessions"]) == 2
    assert len(get("?from=2026-01-05T09:00:00Z&to=2026-01-05T10:00:00Z").get_json()["sessions"]) == 2
    assert len(get("?to=2026-01-04").get_json()["sessions"]) == 0
    resp = get("?from=last-tuesday")
    assert resp.status_code == 400 and "ISO-8601" in resp.get_json()["error"]
    assert get("?lamp=room9").status_code == 404
    assert get("?reason=exploded").status_code == 400


def test_api_estop_any_role_latches_every_lamp_until_admin_reset(client, users, factory, usage_log):
    start(client, users["ann"], "room1")
    resp = client.post("/api/estop", headers=bearer(users["ann"]))
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["recorded"] is True
    assert [(l["state"], l["relay_on"], l["fault_reason"]) for l in body["lamps"]] == [
        ("fault", False, "emergency stop by ann from the API")
    ] * 2
    assert pin_history(factory, 17) == [False, True, False]
    assert [s["end_reason"] for s in usage_log.sessions()] == ["estop"]
    assert start(client, users["ann"], "room2").get_json()["code"] == "fault"
    assert client.post("/api/lamps/room1/reset", headers=bearer(users["ann"])).status_code == 403
    resp = client.post("/api/lamps/room1/reset", headers=bearer(users["admin"]))
    assert resp.status_code == 200 and resp.get_json()["recorded"] is True
    assert client.post("/api/estop").status_code == 200  # S21: no token needed


def test_s17_api_reset_all_clears_every_latch_admin_only_and_never_while_the_estop_is_pressed(
    client, users, factory, usage_log, controller
):
    start(client, users["ann"], "room1")
    factory.pin(27).drive_low()  # the E-stop button pressed, and held
    assert [l.state for l in controller.lamps()] == ["fault", "fault"]
    resp = client.post("/api/reset-all", headers=bearer(users["ann"]))
    assert resp.status_code == 403 and resp.get_json()["code"] == "forbidden"
    resp = client.post("/api/reset-all", headers=bearer(users["admin"]))
    assert resp.status_code == 409 and resp.get_json() == {
        "code": "fault-persists",
        "error": "No fault can be cleared yet: the E-stop button is still pressed.",
    }
    assert [l.state for l in controller.lamps()] == ["fault", "fault"]
    assert usage_log.flush(5) and set(usage_log.latched_faults()) == {"room1", "room2"}
    factory.pin(27).drive_high()  # released
    resp = client.post("/api/reset-all", headers=bearer(users["admin"]))
    assert resp.status_code == 200 and resp.get_json()["recorded"] is True
    assert [(l["id"], l["state"]) for l in resp.get_json()["lamps"]] == [("room1", "off"), ("room2", "off")]
    assert usage_log.latched_faults() == {}  # S17: a restart now finds no latch
    cleared = [(e["lamp_id"], e["who"]) for e in usage_log.events() if e["why"].startswith("fault cleared")]
    assert sorted(cleared) == [("room1", "admin"), ("room2", "admin")]
    resp = client.post("/api/reset-all", headers=bearer(users["admin"]))
    assert resp.status_code == 409 and resp.get_json()["code"] == "no-fault"


def test_s18_api_start_continues_unless_new_patient(client, users, clock, usage_log):
    ann = users["ann"]
    first = start(client, ann, "room2", {"minutes": 20}).get_json()["session_id"]
    clock.advance(20 * 60)
    client.post("/api/lamps/room2/stop", headers=bearer(ann))
    clock.advance(60)  # room2's cooldown
    client.application.extensions["lampctl"].controller.tick()
    lamp = client.get("/api/lamps/room2", headers=bearer(ann)).get_json()
    assert lamp["state"] == "off" and lamp["continue_left_s"] == 600
    resp = start(client, ann, "room2", {"minutes": 20})
    assert resp.status_code == 409 and resp.get_json()["code"] == "over-limit"
    resp = start(client, ann, "room2", {"minutes": 10})
    assert resp.status_code == 201 and resp.get_json()["lamp"]["continues"] == first
    client.post("/api/lamps/room2/stop", headers=bearer(ann))
    clock.advance(60)
    client.application.extensions["lampctl"].controller.tick()
    resp = start(client, ann, "room2", {"minutes": 30, "new_patient": True})
    assert resp.status_code == 201 and resp.get_json()["lamp"]["continues"] is None
    assert [s["continues"] for s in usage_log.sessions()] == [None, first, None]


def test_api_replies_say_whether_the_record_is_committed(client, users, usage_log, mocker):
    resp = start(client, users["ann"])
    assert resp.status_code == 201 and resp.get_json()["recorded"] is True
    assert [s["id"] for s in usage_log.sessions()] == [resp.get_json()["session_id"]]  # read after write
    flush = mocker.patch.object(usage_log, "flush", return_value=False)  # the disk is stuck
    for path in ("/api/lamps/room1/extend", "/api/lamps/room1/stop", "/api/stop-all", "/api/estop"):
        resp = client.post(path, json={"minutes": 5}, headers=bearer(users["ann"]))
        assert resp.status_code == 200 and resp.get_json()["recorded"] is False, path
    assert [c.args for c in flush.call_args_list] == [(2.0,)] * 4
