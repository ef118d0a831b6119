"""S23 end to end: a real `lampctl serve` and the simulated microcontroller flashed with the config's guards.

The lamp head heats past its limit while the service is frozen (SIGSTOP): the firmware cuts the lamp
by itself; the service, once it runs again, records `over-temperature` at the cut and latches the lamp.
"""

from __future__ import annotations

import signal

import pytest

from lampctl import config as config_mod
from lampctl.core import sensors
from tests.procs import ServiceProcess, Simulator, add_users, service_config, wait_until

pytestmark = pytest.mark.integration
WATCHDOG_S = 3.0
FIRMWARE = """
[safety]
heartbeat_s = 0.2

[firmware]
port = "socket://127.0.0.1:{port}"
watchdog_s = 3.0
grace_s = 0.1
reply_timeout_s = 0.5
"""
LAMPS = """
[[lamps]]
id = "room1"
name = "Room 1"
relay_pin = 17
max_minutes = 30
rest_window_s = 0
thermistor_adc = 0
max_temp_c = 60

[[lamps]]
id = "room2"
name = "Room 2"
relay_pin = 18
max_minutes = 30
rest_window_s = 0
current_adc = 1
max_amps = 2.5
min_amps = 0.5
"""


def _raw_at(temp_c: float) -> int:
    # The divider of the config's defaults (10 kohm NTC, B 3950, 10 kohm to 3V3), from its data sheet's
    # formula, not from the code under test.
    import math

    r = 10_000 * math.exp(3950 * (1 / (temp_c + 273.15) - 1 / 298.15))
    return round(65535 * r / (r + 10_000))


def test_s23_the_firmware_cuts_an_overheating_lamp_while_the_service_is_frozen(tmp_path):
    probe = service_config(tmp_path, LAMPS, extra=FIRMWARE.replace("{port}", "1"))
    table = sensors.guard_table(config_mod.load(probe).lamps)
    sim = Simulator(watchdog_s=WATCHDOG_S, guards=table)
    config = service_config(tmp_path, LAMPS, extra=FIRMWARE.replace("{port}", str(sim.port)))
    tokens = add_users(config)
    svc = ServiceProcess(config, simulate=False).start()
    try:
        sim.adc(0, _raw_at(35))
        sim.adc(1, round(65535 * 1.1 / 5))  # 1.1 A of a 5 A sensor
        view = wait_until(
            lambda: (
                (v := svc.get("/api/lamps/room1", tokens["ann"])[1])["temperature_c"] == pytest.approx(35, abs=1) and v
            ),
            10,
            "the sensor's reading on the lamp's view",
        )
        assert view["guard"] == "ok"
        wait_until(
            lambda: svc.get("/api/lamps/room2", tokens["ann"])[1]["current_a"] == pytest.approx(1.1, abs=0.05),
            10,
            "the current on the other lamp's view",
        )
        status, body = svc.post("/api/lamps/room1/start", {"seconds": 600}, tokens["ann"])
        assert status == 201, body
        armed = sim.wait_line(2, lamp=0, why="armed")
        svc.signal(signal.SIGSTOP)  # frozen: nothing the host does can cut the lamp now
        sim.adc(0, _raw_at(80))  # the lamp head heats past its 60 degC
        cut = sim.wait_line(2, after=armed, lamp=0, on=False)
        assert cut["why"] == "guard"
        svc.signal(signal.SIGCONT)

        def ended():
            rows = svc.get("/api/sessions", tokens["admin"])[1]["sessions"]
            return rows and rows[0]["ended_at"] and rows[0]

        row = wait_until(ended, 10, "the session's end to be recorded")
        assert row["end_reason"] == "over-temperature", row
        ran = cut["t"] - armed["t"]
        assert ran - 0.5 <= row["actual_s"] <= ran + 0.5, (row, ran)
        view = svc.get("/api/lamps/room1", tokens["ann"])[1]
        assert view["state"] == "fault"
        assert view["fault_reason"] == "over-temperature: Room 1 read 80 °C, above its limit of 60 °C"
        assert svc.get("/api/lamps/room2", tokens["ann"])[1]["state"] == "off"  # its own guard is fine
        # Refused by the firmware itself while hot, and the latch cannot be cleared until it cools.
        status, body = svc.post("/api/lamps/room1/reset", {}, tokens["admin"])
        assert status == 409, body
        assert "still tripped" in body["error"], body
        sim.adc(0, _raw_at(40))
        status, body = svc.post("/api/lamps/room1/reset", {}, tokens["admin"])
        assert status == 200, body
        status, body = svc.post("/api/lamps/room1/start", {"seconds": 60}, tokens["ann"])
        assert status == 201, body
    finally:
        if svc.proc.poll() is None:
            svc.signal(signal.SIGCONT)
        svc.stop()
        sim.stop()


def test_s23_a_bulb_that_draws_nothing_is_reported_blown_and_over_current_cuts(tmp_path):
    probe = service_config(tmp_path, LAMPS, extra=FIRMWARE.replace("{port}", "1"))
    table = sensors.guard_table(config_mod.load(probe).lamps)
    sim = Simulator(watchdog_s=WATCHDOG_S, guards=table)
    config = service_config(tmp_path, LAMPS, extra=FIRMWARE.replace("{port}", str(sim.port)))
    tokens = add_users(config)
    svc = ServiceProcess(config, simulate=False).start()
    try:
        sim.adc(0, _raw_at(30))
        sim.adc(1, 0)  # no current: the bulb has blown
        status, body = svc.post("/api/lamps/room2/start", {"seconds": 600}, tokens["ann"])
        assert status == 201, body
        view = wait_until(
            lambda: (v := svc.get("/api/lamps/room2", tokens["ann"])[1])["bulb_blown"] and v, 15, "a blown bulb"
        )
        assert view["state"] == "on"  # a cold lamp: nothing to cut
        sim.adc(1, round(65535 * 3.5 / 5))  # 3.5 A: a short, or the wrong bulb
        sim.wait_line(3, lamp=1, why="guard")
        view = wait_until(
            lambda: (v := svc.get("/api/lamps/room2", tokens["ann"])[1])["state"] == "fault" and v, 10, "the latch"
        )
        assert view["fault_reason"].startswith("over-current: Room 2 drew 3.50 A")
        row = svc.get("/api/sessions", tokens["admin"])[1]["sessions"][0]
        assert row["end_reason"] == "over-current"
    finally:
        svc.stop()
        sim.stop()
