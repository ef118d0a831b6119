"""Behaviour no other test pinned down: each test here fails on a mutant that left the suite green (docs/mutation.md)."""
from __future__ import annotations

import sqlite3
import time
from contextlib import ExitStack

from lampctl import config as config_mod
from lampctl import service
from lampctl.db import connect
from lampctl.store import UsageLog
from tests.conftest import BASE_CONFIG, pin_history, write_config
from tests.procs import wait_until
from tests.test_web_panel import web  # noqa: F401  (fixture: a practitioner logged in to the panel)

BANK_INDICATOR = 5


def test_service_lights_the_bank_indicator_named_in_the_config(tmp_path):
    """safety.indicator_pin reaches the relay bank: lit while a relay is on, dark after."""
    text = BASE_CONFIG.replace("[safety]\n", f"[safety]\nindicator_pin = {BANK_INDICATOR}\n")
    svc = service.Service(str(write_config(tmp_path, text)), simulate=True)
    svc.cfg = config_mod.load(svc.config_path)
    with ExitStack() as stack:
        svc._open_relays(stack, time.monotonic())
        factory = svc.relays._factory
        svc.relays.set(0, True)
        svc.relays.all_off()
        assert pin_history(factory, BANK_INDICATOR) == [False, True, False]


def _broken_disk(path):
    raise sqlite3.OperationalError("database or disk is full")


def test_panel_log_banner_while_the_usage_log_cannot_write(web, services, tmp_path):  # noqa: F811
    failing = UsageLog(tmp_path / "failing.db")
    failing._connect = _broken_disk
    failing.start()
    services.usage_log = failing
    try:
        failing.event(None, None, None, "system", "waits for the disk")
        wait_until(lambda: failing.write_errors, 10, "a write error")
        html = web.get("/panel/").data.decode()
        assert ('class="banner banner-log" role="alert">The usage log cannot be written to disk (1 records waiting); '
                "lamps still work. Tell an admin.") in html
        assert [b["kind"] for b in web.get("/panel/state.json").get_json()["banners"]] == ["log"]
        failing._connect = connect
        assert failing.flush(10)
        assert web.get("/panel/state.json").get_json()["banners"] == []
        assert "banner-log" not in web.get("/panel/").data.decode()
    finally:
        failing.close()
