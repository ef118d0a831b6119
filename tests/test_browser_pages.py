"""The pages in a real browser (Debian's Chromium through Playwright) against a real `lampctl serve --simulate`."""

from __future__ import annotations

import csv
import re

import pytest

from tests import browser_kit
from tests.browser_kit import PHONE, TABLET, log_in, new_page, shot
from tests.browser_kit import size_name as _size
from tests.procs import TWO_LAMPS, ServiceProcess, add_users, service_config

pytestmark = pytest.mark.browser
browser = browser_kit.browser  # the shared fixture


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    config = service_config(tmp, TWO_LAMPS)
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    svc.tokens = tokens
    try:
        yield svc
    finally:
        svc.stop()


def test_browser_practitioner_runs_a_session_to_its_end_and_stops_another(browser, service):
    from playwright.sync_api import expect

    context, page = new_page(browser, TABLET)
    try:
        page.goto(service.url + "/panel/")
        page.wait_for_url(re.compile(r".*/login\?next=/panel/$"))
        shot(page, "login")
        log_in(page, service.url, "ann", "2468")
        room1 = page.get_by_role("region", name="Room 1")
        room2 = page.get_by_role("region", name="Room 2")
        for label in ("3 s", "6 s", "10 min", "+5 min", "Stop"):
            expect(room1.get_by_role("button", name=label, exact=True)).to_have_count(1)
        expect(room2.get_by_role("button", name="20 min")).to_have_count(1)
        expect(page.get_by_role("button", name="Stop all")).to_have_count(1)
        for button in page.get_by_role("button").all():
            box = button.bounding_box()
            assert box["height"] >= 48 and box["width"] >= 48, button.inner_text()
        shot(page, "panel")

        room1.get_by_role("button", name="3 s").click()
        expect(page.locator("#messages")).to_have_text("Room 1 started for 3 s.")
        clock = room1.get_by_role("timer")
        expect(clock).to_have_text(re.compile(r"0:0[23]"))
        first = clock.inner_text()
        expect(clock).not_to_have_text(first, timeout=2500)  # the countdown moves
        expect(room1.get_by_role("button", name="Stop")).to_be_enabled()
        expect(room1.get_by_role("button", name="3 s")).to_be_disabled()
        shot(page, "panel-running")
        # The lamp ends by itself: state off, the region flashes and the chime plays.
        expect(room1).to_have_attribute("data-state", "off", timeout=6000)
        expect(room1).to_have_attribute("data-ended", "1")
        expect(page.locator("body")).to_have_attribute("data-chimes", "1")
        expect(page.locator("#messages")).to_have_text("Room 1: session over, lamp off.")
        expect(page.locator("#sound-note")).to_be_hidden()  # the tap that started it unlocked the sound
        expect(clock).to_have_text("Off")

        room1.get_by_role("button", name="10 min").click()
        # Within the rest window the panel asks once whether this is the same patient (S18).
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("same patient or a new patient?")
        shot(page, "panel-ask")
        dialog.get_by_role("button", name=re.compile(r"^Same patient \(29 min 5\d s left\)$")).click()
        expect(dialog).to_have_count(0)
        expect(room1).to_have_attribute("data-state", "on")
        expect(clock).to_have_text(re.compile(r"(10:00|9:5\d)"))
        room1.get_by_role("button", name="+5 min").click()
        expect(page.locator("#messages")).to_have_text(re.compile(r"Room 1: 5 min added, 1[45]:\d\d left\."))
        # Started within the rest window, this continues the 3 s session's patient (S18): those
        # 3 s count, so 10 + 3 x 5 min is as far as the 30 min limit allows.
        for _ in range(2):
            room1.get_by_role("button", name="+5 min").click()
        expect(page.locator("#messages")).to_have_text(re.compile(r"25:00 left|24:5\d left"))
        # Where +5 min no longer fits it is disabled and the note says what may still be added (the 3 s).
        expect(room1.get_by_role("button", name="+5 min")).to_be_disabled()
        expect(room1.locator(".lamp-note")).to_contain_text(
            re.compile(r"only 4 min 5\d s more may be added, too little for \+5 min")
        )
        shot(page, "panel-at-limit")
        room1.get_by_role("button", name="Stop").click()
        expect(room1).to_have_attribute("data-state", "off")
        expect(page.locator("#messages")).to_have_text(re.compile("Room 1"))
        assert page.console_errors == []
    finally:
        context.close()

    status, body = service.get("/api/sessions", token=service.tokens["admin"])
    assert status == 200
    assert [(s["lamp_id"], s["user"], s["end_reason"]) for s in body["sessions"]] == [
        ("room1", "ann", "completed"),
        ("room1", "ann", "stopped"),
    ]


