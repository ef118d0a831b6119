"""Admin pages in Chromium: nothing overflows its box and no page scrolls sideways at four sizes, and the
actions that cannot be undone ask first (with and without JavaScript)."""

from __future__ import annotations

import re

import pytest

from tests import browser_kit
from tests.browser_kit import PHONE, SIZES, SMALL_PHONE, TABLET, log_in, new_page, overflowing, shot, size_name, tap
from tests.procs import TWO_LAMPS, ServiceProcess, add_users, lampctl, service_config, wait_until

pytestmark = pytest.mark.browser
browser = browser_kit.browser  # the shared fixture
PAGES = ("Log", "Usage", "Bulbs", "Events", "Users", "Lamps")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    config = service_config(tmp_path_factory.mktemp("admin"), TWO_LAMPS)
    tokens = add_users(config)
    lampctl("user", "add", "practitioner-with-a-long-name", "--role", "practitioner", "--pin", "1357", config=config)
    svc = ServiceProcess(config).start()
    svc.tokens = tokens
    try:
        for lamp in ("room1", "room2"):
            status, _ = svc.post(f"/api/lamps/{lamp}/start", {"seconds": 1, "new_patient": True}, token=tokens["ann"])
            assert status == 201
        wait_until(
            lambda: all(l["state"] == "off" for l in svc.get("/api/lamps", token=tokens["admin"])[1]["lamps"]),
            20,
            "both sessions ended",
        )
        assert svc.post("/api/estop", {}, token=tokens["ann"])[0] == 200  # both lamps latched
        yield svc
    finally:
        svc.stop()


@pytest.mark.parametrize("viewport", SIZES, ids=size_name)
def test_browser_admin_pages_fit_every_size(browser, service, viewport):
    from playwright.sync_api import expect

    context, page = new_page(browser, viewport)
    try:
        log_in(page, service.url, "admin", "1234")
        assert overflowing(page) == [], "panel"
        shot(page, "fit-panel")
        page.get_by_role("link", name="Admin", exact=True).click()
        for name in PAGES:
            page.get_by_role("link", name=name, exact=True).click()
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            assert overflowing(page) == [], name
            shot(page, f"fit-admin-{name.lower()}")
        assert page.console_errors == []
    finally:
        context.close()


# The admin pages in German (issue 17.7): its longer words must fit as the English ones do.
GERMAN_PAGES = (
    ("Protokoll", "/admin/log", "Sitzungsprotokoll"),
    ("Nutzung", "/admin/usage", "Nutzung"),
    ("Birnen", "/admin/bulbs", "Birnenstunden"),
    ("Ereignisse", "/admin/events", "Ereignisse"),
    ("Benutzer", "/admin/users", "Benutzer"),
    ("Lampen", "/admin/lamps", "Lampen"),
)


