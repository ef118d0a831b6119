"""The polled API's reuse: kept views and kept JSON never show a lamp other than it is, headers and cookies as before."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
from flask import jsonify

from lampctl.core.lamp import LampState, LampView, make_view
from tests.conftest import bearer
from tests.test_web_auth import login
from web import CSP, lamp_json

# The JSON the API wrote before it kept any bytes: jsonify over as_dict, written out here.
ROOM2_OFF = {
    "id": "room2",
    "name": "Room 2",
    "state": "off",
    "relay_on": False,
    "remaining_s": None,
    "session_id": None,
    "max_minutes": 30,
    "default_minutes": 20,
    "planned_s": None,
    "user": None,
    "cooldown_remaining_s": None,
    "fault_reason": None,
    "continue_left_s": None,
    "continues": None,
    "feedback_on": None,
    "extend_left_s": None,
    "patient_pressed": None,
    "tilted": None,
    "temperature_c": None,
    "current_a": None,
    "guard": None,
    "bulb_blown": False,
    "presets": [10, 20, 30],
}


def _lamps(client, token) -> list[dict]:
    resp = client.get("/api/lamps", headers=bearer(token))
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    return resp.get_json()["lamps"]


def test_get_lamps_body_is_the_contract_and_jsonify_bytes(app, client, users, controller):
    resp = client.get("/api/lamps", headers=bearer(users["ann"]))
    assert resp.get_json()["lamps"][1] == ROOM2_OFF
    with app.app_context():
        assert resp.data == jsonify(lamps=[v.as_dict() for v in controller.lamps()]).get_data()
    one = client.get("/api/lamps/room2", headers=bearer(users["ann"]))
    assert one.get_json() == ROOM2_OFF
    with app.app_context():
        assert one.data == jsonify(controller.lamp("room2").as_dict()).get_data()


def _other(value, annotation: str):
    """A value unlike `value` that the field's type allows (each field of a view, whatever is added later)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 7
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, tuple):
        return (*value, 99)
    if value is None:
        if "bool" in annotation:
            return True
        if "str" in annotation:
            return "set"
        return 42
    raise AssertionError(f"no test value for a {type(value).__name__} field: extend _other")


def test_kept_json_follows_every_field_of_the_view_new_ones_too(app, controller):
    base = controller.lamp("room1")
    hints = typing.get_type_hints(LampView)
    with app.app_context():
        assert lamp_json.lamp_bytes(base) == jsonify(base.as_dict()).get_data().rstrip(b"\n")
        for field in dataclasses.fields(LampView):
            assert field.compare, f"LampView.{field.name} must take part in equality: the JSON is kept by it"
            changed = dataclasses.replace(
                base, **{field.name: _other(getattr(base, field.name), str(hints[field.name]))}
            )
            expected = jsonify(changed.as_dict()).get_data().rstrip(b"\n")
            assert lamp_json.lamp_bytes(changed) == expected, field.name
            assert lamp_json.lamp_bytes(base) == jsonify(base.as_dict()).get_data().rstrip(b"\n"), field.name


def test_a_relay_driven_outside_the_controller_shows_at_the_next_poll(client, users, relays):
    assert [l["relay_on"] for l in _lamps(client, users["ann"])] == [False, False]
    relays.set(0, True)  # not through the controller: S6, relay_on is what the output drives
    assert [l["relay_on"] for l in _lamps(client, users["ann"])] == [True, False]
    relays.set(0, False)
    assert [l["relay_on"] for l in _lamps(client, users["ann"])] == [False, False]


def test_a_running_lamp_counts_down_between_polls_and_shows_off_once_stopped(client, users, clock):
    token = users["ann"]
    assert client.post("/api/lamps/room1/start", json={"minutes": 10}, headers=bearer(token)).status_code == 201
    first = _lamps(client, token)[0]
    clock.advance(1.5)
    second = _lamps(client, token)[0]
    assert first["state"] == second["state"] == "on" and first["relay_on"] and second["relay_on"]
    assert second["remaining_s"] == pytest.approx(first["remaining_s"] - 1.5)
    assert client.post("/api/lamps/room1/stop", headers=bearer(token)).status_code == 200
    after = _lamps(client, token)[0]
    assert after["relay_on"] is False and after["state"] != "on" and after["remaining_s"] is None


