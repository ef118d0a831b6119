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


@pytest.mark.parametrize("method,path", [
    ("get", "/api/lamps"), ("get", "/api/lamps/room1"), ("post", "/api/lamps/room1/start"),
    ("post", "/api/lamps/room1/extend"), ("post", "/api/lamps/room1/stop"), ("post", "/api/stop-all"),
    ("post", "/api/lamps/room1/reset"), ("get", "/api/sessions"),
])
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