@pytest.mark.parametrize("viewport", [TABLET, PHONE], ids=size_name)
def test_browser_admin_pages_in_german_fit(browser, service, viewport):
    from playwright.sync_api import expect

    context, page = new_page(browser, viewport)
    try:
        log_in(page, service.url, "admin", "1234")
        page.goto(service.url + "/language/de?next=/admin/log")
        expect(page.locator("html")).to_have_attribute("lang", "de")
        for link, path, heading in GERMAN_PAGES:
            page.get_by_role("link", name=link, exact=True).click()
            page.wait_for_url(re.compile(f".*{path}$"))
            expect(page.get_by_role("heading", level=1)).to_have_text(heading)
            shot(page, f"admin-{path.rsplit('/', 1)[1]}-de")
            assert overflowing(page) == [], path
        page.goto(service.url + "/admin/log")
        if viewport == TABLET:  # a phone stacks the table: the header row is for screen readers only
            expect(page.get_by_role("columnheader", name="Ist")).to_be_visible()
        expect(page.get_by_role("link", name="CSV herunterladen")).to_be_visible()
        assert page.console_errors == []
    finally:
        context.close()


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "nojs"])
def test_browser_bulb_remove_and_reset_ask_first(browser, service, javascript):
    from playwright.sync_api import expect

    assert service.post("/api/estop", {}, token=service.tokens["ann"])[0] == 200  # latched afresh for each run
    context, page = new_page(browser, TABLET, java_script_enabled=javascript)
    try:
        log_in(page, service.url, "admin", "1234")
        page.goto(service.url + "/admin/lamps")
        row = page.locator("tr[data-lamp=room1]")
        expect(row).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d.*emergency stop by ann"))
        row.get_by_role("button", name="Reset fault of Room 1").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Reset the fault of Room 1?")
        shot(page, f"confirm-reset-{'js' if javascript else 'nojs'}")
        page.get_by_role("link", name="Cancel").click()
        expect(row).to_contain_text("fault")  # nothing happened
        row.get_by_role("button", name="Reset fault of Room 1").click()
        page.get_by_role("button", name="Yes, reset fault").click()
        expect(page.locator("#messages")).to_have_text("Room 1: fault cleared; the lamp is off and ready.")

        page.goto(service.url + "/admin/bulbs")
        page.get_by_role("button", name="Bulb replaced in Room 2").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Record a new bulb in Room 2?")
        page.get_by_role("button", name="Yes, bulb replaced").click()
        expect(page.locator("#messages")).to_contain_text("Room 2: bulb replacement recorded")

        page.goto(service.url + "/admin/users")
        name = "practitioner-with-a-long-name"
        if javascript:
            page.get_by_role("button", name=f"Remove {name}").click()
            expect(page.get_by_role("heading", level=1)).to_have_text(f"Remove {name}?")
            page.get_by_role("link", name="Cancel").click()
            expect(page.locator(f"tr[data-user='{name}']")).to_have_count(1)
        else:
            page.get_by_role("button", name=f"Remove {name}").click()
            page.get_by_role("button", name=f"Yes, remove {name}").click()
            expect(page.locator("#messages")).to_contain_text(f"{name} removed")
    finally:
        context.close()


@pytest.mark.parametrize("viewport", [TABLET, SMALL_PHONE], ids=size_name)
def test_browser_reset_all_lists_every_latch_then_clears_them_all(browser, service, viewport):
    from playwright.sync_api import expect

    assert service.post("/api/estop", {}, token=service.tokens["ann"])[0] == 200  # both lamps latched afresh
    context, page = new_page(browser, viewport)  # a phone size is touch and mobile
    try:
        log_in(page, service.url, "admin", "1234")
        page.goto(service.url + "/admin/lamps")
        shot(page, "reset-all-offered")
        tap(page, page.get_by_role("button", name="Reset all faults (2 lamps)"))
        expect(page.get_by_role("heading", level=1)).to_have_text("Reset the faults of all 2 latched lamps?")
        items = page.locator(".confirm-items li")
        expect(items).to_have_count(2)
        expect(items.nth(0)).to_have_text(
            re.compile(
                r"^Room 1, latched since \d{4}-\d\d-\d\d \d\d:\d\d.*: "
                r"emergency stop by ann from the API$"
            )
        )
        expect(items.nth(1)).to_contain_text("Room 2, latched since")
        assert overflowing(page) == [], "confirmation"
        shot(page, "confirm-reset-all")
        tap(page, page.get_by_role("button", name="Yes, reset all 2 faults"))
        expect(page.locator("#messages")).to_have_text("Faults cleared on Room 1, Room 2; the lamps are off and ready.")
        for lamp in ("room1", "room2"):
            expect(page.locator(f"tr[data-lamp={lamp}] td[data-label=State]")).to_have_text("off")
        expect(page.get_by_role("button", name=re.compile("^Reset all faults"))).to_have_count(0)
        assert overflowing(page) == [], "lamps after the reset"
        shot(page, "reset-all-done")
        assert page.console_errors == []
    finally:
        context.close()
