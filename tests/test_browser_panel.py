"""The panel at the couch in Chromium: buttons never move, no contact is never mistaken for heating, the limit
and the continuation question are shown before a tap, and a shared tablet locks and switches users."""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests import browser_kit
from tests.browser_kit import SIZES, TABLET, button_boxes, log_in, new_page, overflowing, shot, size_name, tap
from tests.procs import ServiceProcess, add_users, lampctl, service_config, wait_until

pytestmark = pytest.mark.browser
browser = browser_kit.browser  # the shared fixture

# Room 1 has a tiny limit so the continuation rule (S18) shows in seconds; Room 2 is a clinic's usual lamp.
LAMPS = """
[[lamps]]
id = "room1"
name = "Room 1"
relay_pin = 17
max_minutes = 1
default_minutes = 0.1
presets = [0.1, 0.95]

[[lamps]]
id = "room2"
name = "Room 2"
relay_pin = 18
max_minutes = 30
presets = [10, 15, 20, 30]
rest_window_s = 0
"""


def _service(tmp_path_factory, name: str, extra: str = ""):
    config = service_config(tmp_path_factory.mktemp(name), LAMPS, extra=extra)
    tokens = add_users(config)
    lampctl("user", "add", "bob", "--role", "practitioner", "--pin", "1357", config=config)
    svc = ServiceProcess(config).start()
    svc.tokens = tokens
    return svc


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = _service(tmp_path_factory, "panel")
    try:
        yield svc
    finally:
        svc.stop()


def _all_off(service) -> None:
    status, _ = service.post("/api/stop-all", {}, token=service.tokens["admin"])
    assert status == 200


def _polled(page) -> None:
    """Wait until the page has applied a state poll of its own (its buttons then follow the server)."""
    with page.expect_response(re.compile(r".*/panel/state\.json$")):
        pass


@pytest.mark.parametrize("viewport", SIZES, ids=size_name)
def test_browser_buttons_never_move_after_a_tap_a_message_a_refusal_or_a_banner(browser, service, viewport):
    from playwright.sync_api import expect

    _all_off(service)
    context, page = new_page(browser, viewport)
    try:
        log_in(page, service.url, "ann", "2468")
        _polled(page)
        room2 = page.get_by_role("region", name="Room 2")
        before = button_boxes(page)
        shot(page, "move-0-first-view")
        tap(page, page.get_by_role("heading", name="Room 1"))  # the first touch unlocks the chime
        expect(page.locator("#sound-note")).to_be_hidden()
        assert button_boxes(page) == before, "the first tap moved a button"

        tap(page, room2.get_by_role("button", name="10 min"))
        expect(page.locator("#messages")).to_have_text("Room 2 started for 10 min.")
        expect(room2).to_have_attribute("data-state", "on")
        assert button_boxes(page) == before, "a message moved a button"
        shot(page, "move-1-message")

        # A page that missed a change: its 20 min button still looks enabled; the refusal takes no room.
        page.evaluate("document.querySelector('#lamp-room2 .btn-preset[value=\"20\"]').disabled = false")
        tap(page, room2.get_by_role("button", name="20 min"))
        expect(page.locator("#messages")).to_have_text("Room 2 is already on.")
        assert button_boxes(page) == before, "a refusal moved a button"
        shot(page, "move-2-refusal")

        page.route(re.compile(r".*/panel/state\.json$"), lambda route: route.abort())
        alert = page.get_by_role("alert").filter(has_text="No contact with the lamp controller")
        expect(alert).to_be_visible(timeout=6000)
        assert button_boxes(page) == before, "a banner moved a button"
        shot(page, "move-3-banner")
        page.unroute(re.compile(r".*/panel/state\.json$"))
        expect(alert).to_have_count(0, timeout=6000)

        tap(page, room2.get_by_role("button", name="Stop"))
        expect(room2).to_have_attribute("data-state", "off")
        assert button_boxes(page) == before
        assert overflowing(page) == []
        assert page.console_errors == []
    finally:
        context.close()


