"""S21: Stop, Stop all and E-stop need no credentials and never wait for them, from the API and every panel page."""

from __future__ import annotations

import re

import pytest

from lampctl.config.record import replace
from tests.conftest import bearer, pin_history
from tests.test_web_auth import csrf_from, login, post
from web import create_app

ANON = "unauthenticated (127.0.0.1)"  # Flask's test client connects from 127.0.0.1


@pytest.fixture
def no_waiting(accounts, monkeypatch):
    """A Stop must never wait for a reload of the accounts (S21): waiting fails the test."""
    waits = []

    def wait_fresh(timeout):
        waits.append(timeout)
        raise AssertionError("a Stop waited for the accounts to reload")

    monkeypatch.setattr(accounts, "wait_fresh", wait_fresh)
    return waits


def started(client, users, lamp="room1"):
    resp = client.post(f"/api/lamps/{lamp}/start", json={"minutes": 10}, headers=bearer(users["ann"]))
    assert resp.status_code == 201
    return resp


def stop_who(usage_log, why):
    usage_log.flush(5)
    return [e["who"] for e in usage_log.events() if why in e["why"]]


@pytest.mark.parametrize(
    "headers", [{}, bearer("made-up-token"), {"Authorization": "Basic YW5uOjI0Njg="}, {"Authorization": "Bearer "}]
)
def test_s21_api_stop_with_no_or_unknown_credentials_is_carried_out_and_recorded_with_the_address(
    client, users, factory, usage_log, no_waiting, headers
):
    started(client, users)
    resp = client.post("/api/lamps/room1/stop", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["result"] == "ended" and resp.get_json()["lamp"]["relay_on"] is False
    assert pin_history(factory, 17) == [False, True, False]
    usage_log.flush(5)
    [session] = usage_log.sessions()
    assert session["end_reason"] == "stopped"
    assert stop_who(usage_log, "stopped by user") == [ANON]


def test_s21_api_stop_all_and_estop_need_no_token_and_never_wait_for_one(client, users, factory, usage_log, no_waiting):
    started(client, users)
    resp = client.post("/api/stop-all", headers=bearer("made-up-token"))
    assert resp.status_code == 200
    assert resp.get_json()["results"] == {"room1": "ended", "room2": "already-off"}
    resp = client.post("/api/estop")
    assert resp.status_code == 200 and [l["state"] for l in resp.get_json()["lamps"]] == ["fault", "fault"]
    assert stop_who(usage_log, "stop all (API)") == [ANON, ANON]  # the session it ended, and the Stop all
    assert stop_who(usage_log, f"emergency stop by {ANON}")
    assert no_waiting == []


def test_s21_api_stop_with_a_known_token_is_recorded_under_its_user(client, users, usage_log, no_waiting):
    started(client, users)
    assert client.post("/api/lamps/room1/stop", headers=bearer(users["ann"])).status_code == 200
    assert stop_who(usage_log, "stopped by user") == ["ann"]


def test_s21_api_start_extend_and_reset_still_need_a_token(client, users):
    for path in ("/api/lamps/room1/start", "/api/lamps/room1/extend", "/api/lamps/room1/reset"):
        assert client.post(path, json={"minutes": 1}).status_code == 401
        assert client.post(path, json={"minutes": 1}, headers=bearer("made-up")).status_code == 401


@pytest.fixture
def panel_app(services, clock):
    return create_app(services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic})


def test_s21_panel_stops_from_a_logged_out_tablet_need_no_login_and_no_csrf(
    panel_app, client, users, factory, usage_log, no_waiting
):
    tablet = panel_app.test_client()
    started(client, users)
    resp = tablet.post("/panel/lamps/room1/stop")  # no cookie, no CSRF token
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    assert pin_history(factory, 17) == [False, True, False]
    page = tablet.get("/login").data.decode()
    assert "Room 1 stopped: the session ended and the lamp is off." in page
    started(client, users, "room2")
    resp = tablet.post("/panel/stop-all", headers={"Accept": "application/json"})
    assert resp.status_code == 200 and resp.get_json()["ok"] is True
    assert resp.get_json()["message"] == "All lamps are off. Sessions ended: Room 2."
    assert tablet.post("/panel/estop").status_code == 303
    assert stop_who(usage_log, "stopped by user") == [ANON]
    assert stop_who(usage_log, "stop all (panel)") == [ANON, ANON]  # the session it ended, and the Stop all


def test_s21_panel_stop_with_a_logged_out_cookie_is_carried_out_under_unauthenticated(
    panel_app, client, users, factory, usage_log
):
    tablet = panel_app.test_client()
    assert login(tablet, "ann", "2468").status_code == 303
    stale = tablet.get_cookie("lampctl_session").value
    other = panel_app.test_client()
    other.set_cookie("lampctl_session", stale)
    post(tablet, "/logout")  # the copy of the cookie in `other` no longer logs anyone in
    started(client, users)
    resp = other.post("/panel/lamps/room1/stop", data={"csrf_token": "from-an-old-page"})
    assert resp.status_code == 303
    assert pin_history(factory, 17) == [False, True, False]
    assert stop_who(usage_log, "stopped by user") == [ANON]