def test_a_latched_fault_and_its_reset_show_at_once(client, users, controller):
    token = _lamps(client, users["ann"])  # a view of every lamp is kept now
    controller.fault("bench test fault", "room2")
    room2 = _lamps(client, users["ann"])[1]
    assert room2["state"] == "fault" and room2["fault_reason"] == "bench test fault"
    controller.reset_fault("room2", "admin")
    assert _lamps(client, users["ann"])[1] == ROOM2_OFF
    assert token[1] == ROOM2_OFF


def test_a_kept_view_is_only_one_time_cannot_change(controller, clock, relays):
    """Lamp.view_is_timeless: true only where make_view gives the same view later; each state named here."""
    lamp = controller._by_id["room2"]  # cooldown_s = 60, no rest window
    now = clock.monotonic()
    assert lamp.state is LampState.OFF and lamp.view_is_timeless(now)
    assert make_view(lamp, now, False, None) == make_view(lamp, now + 10_000, False, None)
    controller.start("room2", 60, "ann")
    assert not lamp.view_is_timeless(clock.monotonic())  # on: remaining_s runs
    controller.stop("room2", "ann")
    assert lamp.state is LampState.COOLDOWN and not lamp.view_is_timeless(clock.monotonic())
    clock.advance(61)
    controller.tick()
    assert lamp.state is LampState.OFF and lamp.in_rest_window(clock.monotonic())
    assert not lamp.view_is_timeless(clock.monotonic())  # continue_left_s is shown until the window ends
    clock.advance(lamp.cfg.rest_window_s)
    assert lamp.view_is_timeless(clock.monotonic())
    controller.fault("test", "room2")
    now = clock.monotonic()
    assert lamp.view_is_timeless(now)
    assert make_view(lamp, now, False, None) == make_view(lamp, now + 10_000, False, None)


def test_a_kept_view_is_keyed_on_values_that_cannot_change_in_place(controller, clock):
    """The key is every field of the lamp by value; a list or dict changed in place would keep an old view.
    The two named here are not read by make_view outside a session (arriving) or are read only while on (session)."""
    not_in_a_kept_view = {"arriving", "session"}
    controller.start("room1", 60, "ann")
    controller.stop("room1", "ann")
    controller.fault("test", "room2")
    for lamp in controller._lamps:
        for name, value in vars(lamp).items():
            if name not in not_in_a_kept_view:
                hash(value)  # a TypeError names a field whose value can change in place


def test_api_replies_carry_the_security_headers_and_no_cookie(client, users):
    client.set_cookie("lampctl_session", "not-a-login")
    for path in ("/api/lamps", "/api/lamps/room1", "/api/health", "/api/nowhere"):
        resp = client.get(path, headers=bearer(users["ann"]))
        assert resp.headers["Content-Security-Policy"] == CSP, path
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "same-origin"
        assert resp.headers["Cache-Control"] == "no-store"
        assert "Set-Cookie" not in resp.headers and "Cookie" not in resp.headers.get("Vary", ""), path
        assert len(resp.headers.getlist("Content-Security-Policy")) == 1


def test_a_header_a_view_set_itself_is_kept_and_static_files_may_be_cached(app, client):
    @app.get("/api/test-own-headers")
    def own():
        resp = app.response_class("x")
        resp.headers["Cache-Control"] = "max-age=5"
        resp.headers["X-Frame-Options"] = "SAMEORIGIN"
        return resp

    resp = client.get("/api/test-own-headers")
    assert resp.status_code == 200, resp.data
    assert resp.headers.getlist("Cache-Control") == ["max-age=5"]
    assert resp.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert resp.headers["Content-Security-Policy"] == CSP
    static = client.get("/static/panel.js")
    static.close()
    assert static.status_code == 200 and "no-store" not in static.headers.get("Cache-Control", "")


def test_pages_still_have_their_cookie_session(client, users):
    resp = login(client, "ann", "2468")
    assert resp.status_code in (200, 302, 303) and "Set-Cookie" in resp.headers
    page = client.get("/panel/")
    assert page.status_code == 200, "a login cookie must still open the panel"
    assert json.loads(client.get("/panel/state.json", headers={"Accept": "application/json"}).data)["lamps"]


def test_an_api_request_opens_no_cookie_session(app, client, users, monkeypatch):
    def no_signer(*args):
        raise AssertionError("a cookie signer was built for an API request")

    monkeypatch.setattr(type(app.session_interface), "get_signing_serializer", no_signer)
    client.set_cookie("lampctl_session", "not-a-login")
    assert client.get("/api/lamps", headers=bearer(users["ann"])).status_code == 200
    assert client.post("/api/lamps/room1/stop").status_code == 200  # S21: a Stop with no credentials