def test_browser_limit_disables_what_it_forbids_and_the_continuation_question(browser, service):
    from playwright.sync_api import expect

    _all_off(service)
    context, page = new_page(browser, TABLET)
    try:
        log_in(page, service.url, "ann", "2468")
        room1 = page.get_by_role("region", name="Room 1")
        room2 = page.get_by_role("region", name="Room 2")
        room2.get_by_role("button", name="20 min").click()
        expect(room2.get_by_role("button", name="+5 min")).to_be_enabled()
        expect(room2.locator(".lamp-note")).to_contain_text("10 min more may be added")
        for _ in range(2):
            room2.get_by_role("button", name="+5 min").click()
            expect(page.locator("#messages")).to_contain_text("5 min added")
        expect(room2.get_by_role("button", name="+5 min")).to_be_disabled()
        expect(room2.locator(".lamp-note")).to_contain_text("at its 30 min limit: no more time can be added")
        room2.get_by_role("button", name="Stop").click()

        # Room 1's limit is 1 min: after a 6 s session, 57 s more for the same patient would pass it.
        room1.get_by_role("button", name="6 s").click()
        expect(room1).to_have_attribute("data-state", "on")
        expect(room1.get_by_role("button", name="+5 min")).to_be_disabled()  # 5 min would pass the 1 min limit
        expect(room1).to_have_attribute("data-state", "off", timeout=15_000)
        expect(room1.locator(".lamp-note")).to_contain_text(re.compile(r"The same patient has 5\d s left of 1 min"))
        room1.get_by_role("button", name="57 s").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("Room 1, 57 s: same patient or a new patient?")
        # Item 17.1: "Same patient" offers what is left, never only "New patient".
        same = dialog.get_by_role("button", name=re.compile(r"^Same patient: 5\d s, all that is left$"))
        expect(same).to_be_enabled()
        same_box = same.bounding_box()
        new_box = dialog.get_by_role("button", name="New patient…").bounding_box()
        dialog.get_by_role("button", name="Stop all").click(trial=True)  # stopping never waits for an answer
        shot(page, "ask-limit", full_page=False)
        dialog.get_by_role("button", name="New patient…").click()
        # A second, deliberate step; its "yes" sits where "Same patient" was, and where "New patient"
        # was there is now "Same patient": a double tap lands on the safe choice.
        expect(dialog).to_contain_text("Room 1: really a new patient?")
        yes = dialog.get_by_role("button", name="Yes, a new patient: start 57 s")
        assert _under(yes.bounding_box(), same_box), "the yes is not where Same patient was"
        assert _under(dialog.get_by_role("button", name=re.compile(r"^Same patient: ")).bounding_box(), new_box), (
            "a second tap on New patient would not land on Same patient"
        )
        expect(room1).to_have_attribute("data-state", "off")
        shot(page, "ask-new-patient", full_page=False)
        yes.click()
        expect(room1).to_have_attribute("data-state", "on")
        expect(page.locator("#messages")).to_have_text("Room 1 started for 57 s for a new patient (recorded).")
        assert page.console_errors == []
    finally:
        context.close()
    status, body = service.get("/api/sessions", token=service.tokens["admin"])
    room1_sessions = [s for s in body["sessions"] if s["lamp_id"] == "room1"]
    assert [s["continues"] for s in room1_sessions][-2:] == [None, None]
    assert room1_sessions[-1]["new_patient"] is True and room1_sessions[-1]["new_patient_by"] == "ann"


def _under(box: dict, tapped: dict) -> bool:
    """Whether a tap at the middle of `tapped` lands inside `box`."""
    x, y = tapped["x"] + tapped["width"] / 2, tapped["y"] + tapped["height"] / 2
    return box["x"] <= x <= box["x"] + box["width"] and box["y"] <= y <= box["y"] + box["height"]


def _wait_off(service, lamp_id: str) -> None:
    def off():
        status, body = service.get(f"/api/lamps/{lamp_id}", token=service.tokens["admin"])
        return status == 200 and body["state"] == "off"

    wait_until(off, 20, f"{lamp_id} off")


def test_browser_continuation_question_without_javascript(browser, service):
    from playwright.sync_api import expect

    _all_off(service)
    _wait_off(service, "room1")
    status, _ = service.post("/api/lamps/room1/start", {"seconds": 1, "new_patient": True}, token=service.tokens["ann"])
    assert status == 201
    _wait_off(service, "room1")
    context, page = new_page(browser, browser_kit.PHONE, java_script_enabled=False)
    try:
        log_in(page, service.url, "ann", "2468")
        page.get_by_role("region", name="Room 1").get_by_role("button", name="6 s").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("Room 1, 6 s: same patient or a new patient?")
        same = dialog.get_by_role("button", name=re.compile(r"^Same patient \(5\d s left\)$"))
        expect(same).to_be_enabled()
        dialog.get_by_role("button", name="Stop all").click(trial=True)  # stopping never waits for an answer
        shot(page, "ask-nojs", full_page=False)
        same.click()
        expect(page.locator("#messages")).to_have_text("Room 1 started for 6 s.")
        expect(dialog).to_have_count(0)
        # Item 17.1 without JavaScript: a new patient takes the second step too.
        page.get_by_role("region", name="Room 1").get_by_role("button", name="Stop").click()
        page.get_by_role("region", name="Room 1").get_by_role("button", name="6 s").click()
        page.get_by_role("dialog").get_by_role("button", name="New patient…").click()
        expect(page.get_by_role("dialog")).to_contain_text("Room 1: really a new patient?")
        page.get_by_role("dialog").get_by_role("button", name="Yes, a new patient: start 6 s").click()
        expect(page.locator("#messages")).to_have_text("Room 1 started for 6 s for a new patient (recorded).")
    finally:
        context.close()
    status, body = service.get("/api/sessions", token=service.tokens["admin"])
    assert body["sessions"][-2]["continues"] == body["sessions"][-3]["id"]
    assert body["sessions"][-1]["new_patient_by"] == "ann" and body["sessions"][-1]["continues"] is None


