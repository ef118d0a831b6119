"""S13 end to end: a real service frozen past the firmware's watchdog logs the session `firmware` at the cut, not `completed`."""

from __future__ import annotations

import signal
import time

import pytest

from tests.procs import TWO_LAMPS, ServiceProcess, Simulator, add_users, service_config, wait_until

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


def test_s13_frozen_service_logs_firmware_cut_not_completed(tmp_path):
    sim = Simulator(watchdog_s=WATCHDOG_S)
    config = service_config(tmp_path, TWO_LAMPS, extra=FIRMWARE.replace("{port}", str(sim.port)))
    tokens = add_users(config)
    svc = ServiceProcess(config, simulate=False).start()
    try:
        status, body = svc.post("/api/lamps/room1/start", {"seconds": 4}, tokens["ann"])
        assert status == 201, body
        armed = sim.wait_line(2, lamp=0, why="armed")
        svc.signal(signal.SIGSTOP)  # frozen: no heartbeat, no deadline
        cut = sim.wait_line(WATCHDOG_S + 3, after=armed, lamp=0, on=False)
        assert cut["why"] == "watchdog"
        wait_until(lambda: time.monotonic() > cut["t"] + 4, 10, "the planned end passing while frozen")
        svc.signal(signal.SIGCONT)

        def ended():
            rows = svc.get("/api/sessions", tokens["admin"])[1]["sessions"]
            return rows and rows[0]["ended_at"] and rows[0]

        row = wait_until(ended, 10, "the session's end to be recorded")
        ran = cut["t"] - armed["t"]  # what the firmware really let the lamp run
        assert row["end_reason"] == "firmware", row
        assert ran - 0.3 <= row["actual_s"] <= ran + 0.3, (row, ran)
    finally:
        if svc.proc.poll() is None:
            svc.signal(signal.SIGCONT)
        svc.stop()
        sim.stop()
