"""The couch's guards on the panel in Chromium, at the four sizes: the patient's stop button (S24), a
tilted stand (S25), the firmware's readings (S23). The panel is served in this process on mock pins,
so the test presses the button and tilts the stand itself; everything else is the real app."""

from __future__ import annotations

import re
import threading

import pytest
from gpiozero.pins.mock import MockFactory
from werkzeug.serving import make_server

from lampctl import config as config_mod
from lampctl.core.clock import MonotonicClock
from lampctl.core.controller import SessionController
from lampctl.core.lamp import Sensed
from lampctl.devices.hardware import RelayBank
from lampctl.storage.accounts import Accounts
from lampctl.storage.store import UsageLog
from tests import browser_kit
from tests.browser_kit import SIZES, button_boxes, log_in, new_page, overflowing, shot, size_name, tap
from tests.conftest import write_config
from web import Services, create_app

pytestmark = pytest.mark.browser
browser = browser_kit.browser

BUTTON_1, TILT_2 = 5, 6
CONFIG = f"""
[service]
database = "lampctl.db"

[[lamps]]
id = "room1"
name = "Room 1"
relay_pin = 17
max_minutes = 30
presets = [10, 20]
rest_window_s = 0
stop_pin = {BUTTON_1}

[[lamps]]
id = "room2"
name = "Room 2"
relay_pin = 18
max_minutes = 30
presets = [10, 20]
rest_window_s = 0
tilt_pin = {TILT_2}
"""


class Panel:
    def __init__(self, tmp_path):
        cfg = config_mod.load(write_config(tmp_path, CONFIG))
        self.factory = MockFactory()
        self.bank = RelayBank(cfg.lamps, self.factory)
        self.factory.pin(TILT_2).drive_low()  # Room 2's stand upright
        self.log = UsageLog(cfg.service.database)
        self.log.start()
        self.accounts = Accounts(cfg.service.database, audit=self.log.event)
        self.accounts.add_user("admin", "admin", "1234")
        self.accounts.add_user("ann", "practitioner", "2468")
        self.ctl = SessionController(cfg.lamps, self.bank, MonotonicClock(), self.log)
        self.bank.on_patient_stop(self.ctl.patient_stop)
        self.bank.on_tilt(self.ctl.tilted)
        self.ctl.start_scheduler()
        app = create_app(Services(controller=self.ctl, usage_log=self.log, config=cfg, accounts=self.accounts))
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def settle(self):
        """Every lamp off, released and upright, no latch: the next test starts from a clean panel."""
        self.factory.pin(BUTTON_1).drive_high()
        self.factory.pin(TILT_2).drive_low()
        self.ctl.stop_all("test")
        for lamp_id in self.ctl.latched():
            self.ctl.reset_fault(lamp_id, "admin")
        for i in (0, 1):
            self.ctl.sensed(i, Sensed())

    def close(self):
        self.server.shutdown()
        self.ctl.shutdown("test over")
        self.ctl.stop_scheduler()
        self.accounts.close()
        self.log.close()
        self.bank.close()


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    p = Panel(tmp_path_factory.mktemp("guards"))
    yield p
    p.close()


@pytest.mark.parametrize("viewport", SIZES, ids=size_name)
def test_browser_s24_the_patients_stop_is_an_alarm_and_a_held_button_disables_the_presets(browser, panel, viewport):
    from playwright.sync_api import expect

    panel.settle()
    context, page = new_page(browser, viewport)
    try:
        log_in(page, panel.url, "ann", "2468")
        room1 = page.get_by_role("region", name="Room 1")
        tap(page, room1.get_by_role("button", name="10 min"))
        expect(room1).to_have_attribute("data-state", "on")
        before = button_boxes(page)
        panel.factory.pin(BUTTON_1).drive_low()  # the patient presses, and holds it
        expect(room1).to_have_attribute("data-state", "off")
        expect(room1).to_have_attribute("data-mark", "alarm")  # not the green "session over"
        expect(page.locator("#messages")).to_contain_text("Room 1: stopped by the patient. Go to the couch.")
        expect(room1.locator(".lamp-guards")).to_have_text("Patient button pressed: release it to start")
        expect(room1.get_by_role("button", name="10 min")).to_be_disabled()
        page.evaluate("window.scrollTo(0, 0)")
        assert button_boxes(page) == before  # the mark and the guards line move no button
        assert overflowing(page) == []
        shot(page, "guards-patient-stop", full_page=False)
        panel.factory.pin(BUTTON_1).drive_high()  # released: no latch, the practitioner may start again
        expect(room1.get_by_role("button", name="10 min")).to_be_enabled()
        expect(room1.locator(".lamp-guards")).to_have_text("")
        tap(page, room1.get_by_role("button", name="OK"))
        expect(room1).not_to_have_attribute("data-mark", "alarm")
        assert page.console_errors == []
    finally:
        context.close()
        panel.settle()