def test_browser_frozen_service_shows_no_contact_and_an_undeliverable_stop(browser, tmp_path_factory):
    """Item 2: `lampctl serve` frozen with SIGSTOP must never look like a heating lamp."""
    from playwright.sync_api import expect

    svc = _service(tmp_path_factory, "frozen")
    context, page = new_page(browser, TABLET)
    try:
        log_in(page, svc.url, "ann", "2468")
        room2 = page.get_by_role("region", name="Room 2")
        room2.get_by_role("button", name="10 min").click()
        expect(room2).to_have_attribute("data-state", "on")
        _polled(page)
        svc.signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        alert = page.get_by_role("alert").filter(has_text=re.compile(r"^No contact with the lamp controller"))
        expect(alert).to_be_visible(timeout=4500)
        took = time.monotonic() - frozen_at
        print(f"no-contact alert after {took:.2f} s")
        assert took < 4.5
        expect(alert).to_contain_text("safety timer")
        expect(alert).to_contain_text("wall switch or the E-stop")
        expect(room2).to_have_attribute("data-stale", "")
        expect(room2.locator(".lamp-state")).to_have_text("Last known")
        expect(page.get_by_role("region", name="Room 1").get_by_role("button", name="6 s")).to_be_disabled()
        expect(room2.get_by_role("button", name="+5 min")).to_be_disabled()
        clock = room2.get_by_role("timer").inner_text()
        shot(page, "frozen")
        room2.get_by_role("button", name="Stop").click()
        undelivered = page.get_by_role("alert").filter(has_text=re.compile(r"^Stop could NOT be delivered"))
        expect(undelivered).to_be_visible(timeout=1000)
        assert room2.get_by_role("timer").inner_text() == clock  # a last known clock does not count down
        svc.signal(signal.SIGCONT)
        expect(alert).to_have_count(0, timeout=8000)
        expect(room2).not_to_have_attribute("data-stale", "")
        # The thawed service served the Stop that waited in its queue: nothing heats, and only then the alert goes.
        expect(room2).not_to_have_attribute("data-state", "on")
        expect(undelivered).to_have_count(0)
        assert page.console_errors == []
    finally:
        context.close()
        svc.signal(signal.SIGCONT)
        svc.stop()


def test_browser_idle_lock_keeps_stop_and_a_quick_switch_unlocks(browser, tmp_path_factory):
    """Item 6: a locked panel can always stop a lamp, never start one; tap your name and PIN to take over."""
    svc = _service(tmp_path_factory, "locking", extra="[panel]\nlock_after_s = 3\n")
    try:
        _lock_and_switch(browser, svc)
    finally:
        svc.stop()


def _lock_and_switch(browser, svc) -> None:
    from playwright.sync_api import expect

    for viewport in (browser_kit.PHONE, TABLET):
        context, page = new_page(browser, viewport)
        try:
            log_in(page, svc.url, "ann", "2468")
            room2 = page.get_by_role("region", name="Room 2")
            room2.get_by_role("button", name="10 min").click()
            expect(room2).to_have_attribute("data-state", "on")
            before = button_boxes(page)
            expect(page.locator("#lock-note")).to_be_visible(timeout=8000)
            expect(room2.get_by_role("button", name="+5 min")).to_be_disabled()
            for name in ("10 min", "15 min"):
                expect(page.get_by_role("region", name="Room 1").get_by_role("button", name="6 s")).to_be_disabled()
                expect(room2.get_by_role("button", name=name)).to_be_disabled()
            expect(room2.get_by_role("button", name="Stop")).to_be_enabled()
            assert button_boxes(page) == before, "the lock moved a button"
            shot(page, "locked")
            room2.get_by_role("button", name="Stop").click()
            expect(page.locator("#messages")).to_have_text("Room 2 stopped: the session ended and the lamp is off.")
            expect(room2.get_by_role("button", name="10 min")).to_be_disabled()  # a Stop does not unlock
            page.get_by_role("link", name="unlock with your PIN").click()
            page.get_by_text("bob", exact=True).click()
            page.get_by_label("PIN").fill("1357")
            shot(page, "switch")
            page.get_by_role("button", name="Unlock").click()
            expect(page.locator("#messages")).to_have_text("The panel now works under bob.")
            expect(page.locator("#lock-note")).to_be_hidden()
            room2.get_by_role("button", name="10 min").click()
            expect(room2.locator(".lamp-note")).to_contain_text("Started by bob")
            page.get_by_role("button", name="Stop all").click()
            expect(page.locator("#messages")).to_have_text("All lamps are off. Sessions ended: Room 2.")
            assert page.console_errors == []
        finally:
            context.close()


