"""What must outlive a restart, on real processes: a real `lampctl serve` killed -9 or stopped, restarted, restored (S17, S20)."""

from __future__ import annotations

import sqlite3

import pytest

from tests.procs import ServiceProcess, add_users, lampctl, service_config, wait_until

pytestmark = pytest.mark.integration

# room1: a one-minute limit, so a patient's budget shows in seconds; room2: a two-minute cooldown.
LAMPS = """
[[lamps]]
id = "room1"
name = "Room 1"
relay_pin = 17
max_minutes = 1
default_minutes = 0.5
presets = [0.5, 1]

[[lamps]]
id = "room2"
name = "Room 2"
relay_pin = 18
max_minutes = 30
presets = [10, 20]
cooldown_s = 120
"""


def lamp(svc, token, lamp_id):
    status, body = svc.get(f"/api/lamps/{lamp_id}", token)
    assert status == 200, body
    return body


def recorded(svc, token, session_id):
    """The session's record once it is ended on disk (the relay goes off before the record is written)."""
    rows = svc.get("/api/sessions", token=token)[1]["sessions"]
    return next((s for s in rows if s["id"] == session_id and s["ended_at"]), None)


def test_s17_restarted_service_keeps_a_latch_after_kill9_and_after_a_stop(tmp_path):
    config = service_config(tmp_path, LAMPS)
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    try:
        status, body = svc.post("/api/estop", {}, tokens["ann"])
        assert status == 200 and body["recorded"] is True, body
        svc.kill9()  # a power cut right after the reply: the latch is on disk
    finally:
        svc.stop()
    for _ in range(2):  # then a clean stop and start
        svc = ServiceProcess(config).start()
        try:
            for lamp_id in ("room1", "room2"):
                view = lamp(svc, tokens["ann"], lamp_id)
                assert view["state"] == "fault" and view["relay_on"] is False
                assert "emergency stop" in view["fault_reason"]
            status, body = svc.post("/api/lamps/room1/start", {"seconds": 10}, tokens["ann"])
            assert status == 409 and body["code"] == "fault"
            assert lamp(svc, tokens["ann"], "room1")["relay_on"] is False
        finally:
            assert svc.stop() == 0


def test_s20_killed_service_keeps_the_cooldown(tmp_path):
    config = service_config(tmp_path, LAMPS)
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    try:
        status, body = svc.post("/api/lamps/room2/start", {"seconds": 1}, tokens["ann"])
        assert status == 201, body
        wait_until(lambda: recorded(svc, tokens["admin"], body["session_id"]), 10, "the session's record")
        assert lamp(svc, tokens["ann"], "room2")["state"] == "cooldown"
        status, refused = svc.post("/api/lamps/room2/start", {"seconds": 10}, tokens["ann"])
        assert status == 409 and refused["code"] == "cooldown"
        svc.kill9()
    finally:
        svc.stop()
    svc = ServiceProcess(config).start()
    try:
        view = lamp(svc, tokens["ann"], "room2")
        assert view["state"] == "cooldown" and 60 < view["cooldown_remaining_s"] < 120
        status, refused = svc.post("/api/lamps/room2/start", {"seconds": 10}, tokens["ann"])
        assert status == 409 and refused["code"] == "cooldown", refused
        assert lamp(svc, tokens["ann"], "room2")["relay_on"] is False
    finally:
        assert svc.stop() == 0


def test_s20_stopped_service_keeps_the_patients_budget(tmp_path):
    config = service_config(tmp_path, LAMPS)
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    try:
        status, body = svc.post("/api/lamps/room1/start", {"seconds": 50}, tokens["ann"])
        assert status == 201, body
        first = body["session_id"]
        wait_until(lambda: lamp(svc, tokens["ann"], "room1")["remaining_s"] < 48.5, 10, "two seconds of heat")
        assert svc.post("/api/lamps/room1/stop", {}, tokens["ann"])[0] == 200
        used = wait_until(lambda: recorded(svc, tokens["admin"], first), 10, "the session's record")["actual_s"]
    finally:
        assert svc.stop() == 0
    svc = ServiceProcess(config).start()
    try:
        left = lamp(svc, tokens["ann"], "room1")["continue_left_s"]
        assert left is not None and abs(left - (60 - used)) < 0.01
        status, refused = svc.post("/api/lamps/room1/start", {"seconds": 59}, tokens["ann"])
        assert status == 409 and refused["code"] == "over-limit", refused
        status, body = svc.post("/api/lamps/room1/start", {"seconds": 20}, tokens["ann"])
        assert status == 201 and body["lamp"]["continues"] == first, body
    finally:
        assert svc.stop() == 0


def test_s4_s20_killed_while_on_counts_what_it_ran_and_continues_the_budget(tmp_path):
    config = service_config(tmp_path, LAMPS)
    tokens = add_users(config)
    database = tmp_path / "var" / "lampctl.db"
    svc = ServiceProcess(config).start()
    try:
        status, body = svc.post("/api/lamps/room1/start", {"seconds": 55}, tokens["ann"])
        assert status == 201, body
        sid = body["session_id"]

        def marked():
            conn = sqlite3.connect(database)
            try:
                row = conn.execute("SELECT progress_s FROM session_clocks WHERE session_id = ?", (sid,)).fetchone()
            finally:
                conn.close()
            return row and row[0] is not None and row[0] >= 2 and row[0]

        wait_until(marked, 15, "a progress mark of two seconds")
        svc.kill9()
    finally:
        svc.stop()
    svc = ServiceProcess(config).start()
    try:
        row = recorded(svc, tokens["admin"], sid)
        assert row["end_reason"] == "interrupted" and 2 <= row["actual_s"] < 55
        view = lamp(svc, tokens["ann"], "room1")
        assert view["state"] == "off" and view["relay_on"] is False
        assert abs(view["continue_left_s"] - (60 - row["actual_s"])) < 0.01
        status, refused = svc.post("/api/lamps/room1/start", {"seconds": 59}, tokens["ann"])
        assert status == 409 and refused["code"] == "over-limit", refused
    finally:
        assert svc.stop() == 0


def test_s17_s20_restore_keeps_a_latch_made_after_the_backup(tmp_path):
    config = service_config(tmp_path, LAMPS)
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    try:
        lampctl("backup", str(tmp_path / "backups"), config=config)  # while serving, before the latch
        status, body = svc.post("/api/estop", {}, tokens["ann"])
        assert status == 200 and body["recorded"] is True, body
    finally:
        assert svc.stop() == 0
    backup = next((tmp_path / "backups").glob("lampctl-*.db"))
    out = lampctl("restore", str(backup), config=config).stdout
    assert "kept 2 latched fault(s)" in out
    svc = ServiceProcess(config).start()
    try:
        for lamp_id in ("room1", "room2"):
            assert lamp(svc, tokens["ann"], lamp_id)["state"] == "fault"
        status, body = svc.post("/api/lamps/room1/start", {"seconds": 10}, tokens["ann"])
        assert status == 409 and body["code"] == "fault"
    finally:
        assert svc.stop() == 0
