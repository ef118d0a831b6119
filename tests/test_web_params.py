"""Number and date query parameters on every page (admin, panel, API, fleet): a sentence and a 4xx, never a 500."""

from __future__ import annotations

import html as htmllib

import pytest

from tests.conftest import bearer
from tests.test_collector import StubCollector, check_record, session  # noqa: F401  (the fleet's fixtures)
from tests.test_web_auth import login
from web import create_app

# Values that cannot be a page, a session number or a preset: each named here, none read from the code.
HUGE = "9" * 21
NOT_NUMBERS = [
    HUGE,
    "9" * 5000,
    "-1",
    "0",
    "-0",
    "abc",
    "1e3",
    "1.5",
    " 2x",
    "\u0663",
    "\uff12",
    "0x10",
    "1000001",
    "nan",
    "inf",
]
PAGE_SENTENCE = "The page must be a whole number from 1 to 1000000."


@pytest.fixture
def admin(services, clock, users):
    client = create_app(
        services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic}
    ).test_client()
    login(client, "admin", "1234")
    return client


def text(resp) -> str:
    return htmllib.unescape(resp.get_data(as_text=True))


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_pages_admin_events_page_number_is_refused_with_a_sentence(admin, value):
    resp = admin.get("/admin/events", query_string={"page": value})
    assert resp.status_code == 400 and PAGE_SENTENCE in text(resp)


@pytest.mark.parametrize("value", ["", "1", "2", "1000000"])
def test_pages_admin_events_page_number_in_range_is_served(admin, value):
    assert admin.get("/admin/events", query_string={"page": value}).status_code == 200


@pytest.mark.parametrize("name", ["before", "after"])
@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_pages_admin_log_cursor_is_refused_with_a_sentence(admin, name, value):
    resp = admin.get("/admin/log", query_string={name: value})
    if value in ("0", "1000001"):  # whole numbers: no such session, said as such
        assert resp.status_code in (200, 400) and "<title>" in text(resp)
        return
    assert resp.status_code == 400 and "is not a session number" in text(resp)


@pytest.mark.parametrize("name", ["from", "to"])
@pytest.mark.parametrize("value", NOT_NUMBERS + ["99999-01-01", "2026-13-01"])
def test_pages_admin_log_and_api_dates_are_refused_with_a_sentence(admin, services, users, name, value):
    resp = admin.get("/admin/log", query_string={name: value})
    assert resp.status_code == 400 and "is not an ISO-8601 date" in text(resp)
    resp = admin.get("/admin/log.csv", query_string={name: value})
    assert resp.status_code == 303  # back to the log, which says why
    api = create_app(services, {"TESTING": True}).test_client()
    resp = api.get("/api/sessions", query_string={name: value}, headers=bearer(users["admin"]))
    assert resp.status_code == 400 and "is not an ISO-8601 date" in resp.get_json()["error"]


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_pages_panel_preset_in_the_query_is_refused_with_a_sentence(services, clock, users, value):
    client = create_app(
        services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic}
    ).test_client()
    login(client, "ann", "2468")
    resp = client.get("/panel/", query_string={"ask": "room1", "minutes": value})
    assert resp.status_code == 400 and "Choose one of Room 1's preset durations." in text(resp)


@pytest.fixture
def fleet(tmp_path):
    from lampctl.fleet.central_log import CentralLog
    from web.fleet import create_fleet_app

    central = CentralLog(tmp_path / "central.db")
    central.write([("session", check_record("session", "n1", session(i))) for i in range(1, 4)])
    yield create_fleet_app(StubCollector(central), {"TESTING": True}).test_client()
    central.close()


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_pages_fleet_log_page_number_is_refused_with_a_sentence(fleet, value):
    resp = fleet.get("/log", query_string={"page": value})
    assert resp.status_code == 400 and PAGE_SENTENCE in text(resp)


@pytest.mark.parametrize("value", ["", "1", "7", "1000000"])
def test_pages_fleet_log_page_number_past_the_last_shows_the_last(fleet, value):
    assert fleet.get("/log", query_string={"page": value}).status_code == 200