def _inside(box: dict, slot: dict) -> bool:
    return (
        box["y"] >= slot["y"] - 0.5
        and box["y"] + box["height"] <= slot["y"] + slot["height"] + 0.5
        and box["x"] >= slot["x"] - 0.5
        and box["x"] + box["width"] <= slot["x"] + slot["width"] + 0.5
    )


def _alert_boxes(page) -> list[tuple[str, dict]]:
    """Each banner in the status slot, top to bottom, with its box, and the slot's visible box last."""
    return page.evaluate("""() => {
      const slot = document.getElementById('status');
      const r = slot.getBoundingClientRect();
      const out = Array.from(slot.querySelectorAll('.banner')).map(b => {
        const x = b.getBoundingClientRect();
        return [b.className.replace(/.*banner-/, ''), {x: x.x, y: x.y, width: x.width, height: x.height}];
      }).sort((a, b) => a[1].y - b[1].y);
      out.push(['slot', {x: r.x, y: r.y, width: r.width, height: r.height}]);
      return out;
    }""")


@pytest.mark.parametrize("viewport", SIZES, ids=size_name)
def test_browser_every_alert_is_wholly_visible_most_severe_on_top(browser, service, viewport):
    """Item 17.2: an alert below the visible part of the status slot is never seen."""
    import json

    from playwright.sync_api import expect

    _all_off(service)
    context, page = new_page(browser, viewport)
    try:
        log_in(page, service.url, "ann", "2468")
        room2 = page.get_by_role("region", name="Room 2")
        tap(page, room2.get_by_role("button", name="10 min"))
        expect(room2).to_have_attribute("data-state", "on")
        page.evaluate("window.scrollTo(0, 0)")
        # No contact, then a Stop that cannot be delivered: that alert goes on top, whole.
        page.route(re.compile(r".*/panel/.*\.json$|.*/panel/lamps/.*"), lambda route: route.abort())
        expect(page.locator(".banner-offline")).to_be_visible(timeout=6000)
        *banners, (_, slot) = _alert_boxes(page)
        assert [k for k, _ in banners] == ["offline"] and _inside(banners[0][1], slot), (banners, slot)
        tap(page, room2.get_by_role("button", name="Stop"))
        expect(page.locator(".banner-undelivered")).to_be_visible()
        # The failed Stop gave no button back that contact does not allow.
        expect(page.get_by_role("region", name="Room 1").get_by_role("button", name="6 s")).to_be_disabled()
        page.evaluate("window.scrollTo(0, 0)")
        *banners, (_, slot) = _alert_boxes(page)
        assert banners[0][0] == "undelivered" and all(_inside(b, slot) for _, b in banners), (banners, slot)
        shot(page, "alert-undelivered", full_page=False)
        page.unroute(re.compile(r".*/panel/.*\.json$|.*/panel/lamps/.*"))
        tap(page, room2.get_by_role("button", name="Stop"))
        expect(page.locator(".banner-undelivered")).to_have_count(0)

        # Three alarms at once, as the server would send them: each whole, in the order of harm.
        def with_banners(route):
            body = json.loads(route.fetch().text())
            body["banners"] = [
                {
                    "kind": "estop",
                    "text": "Emergency stop from the API by ann. Every lamp stays off until an admin resets it.",
                    "short": "EMERGENCY STOP: every lamp locked off until an admin resets it.",
                },
                {
                    "kind": "firmware",
                    "text": "The safety controller is not answering: lamps that were on are off, "
                    "and new sessions may be refused until it is back. Tell an admin.",
                    "short": "Safety controller not answering: lamps off. Tell an admin.",
                },
                {
                    "kind": "log",
                    "text": "The usage log cannot be saved right now (3 records waiting); lamps still "
                    "work. Tell an admin.",
                    "short": "Usage log not saving (3 waiting). Tell an admin.",
                },
            ]
            route.fulfill(json=body)

        page.route(re.compile(r".*/panel/state\.json$"), with_banners)
        expect(page.locator(".banner-log")).to_be_visible(timeout=4000)
        page.evaluate("window.scrollTo(0, 0)")
        *banners, (_, slot) = _alert_boxes(page)
        assert [k for k, _ in banners] == ["estop", "firmware", "log"], banners
        assert all(_inside(b, slot) for _, b in banners), (banners, slot)
        shot(page, "alert-three", full_page=False)
        assert page.console_errors == []
    finally:
        context.close()
