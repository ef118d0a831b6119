"""Item 17.6 in Chromium: eight lamps with German names fit a 1024x768 tablet without scrolling, every name, state
and button label whole; on a phone every running lamp's Stop is in reach without scrolling."""

from __future__ import annotations

import re

import pytest

from tests import browser_kit
from tests.browser_kit import PHONES, TABLET, new_page, shot, size_name

pytestmark = pytest.mark.browser
browser = browser_kit.browser  # the shared fixture

NAMES = [
    "Nackenliege 1",
    "Nackenliege 2",
    "Schulter links",
    "Schulter rechts",
    "Rückenbank",
    "Behandlung 6",
    "Akupunktur 7",
    "Wärmeraum 8",
]
PINS = [17, 18, 22, 23, 24, 25, 26, 27]
LAMPS = "".join(
    f"""
[[lamps]]
id = "l{i + 1}"
name = "{name}"
relay_pin = {pin}
max_minutes = 30
presets = [10, 15, 20, 1.25]
rest_window_s = 0
"""
    for i, (name, pin) in enumerate(zip(NAMES, PINS, strict=True))
)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    yield from browser_kit.served(tmp_path_factory, "eight", LAMPS)


def _german_panel(browser, service, viewport):
    context, page = new_page(browser, viewport, extra_http_headers={"Accept-Language": "de"})
    page.goto(service.url + "/login")
    page.get_by_label("Name").fill("ann")
    page.get_by_label("PIN").fill("2468")
    page.get_by_role("button", name="Anmelden").click()
    page.wait_for_url(re.compile(r".*/panel/$"))
    return context, page


def _clipped(page) -> list[str]:
    """Names, states and button labels whose text does not fit their box (cut off or ellipsed)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        '.lamp h2, .lamp .lamp-state, .lamp button:not([data-ack]), .btn-stop-all, .btn-quick'))
      .filter(e => e.offsetParent !== null)
      .filter(e => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)
      .map(e => (e.closest('[data-lamp]')?.dataset.lamp || 'page') + ': ' + e.textContent.trim())""")


def test_browser_eight_lamps_fit_a_tablet_without_scrolling_every_label_whole(browser, service):
    from playwright.sync_api import expect

    status, _ = service.post("/api/lamps/l6/start", {"minutes": 10}, token=service.tokens["ann"])
    assert status == 201
    context, page = _german_panel(browser, service, TABLET)
    try:
        expect(page.locator("#lamp-l6")).to_have_attribute("data-state", "on")
        assert page.evaluate("document.documentElement.scrollHeight") <= TABLET["height"]
        for lamp in range(1, 9):
            box = page.locator(f"#lamp-l{lamp}").bounding_box()
            assert box["y"] >= 0 and box["y"] + box["height"] <= TABLET["height"], lamp
        assert _clipped(page) == []
        expect(page.locator("#lamp-l1").get_by_role("button", name="1 Min. 15 s")).to_have_count(1)
        shot(page, "eight-lamps-de", full_page=False)
        assert page.console_errors == []
    finally:
        context.close()
        service.post("/api/stop-all", {}, token=service.tokens["admin"])


@pytest.mark.parametrize("viewport", PHONES, ids=size_name)
def test_browser_eight_lamps_on_a_phone_every_running_stop_in_reach(browser, service, viewport):
    from playwright.sync_api import expect

    for lamp in ("l2", "l8"):
        status, _ = service.post(f"/api/lamps/{lamp}/start", {"minutes": 10}, token=service.tokens["ann"])
        assert status == 201
    context, page = _german_panel(browser, service, viewport)
    try:
        quick = page.get_by_role("group", name="Laufende Lampen")
        expect(quick.get_by_role("button")).to_have_count(2)
        # Scrolled to the far end of the page, the running lamps' Stops are still on screen (the bar is sticky).
        page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
        for name in ("Nackenliege 2", "Wärmeraum 8"):
            button = quick.get_by_role("button", name=f"{name} stoppen")
            # At most one scroll: the row's own, sideways, when more lamps run than it shows at once.
            button.evaluate("e => e.scrollIntoView({inline: 'center', block: 'nearest'})")
            box = button.bounding_box()
            assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], name
            assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], name
            assert page.evaluate("window.scrollY") > 0  # the page itself stayed at its far end
        assert _clipped(page) == []
        shot(page, "eight-lamps-phone-de", full_page=False)
        button = quick.get_by_role("button", name="Wärmeraum 8 stoppen")
        b = button.bounding_box()
        page.touchscreen.tap(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
        expect(page.locator("#lamp-l8")).not_to_have_attribute("data-state", "on")
        expect(quick.get_by_role("button")).to_have_count(1)  # it leaves the row once its lamp is off
        assert page.console_errors == []
    finally:
        context.close()
        service.post("/api/stop-all", {}, token=service.tokens["admin"])