def test_s21_panel_stop_of_a_logged_in_user_is_recorded_under_their_name(panel_app, client, users, usage_log):
    tablet = panel_app.test_client()
    login(tablet, "ann", "2468")
    started(client, users)
    assert tablet.post("/panel/lamps/room1/stop").status_code == 303  # even without the form's CSRF token
    assert stop_who(usage_log, "stopped by user") == ["ann"]


def test_s21_panel_start_extend_and_reset_still_need_login_and_csrf(panel_app, users, factory):
    tablet = panel_app.test_client()
    resp = tablet.post("/panel/lamps/room1/start", data={"minutes": "10"})
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")
    login(tablet, "ann", "2468")
    assert tablet.post("/panel/lamps/room1/start", data={"minutes": "10"}).status_code == 400  # no CSRF token
    assert tablet.post("/panel/lamps/room1/extend").status_code == 400
    assert csrf_from(tablet.get("/panel/").data)
    assert pin_history(factory, 17) == [False]


# ---- the login, lock and switch pages show every running lamp with its Stop (S21) ----------------
def stop_forms(html: str) -> list[str]:
    return re.findall(r'<form method="post" action="(/panel/(?:lamps/\w+/stop|stop-all))"', html)


def row(html: str, lamp: str) -> str:
    return re.search(rf'<li class="stops-lamp" data-lamp="{lamp}"[^>]*>.*?</li>', html, re.S).group(0)


def test_s21_login_page_lists_each_running_lamp_with_its_countdown_and_a_working_stop(
    panel_app, client, users, factory, clock
):
    tablet = panel_app.test_client()
    html = tablet.get("/login").data.decode()
    assert "No lamp is on." in html and 'data-field="none" hidden' not in html
    assert " hidden>" in row(html, "room1")  # listed but hidden until it heats
    started(client, users)
    clock.advance(15)
    html = tablet.get("/login").data.decode()
    assert 'data-field="none" hidden' in html
    room1 = row(html, "room1")
    assert " hidden>" not in room1 and "Room 1" in room1 and ">9:45<" in room1
    assert 'aria-label="Stop Room 1"' in room1
    assert " hidden>" in row(html, "room2")
    assert stop_forms(html) == ["/panel/lamps/room1/stop", "/panel/lamps/room2/stop", "/panel/stop-all"]
    resp = tablet.post("/panel/lamps/room1/stop")  # what the form sends
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    assert pin_history(factory, 17) == [False, True, False]
    assert "Room 1 stopped" in tablet.get("/login").data.decode()


def test_s21_running_lamps_are_readable_without_a_login_and_name_nobody(panel_app, client, users):
    started(client, users, "room2")
    resp = panel_app.test_client().get("/panel/running.json")
    assert resp.status_code == 200
    lamps = {l["id"]: l for l in resp.get_json()["lamps"]}
    assert lamps["room2"]["on"] is True and lamps["room2"]["clock_text"] == "10:00"
    assert lamps["room1"] == {"id": "room1", "name": "Room 1", "on": False, "remaining_s": None, "clock_text": ""}
    assert "ann" not in resp.get_data(as_text=True)


def test_s21_lock_and_switch_pages_list_running_lamps_with_their_stops(services, clock, client, users):
    services.config = replace(services.config, panel=replace(services.config.panel, lock_after_s=60))
    app = create_app(services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic})
    tablet = app.test_client()
    login(tablet, "ann", "2468")
    started(client, users)
    clock.advance(120)  # idle past the lock
    html = tablet.get("/switch").data.decode()
    assert "Unlock the panel" in html
    assert " hidden>" not in row(html, "room1")
    assert stop_forms(html) == ["/panel/lamps/room1/stop", "/panel/lamps/room2/stop", "/panel/stop-all"]
    assert tablet.post("/panel/stop-all").status_code == 303
    assert services.controller.lamp("room1").relay_on is False


def test_s21_logout_while_a_lamp_is_on_asks_first(panel_app, client, users, usage_log):
    tablet = panel_app.test_client()
    login(tablet, "ann", "2468")
    started(client, users)
    resp = post(tablet, "/logout")
    assert resp.status_code == 200
    html = resp.data.decode()
    assert "Log out while a lamp is on?" in html and 'name="confirm" value="1"' in html
    assert " hidden>" not in row(html, "room1")
    assert tablet.get("/panel/").status_code == 200  # still logged in
    resp = post(tablet, "/logout", confirm="1")
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    assert tablet.get("/panel/").status_code == 302
    assert stop_who(usage_log, "logged out") == ["ann"]


def test_s21_logout_with_every_lamp_off_asks_nothing(panel_app, users):
    tablet = panel_app.test_client()
    login(tablet, "ann", "2468")
    resp = post(tablet, "/logout")
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
