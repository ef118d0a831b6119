"""Item 17.3 and 17.5 in Chromium: an alarm looks and sounds like one and stays until OK is tapped; a normal
end stays marked and chimes a few times until OK; the one-minute warning is amber; sound says when it is off."""

from __future__ import annotations

import re

import pytest

from tests import browser_kit
from tests.browser_kit import SIZES, TABLET, button_boxes, log_in, new_page, shot, size_name, tap

pytestmark = pytest.mark.browser
browser = browser_kit.browser  # the shared fixture

# No rest window: each test starts its sessions without the continuation question.
LAMPS = """
[[lamps]]
id = "room1"
name = "Room 1"
relay_pin = 17
max_minutes = 1
presets = [0.1, 0.95]
rest_window_s = 0

[[lamps]]
id = "room2"
name = "Room 2"
relay_pin = 18
max_minutes = 30
presets = [10, 15, 20, 30]
rest_window_s = 0
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    yield from browser_kit.served(tmp_path_factory, "alarms", LAMPS)


def _post(service, path: str, body: dict | None = None, user: str = "admin") -> dict:
    status, reply = service.post(path, body or {}, token=service.tokens[user])
    assert status in (200, 201), reply
    return reply


def _reset_all(service) -> None:
    _post(service, "/api/stop-all")
    for lamp in ("room1", "room2"):
        status, view = service.get(f"/api/lamps/{lamp}", token=service.tokens["admin"])
        if view["state"] == "fault":
            _post(service, f"/api/lamps/{lamp}/reset")


def _count(page, name: str) -> int:
    return int(page.locator("body").get_attribute(f"data-{name}"))


@pytest.mark.parametrize("viewport", SIZES, ids=size_name)
def test_browser_an_estop_is_an_alarm_until_ok_is_tapped(browser, service, viewport):
    from playwright.sync_api import expect

    _reset_all(service)
    context, page = new_page(browser, viewport)
    try:
        page.clock.install()
        log_in(page, service.url, "ann", "2468")
        room1 = page.get_by_role("region", name="Room 1")
        room2 = page.get_by_role("region", name="Room 2")
        tap(page, room2.get_by_role("button", name="10 min"))
        expect(room2).to_have_attribute("data-state", "on")
        before = button_boxes(page)
        _post(service, "/api/estop", user="ann")  # from elsewhere: this page learns it from its poll
        expect(room2).to_have_attribute("data-mark", "alarm")
        expect(room1).to_have_attribute("data-mark", "alarm")  # idle, but latched too
        # Red, saying what happened and who did it, not the green "session over" (the banner says it once).
        banner = page.locator(".banner-estop[role=alert]")
        expect(banner).to_have_text(
            "Emergency stop from the API by ann. Every lamp stays off until an admin resets it."
        )
        assert page.locator("#messages .flash-ok").count() == 0
        expect(room2.locator(".lamp-note")).to_have_text(re.compile(r"^Emergency stop from the API by ann\."))
        expect(room2.locator(".mark-text")).to_have_text("ALARM")
        assert _count(page, "chimes") == 0 and _count(page, "alarms") >= 1
        page.evaluate("window.scrollTo(0, 0)")
        assert button_boxes(page).keys() == before.keys()
        for key, box in button_boxes(page).items():  # the mark lies over the clock: no button moved
            assert box == before[key], key
        shot(page, "alarm-estop", full_page=False)
        # Its tone repeats until someone taps OK on every alarmed lamp.
        first = _count(page, "alarms")
        page.clock.fast_forward(4500)
        expect(page.locator("body")).not_to_have_attribute("data-alarms", str(first))
        tap(page, room2.get_by_role("button", name="OK"))
        expect(room2).not_to_have_attribute("data-mark", "alarm")
        page.clock.fast_forward(4500)
        second = _count(page, "alarms")
        assert second > first  # Room 1 still alarmed
        tap(page, room1.get_by_role("button", name="OK"))
        expect(room1).not_to_have_attribute("data-mark", "alarm")
        settled = _count(page, "alarms")
        page.clock.fast_forward(9000)
        assert _count(page, "alarms") == settled
        expect(room1).to_have_attribute("data-state", "fault")  # acknowledged, still latched for the admin
        assert page.console_errors == []
    finally:
        context.close()
        _reset_all(service)


@pytest.mark.parametrize("viewport", SIZES, ids=size_name)
def test_browser_a_normal_end_stays_marked_and_chimes_a_few_times_until_ok(browser, service, viewport):
    from playwright.sync_api import expect

    _reset_all(service)
    context, page = new_page(browser, viewport)
    try:
        page.clock.install()
        log_in(page, service.url, "ann", "2468")
        expect(page.locator("#sound-note")).to_be_visible()  # no tap yet: the page says sound is off
        expect(page.locator("#sound-note")).to_have_text("Sound is off: tap anywhere to turn it on.")
        room1 = page.get_by_role("region", name="Room 1")
        tap(page, room1.get_by_role("button", name="6 s"))
        expect(page.locator("#sound-note")).to_be_hidden()
        expect(room1).to_have_attribute("data-state", "on")
        expect(room1).to_have_attribute("data-mark", "ended", timeout=15_000)
        expect(page.locator("#messages .flash-ok")).to_have_text("Room 1: session over, lamp off.")
        expect(room1.locator(".mark-text")).to_have_text("Session over")
        shot(page, "end-marked", full_page=False)
        assert _count(page, "chimes") == 1 and _count(page, "alarms") == 0
        for expected in (2, 3):
            page.clock.fast_forward(10_500)
            expect(page.locator("body")).to_have_attribute("data-chimes", str(expected))
        page.clock.fast_forward(10_500)
        page.clock.fast_forward(10_500)
        assert _count(page, "chimes") == 3  # a few times, then quiet; the mark stays
        expect(room1).to_have_attribute("data-mark", "ended")
        tap(page, room1.get_by_role("button", name="OK"))
        expect(room1).not_to_have_attribute("data-mark", "ended")
        assert page.console_errors == []
    finally:
        context.close()


def test_browser_the_one_minute_warning_is_amber(browser, service):
    from playwright.sync_api import expect

    _reset_all(service)
    context, page = new_page(browser, TABLET)
    try:
        page.clock.install()
        log_in(page, service.url, "ann", "2468")
        room2 = page.get_by_role("region", name="Room 2")
        tap(page, room2.get_by_role("button", name="10 min"))
        expect(room2).to_have_attribute("data-state", "on")
        page.clock.fast_forward(9 * 60_000 + 5_000)  # the page's own clock: a minute left by its countdown
        warn = page.locator("#messages .flash-warn")
        expect(warn).to_have_text("Room 2: one minute left.")
        assert warn.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 176, 0)"
        assert page.locator("#messages .flash-ok").count() == 0
        assert _count(page, "warnings") == 1
    finally:
        context.close()
        _reset_all(service)
