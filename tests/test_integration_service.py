"""End to end: a real `lampctl serve` process over HTTP, killed -9 and restarted (S2, S4), one per database (S16), Stop through a flood (S10)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lampctl.platform.httpserver import CONNECTION_LIMIT
from lampctl.testing import close_all, idle_connections, timed_post
from tests.procs import (
    ROOT,
    TWO_LAMPS,
    ServiceProcess,
    add_users,
    service_config,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_s2_s4_session_completes_then_kill9_is_recorded_interrupted(tmp_path):
    config = service_config(tmp_path, TWO_LAMPS)
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    try:
        status, body = svc.post("/api/lamps/room1/start", {"seconds": 2}, tokens["ann"])
        assert status == 201, body
        first = body["session_id"]
        status, lamp = svc.get("/api/lamps/room1", tokens["ann"])
        assert lamp["state"] == "on" and lamp["relay_on"] is True
        wait_until(lambda: svc.get("/api/lamps/room1", tokens["ann"])[1]["state"] == "off", 5)
        _, lamp = svc.get("/api/lamps/room1", tokens["ann"])
        assert lamp["relay_on"] is False

        def ended():
            # The relay is off before the record is written (S9): wait for the record itself.
            rows = svc.get("/api/sessions", token=tokens["admin"])[1]["sessions"]
            return next((s for s in rows if s["id"] == first and s["ended_at"]), None)

        done = wait_until(ended, 10, "the completed session's record")
        assert done["end_reason"] == "completed"
        assert abs(done["actual_s"] - 2) <= 0.1

        status, body = svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])
        assert status == 201
        second = body["session_id"]
        svc.kill9()
    finally:
        svc.stop()

    svc = ServiceProcess(config).start()
    try:
        _, lamp = svc.get("/api/lamps/room1", tokens["ann"])
        assert lamp["state"] == "off" and lamp["relay_on"] is False
        _, sessions = svc.get("/api/sessions", token=tokens["admin"])
        row = [s for s in sessions["sessions"] if s["id"] == second][0]
        assert row["end_reason"] == "interrupted"
        assert row["ended_at"] is not None and 0 <= row["actual_s"] <= 600
    finally:
        svc.stop()


def test_s16_second_serve_exits_1_and_leaves_the_first_alone(tmp_path):
    config = service_config(tmp_path, TWO_LAMPS)
    tokens = add_users(config)
    token_file = tmp_path / "var" / "cli.token"
    first = ServiceProcess(config).start()
    try:
        status, body = first.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])
        assert status == 201, body
        token_before = token_file.read_text()
        db_files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "var").glob("lampctl.db*")}
        second = subprocess.run(
            [sys.executable, "-m", "lampctl", "serve", "--config", str(config), "--simulate"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        assert second.returncode == 1
        [line] = second.stderr.strip().splitlines()
        assert "another lampctl serve" in line and f"pid {first.proc.pid}" in line
        assert token_file.read_text() == token_before
        assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "var").glob("lampctl.db*")} == db_files
        _, lamp = first.get("/api/lamps/room1", tokens["ann"])
        assert lamp["state"] == "on" and lamp["relay_on"] is True
        _, rows = first.get("/api/sessions", token=tokens["admin"])
        assert [s["end_reason"] for s in rows["sessions"]] == [None]
        # The first one's CLI token still works.
        assert first.post("/api/stop-all", token=token_before.strip())[0] == 200
    finally:
        first.stop()


@pytest.mark.xfail(
    strict=True,
    reason="S16 gap: the lock is per database; a second service with another "
    "database claims the same relays (on mock pins, and on any factory but lgpio)",
)
def test_s16_gap_second_serve_with_another_database_on_the_same_relays_exits_1(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = ServiceProcess(service_config(tmp_path / "a", TWO_LAMPS)).start()
    second = ServiceProcess(service_config(tmp_path / "b", TWO_LAMPS))  # relay pins 17 and 18 again
    try:
        with pytest.raises(AssertionError, match="exited 1"):
            second.start()
        assert not (tmp_path / "b" / "var" / "lampctl.db").exists(), "refused before its records"
    finally:
        second.stop()
        first.stop()


def test_s10_stop_gets_through_a_flood_of_idle_connections(tmp_path):
    config = service_config(tmp_path, TWO_LAMPS)
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    flood = []
    try:
        assert svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])[0] == 201
        # More idle connections than the server will hold: waitress alone stopped accepting at 100.
        flood = idle_connections(svc.port, CONNECTION_LIMIT + 50)
        status, took = timed_post(svc.url + "/api/stop-all", tokens["ann"], timeout=30)
        assert status == 200, f"no answer to a Stop within {took:.1f} s"
        _, lamp = svc.get("/api/lamps/room1", tokens["ann"])
        assert lamp["relay_on"] is False and lamp["state"] == "off"
    finally:
        close_all(flood)
        svc.stop()
