"""S6/S7 end to end: a real `lampctl serve` and a real simulator process, each stopped or killed mid-session."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.procs import TWO_LAMPS, ServiceProcess, Simulator, add_users, free_port, service_config, wait_until

pytestmark = pytest.mark.integration
WATCHDOG_S = 1.0


FIRMWARE = f"""
[safety]
heartbeat_s = 0.2

[firmware]
port = "socket://127.0.0.1:{{port}}"
watchdog_s = {WATCHDOG_S}
grace_s = 0.1
reply_timeout_s = 0.5
"""


@pytest.fixture
def rig(tmp_path):
    sim = Simulator(watchdog_s=WATCHDOG_S)
    config = service_config(tmp_path, TWO_LAMPS, extra=FIRMWARE.replace("{port}", str(sim.port)))
    tokens = add_users(config)
    svc = ServiceProcess(config, simulate=False).start()
    yield sim, svc, tokens
    if svc.proc.poll() is None:
        svc.proc.send_signal(signal.SIGCONT)
    svc.stop()
    sim.stop()


def test_s7_health_reports_firmware_and_start_arms_it(rig):
    sim, svc, tokens = rig
    assert svc.get("/api/health")[1]["firmware"] == "ok"
    status, body = svc.post("/api/lamps/room1/start", {"seconds": 1.0}, tokens["ann"])
    assert status == 201, body
    armed = sim.wait_line(2, lamp=0, why="armed")
    # Stop after the Pi's cutoff: the Pi sends OFF, long before the 1.2 s backstop.
    off = sim.wait_line(3, after=armed, lamp=0, on=False, why="off")
    assert 0.95 <= off["t"] - armed["t"] <= 1.15


@pytest.mark.parametrize("how", ["SIGSTOP", "SIGKILL"])
def test_s7_silent_service_firmware_cuts_lamp_within_watchdog(rig, how):
    sim, svc, tokens = rig
    assert svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])[0] == 201
    armed = sim.wait_line(2, lamp=0, why="armed")
    time.sleep(0.5)  # heartbeats flowing
    silenced = time.monotonic()
    svc.proc.send_signal(getattr(signal, how))
    cut = sim.wait_line(WATCHDOG_S + 2, after=armed, lamp=0, on=False)
    assert cut["why"] == "watchdog"
    # The last heartbeat came before the signal, so the cut is due by silenced + watchdog_s.
    assert cut["t"] - silenced <= WATCHDOG_S + 0.1, cut["t"] - silenced


def test_s6_simulator_killed_relay_off_and_fault_latched_within_1s(rig):
    sim, svc, tokens = rig
    assert svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])[0] == 201
    sim.wait_line(2, lamp=0, why="armed")
    sim.proc.kill()
    killed = time.monotonic()
    wait_until(lambda: svc.get("/api/lamps/room1", tokens["ann"])[1]["state"] == "fault", 1.0)
    took = time.monotonic() - killed
    lamp = svc.get("/api/lamps/room1", tokens["ann"])[1]
    assert lamp["relay_on"] is False and "firmware link lost" in lamp["fault_reason"]
    assert took < 1.0
    assert svc.get("/api/health")[1]["firmware"] == "lost"
    # room2 was off: not latched, but it cannot start without its second channel.
    status, body = svc.post("/api/lamps/room2/start", {"minutes": 10}, tokens["ann"])
    assert status == 503 and body["code"] == "firmware-unavailable"
    assert svc.post("/api/lamps/room1/reset", token=tokens["admin"])[1]["code"] == "fault-persists"
    wait_until(
        lambda: [s["end_reason"] for s in svc.get("/api/sessions", token=tokens["admin"])[1]["sessions"]] == ["fault"],
        3,
    )


def test_s7_start_refused_while_firmware_absent_keeps_relay_off(tmp_path):
    config = service_config(tmp_path, TWO_LAMPS, extra=FIRMWARE.replace("{port}", str(free_port())))
    tokens = add_users(config)
    svc = ServiceProcess(config, simulate=False).start(timeout=30)
    try:
        assert svc.get("/api/health")[1]["firmware"] == "lost"
        status, body = svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])
        assert status == 503 and "not started" in body["error"]
        assert svc.get("/api/lamps/room1", tokens["ann"])[1]["relay_on"] is False
    finally:
        svc.stop()


def test_s7_serve_simulate_starts_its_own_simulator(tmp_path):
    config = service_config(tmp_path, TWO_LAMPS, extra=FIRMWARE.replace("{port}", "1"))
    tokens = add_users(config)
    svc = ServiceProcess(config, simulate=True).start()
    try:
        assert svc.get("/api/health")[1]["firmware"] == "ok"
        assert svc.post("/api/lamps/room1/start", {"seconds": 0.5}, tokens["ann"])[0] == 201
        log = tmp_path / "var" / "simulator.log"
        wait_until(lambda: '"why": "off"' in log.read_text(), 3)
        whys = [json.loads(line)["why"] for line in log.read_text().splitlines()]
        assert whys == ["boot", "boot", "armed", "off"]
    finally:
        assert svc.stop() == 0