@pytest.mark.parametrize("viewport", SIZES, ids=size_name)
def test_browser_s25_s23_a_tilted_stand_latches_and_readings_show_on_the_card(browser, panel, viewport):
    from playwright.sync_api import expect

    panel.settle()
    context, page = new_page(browser, viewport)
    try:
        log_in(page, panel.url, "ann", "2468")
        room1 = page.get_by_role("region", name="Room 1")
        room2 = page.get_by_role("region", name="Room 2")
        assert room2.locator(".lamp-guards").count() == 1 and room1.locator(".lamp-guards").count() == 1
        tap(page, room2.get_by_role("button", name="20 min"))
        expect(room2).to_have_attribute("data-state", "on")
        panel.factory.pin(TILT_2).drive_high()  # the stand falls
        expect(room2).to_have_attribute("data-state", "fault")
        expect(room2).to_have_attribute("data-mark", "alarm")
        expect(room2.locator(".lamp-note")).to_have_text(
            re.compile(r"^The lamp stand tilted, so the lamp was switched")
        )
        expect(room2.locator(".lamp-guards")).to_have_text("Stand tilted")
        panel.ctl.sensed(0, Sensed(temp_c=41.4, amps=1.12))  # the firmware's readings of Room 1
        expect(room1.locator(".lamp-guards")).to_have_text("41 °C · 1.1 A")
        assert overflowing(page) == []
        shot(page, "guards-tilted-and-readings", full_page=False)
        assert page.console_errors == []
    finally:
        context.close()
        panel.settle()


def test_browser_an_alarm_outlives_a_reload_until_ok_is_tapped_on_that_tablet(browser, panel):
    from playwright.sync_api import expect

    from tests.browser_kit import PHONE

    panel.settle()
    context, page = new_page(browser, PHONE)
    try:
        log_in(page, panel.url, "ann", "2468")
        room1 = page.get_by_role("region", name="Room 1")
        tap(page, room1.get_by_role("button", name="10 min"))
        expect(room1).to_have_attribute("data-state", "on")
        panel.factory.pin(BUTTON_1).drive_low()
        panel.factory.pin(BUTTON_1).drive_high()
        expect(room1).to_have_attribute("data-mark", "alarm")
        page.reload()  # the tablet's page reloads (a lock, a swipe, a crash): the alarm is still unseen
        expect(room1).to_have_attribute("data-mark", "alarm")
        expect(room1.locator(".mark-text")).to_have_text("ALARM")
        tap(page, room1.get_by_role("button", name="OK"))
        expect(room1).not_to_have_attribute("data-mark", "alarm")
        page.reload()  # acknowledged here: not marked again
        expect(room1).to_have_attribute("data-state", "off")
        # Two states applied since the reload: a mark would be back by now.
        expect(page.locator("body")).to_have_attribute("data-states", re.compile(r"^([2-9]|[1-9][0-9]+)$"))
        expect(room1).not_to_have_attribute("data-mark", "alarm")
        # Another tablet that never saw it still marks it.
        other, page2 = new_page(browser, PHONE)
        try:
            log_in(page2, panel.url, "ann", "2468")
            expect(page2.get_by_role("region", name="Room 1")).to_have_attribute("data-mark", "alarm")
        finally:
            other.close()
        assert page.console_errors == []
    finally:
        context.close()
        panel.settle()
