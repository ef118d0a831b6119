"""S21 in Chromium: a logged-out, locked or switching tablet still shows every heating lamp with its countdown
and a Stop that works, at phone sizes with touch and at tablet sizes; logging out while a lamp heats asks first."""

from __future__ import annotations

import re

import pytest

from tests import browser_kit
from tests.browser_kit import SIZES, log_in, new_page, shot, size_name, tap
from tests.procs import TWO_LAMPS

pytestmark = pytest.mark.browser
browser = browser_kit.browser  # the shared fixture


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    yield from browser_kit.served(tmp_path_factory, "s21", TWO_LAMPS)


def _api(service, path: str, body: dict | None = None) -> dict:
    status, reply = service.post(path, body or {}, token=service.tokens["admin"])
    assert status in (200, 201), reply
    return reply


def _relay_on(service, lamp: str) -> bool:
    _, health = service.get("/api/health")
    return {l["id"]: l["relay_on"] for l in health["lamps"]}[lamp]


@pytest.mark.parametrize("viewport", SIZES, ids=size_name)
def test_s21_browser_logged_out_tablet_shows_the_running_lamp_and_stops_it(browser, service, viewport):
    from playwright.sync_api import expect

    _api(service, "/api/stop-all")
    _api(service, "/api/lamps/room2/start", {"minutes": 10})
    context, page = new_page(browser, viewport)
    try:
        page.goto(service.url + "/login")
        stops = page.get_by_role("region", name="Lamps on now")
        room1 = stops.locator("[data-lamp=room1]")
        room2 = stops.locator("[data-lamp=room2]")
        expect(room2).to_be_visible()
        expect(room1).to_be_hidden()
        expect(room2.get_by_role("timer")).to_have_text(re.compile(r"^(10:00|9:\d\d)$"))
        first = room2.get_by_role("timer").inner_text()
        expect(room2.get_by_role("timer")).not_to_have_text(first, timeout=4000)  # live, not as the page loaded
        stop = stops.get_by_role("button", name="Stop Room 2")
        # Reachable with at most one scroll, and as big as the panel's own Stop.
        box = stop.bounding_box()
        assert box["y"] + box["height"] <= 2 * viewport["height"], box
        assert box["height"] >= 48 and box["width"] >= 48
        login_button = page.get_by_role("button", name="Log in")
        before = login_button.bounding_box()
        _api(service, "/api/lamps/room1/start", {"minutes": 10})  # a lamp started elsewhere shows up...
        expect(room1).to_be_visible(timeout=4000)
        assert login_button.bounding_box() == before  # ...below the form: the Log in button never moves
        shot(page, "s21-login-running")
        tap(page, stop)
        page.wait_for_url(re.compile(r".*/login$"))
        expect(page.locator("#messages")).to_have_text("Room 2 stopped: the session ended and the lamp is off.")
        assert not _relay_on(service, "room2")
        expect(page.get_by_role("region", name="Lamps on now").locator("[data-lamp=room2]")).to_be_hidden()
        tap(page, page.get_by_role("button", name="Stop all"))
        expect(page.locator("#messages")).to_have_text("All lamps are off. Sessions ended: Room 1.")
        assert not _relay_on(service, "room1")
        expect(page.locator(".stops-none")).to_be_visible()
        shot(page, "s21-login-stopped")
        assert page.console_errors == []
    finally:
        context.close()


@pytest.mark.parametrize("viewport", SIZES, ids=size_name)
def test_s21_browser_logout_while_a_lamp_heats_asks_first_and_the_login_page_keeps_its_stop(browser, service, viewport):
    from playwright.sync_api import expect

    _api(service, "/api/stop-all")
    context, page = new_page(browser, viewport)
    try:
        log_in(page, service.url, "ann", "2468")
        _api(service, "/api/lamps/room1/start", {"minutes": 10})
        expect(page.get_by_role("region", name="Room 1")).to_have_attribute("data-state", "on")
        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_role("heading", name="Log out while a lamp is on?")).to_be_visible()
        expect(page.get_by_role("region", name="Lamps on now").locator("[data-lamp=room1]")).to_be_visible()
        shot(page, "s21-logout-question")
        page.get_by_role("link", name="Back to the panel").click()
        page.wait_for_url(re.compile(r".*/panel/$"))  # still logged in
        page.get_by_role("button", name="Log out").click()
        page.get_by_role("button", name="Log out anyway").click()
        page.wait_for_url(re.compile(r".*/login$"))
        expect(page.locator("#messages")).to_have_text("You are logged out.")
        stop = page.get_by_role("button", name="Stop Room 1")
        expect(stop).to_be_visible()
        tap(page, stop)
        expect(page.locator("#messages")).to_have_text("Room 1 stopped: the session ended and the lamp is off.")
        assert not _relay_on(service, "room1")
        assert page.console_errors == []
    finally:
        context.close()


def test_s21_browser_login_page_stop_works_without_javascript(browser, service):
    from playwright.sync_api import expect

    _api(service, "/api/stop-all")
    _api(service, "/api/lamps/room1/start", {"minutes": 10})
    context, page = new_page(browser, browser_kit.PHONE, java_script_enabled=False)
    try:
        page.goto(service.url + "/login")
        page.get_by_role("button", name="Stop Room 1").click()
        expect(page.locator("#messages")).to_have_text("Room 1 stopped: the session ended and the lamp is off.")
        assert not _relay_on(service, "room1")
    finally:
        context.close()