def test_browser_panel_on_a_phone(browser, service):
    from playwright.sync_api import expect

    context, page = new_page(browser, PHONE)
    try:
        log_in(page, service.url, "admin", "1234")
        shot(page, "panel")
        room2 = page.get_by_role("region", name="Room 2")
        room2.get_by_role("button", name="10 min").click()
        expect(room2).to_have_attribute("data-state", "on")
        shot(page, "panel-running")
        page.get_by_role("button", name="Stop all").click()
        expect(page.locator("#messages")).to_have_text("All lamps are off. Sessions ended: Room 2.")
        expect(room2).to_have_attribute("data-state", "off")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], "the panel scrolls sideways on a phone"
        assert page.console_errors == []
    finally:
        context.close()


def test_browser_admin_finds_sessions_in_log_and_csv(browser, service, tmp_path):
    from playwright.sync_api import expect

    for viewport in (TABLET, PHONE):
        context, page = new_page(browser, viewport)
        try:
            log_in(page, service.url, "admin", "1234")
            page.get_by_role("link", name="Admin", exact=True).click()
            expect(page.get_by_role("heading", name="Session log")).to_be_visible()
            page.get_by_label("Practitioner").select_option("ann")
            page.get_by_role("button", name="Filter").click()
            rows = page.locator("table.log tbody tr")
            expect(rows).to_have_count(2)
            table = [[c.strip() for c in r.locator("td").all_inner_texts()] for r in rows.all()]
            assert [(r[1], r[2], r[7]) for r in table] == [("Room 1", "ann", "stopped"), ("Room 1", "ann", "completed")]
            shot(page, "admin-log")
            with page.expect_download() as info:
                page.get_by_role("link", name="Download CSV").click()
            path = tmp_path / f"log-{_size(viewport)}.csv"
            info.value.save_as(path)
            with path.open(newline="") as fh:
                csv_rows = list(csv.reader(fh))
            assert csv_rows[0] == [
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
            ]
            # Same sessions as the table (which shows newest first), with the same end reasons.
            assert [(r[0], r[1], r[2], r[7]) for r in reversed(csv_rows[1:])] == [
                (r[0], "room1", r[2], r[7]) for r in table
            ]
            assert abs(float(csv_rows[1][6]) - 3) < 0.5 and float(csv_rows[2][5]) >= 600
            for name in ("Usage", "Bulbs", "Events", "Users", "Lamps"):
                page.get_by_role("link", name=name, exact=True).click()
                expect(page.get_by_role("heading", level=1)).to_be_visible()
                shot(page, f"admin-{name.lower()}")
            assert page.console_errors == []
        finally:
            context.close()


def test_browser_five_wrong_pins_lock_the_name_out(browser, service):
    from playwright.sync_api import expect

    context, page = new_page(browser, PHONE)
    try:
        page.goto(service.url + "/login")
        for _ in range(5):
            page.get_by_label("Name").fill("ann")
            page.get_by_label("PIN").fill("9999")
            page.get_by_role("button", name="Log in").click()
            page.wait_for_load_state()
        expect(page.get_by_role("alert")).to_have_text(re.compile("Too many wrong PINs for ann"))
        page.get_by_label("PIN").fill("2468")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_have_text(re.compile("this name is locked"))
        shot(page, "login-locked")
        assert "/login" in page.url
    finally:
        context.close()
    status, _ = service.get("/api/health")
    assert status == 200
