"""GET /api/health: ok | degraded | fault with problem sentences, the log's state, answered from memory alone."""

from __future__ import annotations

import sqlite3
import threading
import time

from lampctl.storage.db import connect
from lampctl.storage.store import UsageLog
from tests.procs import wait_until
from web import Services, create_app


def health(client):
    resp = client.get("/api/health")
    assert resp.status_code == 200
    return resp.get_json()


def test_health_ok_has_the_contract_fields(client):
    body = health(client)
    assert body == {
        "status": "ok",
        "problems": [],
        "firmware": "absent",
        "lamps": [
            {"id": "room1", "state": "off", "relay_on": False},
            {"id": "room2", "state": "off", "relay_on": False},
        ],
        "clock": "synchronised",
        "log": {"pending": 0, "write_errors": 0, "dropped": 0},
    }


def test_health_fault_when_any_lamp_is_latched(client, controller):
    controller.fault("relay of Room 2 is stuck closed", "room2")
    body = health(client)
    assert body["status"] == "fault"
    assert "Room 2 is latched in fault (relay of Room 2 is stuck closed); an admin must reset it." in body["problems"]


def test_health_degraded_when_the_firmware_link_is_lost(cfg, controller, usage_log, accounts):
    app = create_app(
        Services(
            controller=controller, usage_log=usage_log, config=cfg, accounts=accounts, firmware_status=lambda: "lost"
        ),
        {"TESTING": True, "SECRET_KEY": "k"},
    )
    body = health(app.test_client())
    assert (body["status"], body["firmware"]) == ("degraded", "lost")
    assert body["problems"] == ["The link to the safety microcontroller is lost."]


def test_health_degraded_while_the_clock_is_not_synchronised(cfg, controller, usage_log, accounts):
    # A Pi has no battery clock: until NTP has set it, log times may be wrong (sessions are not).
    state = {"synced": False}
    app = create_app(
        Services(
            controller=controller,
            usage_log=usage_log,
            config=cfg,
            accounts=accounts,
            clock_synchronised=lambda: state["synced"],
        ),
        {"TESTING": True, "SECRET_KEY": "k"},
    )
    body = health(app.test_client())
    assert (body["status"], body["clock"]) == ("degraded", "unsynchronised")
    assert len(body["problems"]) == 1 and body["problems"][0].startswith("The system clock is not synchronised")
    state["synced"] = True
    assert health(app.test_client())["status"] == "ok"


def test_health_clock_probe_is_asked_at_most_once_per_period():
    from lampctl.platform.clocksync import ClockProbe

    answers, now = [False, True], [0.0]
    probe = ClockProbe(every_s=30, probe=lambda: answers.pop(0), monotonic=lambda: now[0])
    assert probe() is False and probe() is False  # cached: one probe
    now[0] = 30.0
    assert probe() is True and answers == []


def test_health_degraded_while_the_log_cannot_write(cfg, controller, accounts, tmp_path):
    def broken(path):
        raise sqlite3.OperationalError("database or disk is full")

    usage_log = UsageLog(tmp_path / "other.db")
    usage_log._connect = broken
    usage_log.start()
    client = create_app(
        Services(controller=controller, usage_log=usage_log, config=cfg, accounts=accounts),
        {"TESTING": True, "SECRET_KEY": "k"},
    ).test_client()
    try:
        usage_log.event(None, None, None, "system", "waits for the disk")
        wait_until(lambda: usage_log.write_errors, 10, "a write error")
        body = health(client)
        assert body["status"] == "degraded" and body["log"]["pending"] == 1 and body["log"]["write_errors"] >= 1
        assert body["problems"] == ["The usage log cannot write to disk (database or disk is full); 1 record waiting."]
        usage_log._connect = connect
        assert usage_log.flush(10)
        assert health(client)["status"] == "ok"
    finally:
        usage_log.close()


def test_s10_health_answers_from_memory_while_the_disk_hangs(cfg, controller, accounts, tmp_path):
    hung, thaw = threading.Event(), threading.Event()

    def hung_connect(path):  # a frozen filesystem blocks the caller until it thaws
        hung.set()
        thaw.wait(60)
        return connect(path)

    usage_log = UsageLog(tmp_path / "other.db")
    usage_log._connect = hung_connect
    usage_log.start()
    accounts._connect = hung_connect
    reloader = threading.Thread(target=accounts.reload, daemon=True)
    reloader.start()
    client = create_app(
        Services(controller=controller, usage_log=usage_log, config=cfg, accounts=accounts),
        {"TESTING": True, "SECRET_KEY": "k"},
    ).test_client()
    try:
        usage_log.event(None, None, None, "system", "stuck behind a hung disk")
        assert hung.wait(10)
        started = time.monotonic()
        body = health(client)
        assert time.monotonic() - started < 2.0
        assert body["log"]["pending"] == 1 and reloader.is_alive()
    finally:
        thaw.set()
        reloader.join(10)
        usage_log.close()


def test_health_degraded_while_account_changes_cannot_be_read(client, accounts, users):
    def broken(path):
        raise sqlite3.OperationalError("unable to open database file")

    accounts._connect = broken
    accounts.poll_once()
    body = health(client)
    assert body["status"] == "degraded"
    assert body["problems"] == [
        "Account changes cannot be read from the database (unable to open database file); "
        "logins and tokens are checked against the accounts last read."
    ]
    assert client.get("/api/lamps", headers={"Authorization": f"Bearer {users['ann']}"}).status_code == 200
    accounts._connect = connect
    accounts.poll_once()
    assert health(client)["status"] == "ok"


def test_health_reports_the_mqtt_link_and_degrades_on_its_problems(cfg, controller, usage_log, accounts):
    link = {"connected": True, "backlog": 0, "oldest_unsent_s": None, "problems": []}
    app = create_app(
        Services(
            controller=controller, usage_log=usage_log, config=cfg, accounts=accounts, mqtt_health=lambda: dict(link)
        ),
        {"TESTING": True, "SECRET_KEY": "k"},
    )
    body = health(app.test_client())
    assert (body["status"], body["mqtt"]) == ("ok", {"connected": True, "backlog": 0, "oldest_unsent_s": None})
    link.update(connected=False, backlog=12, oldest_unsent_s=301.5, problems=["12 record(s) have waited."])
    body = health(app.test_client())
    assert (body["status"], body["problems"]) == ("degraded", ["12 record(s) have waited."])
    assert body["mqtt"] == {"connected": False, "backlog": 12, "oldest_unsent_s": 301.5}
