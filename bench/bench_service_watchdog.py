"""Watchdog reaction end to end: SIGSTOP a real `lampctl serve` mid-session and time the simulator's cut.

Prints figures; asserts nothing about timing. Each trial: start a session, let heartbeats
flow, SIGSTOP the service, read the simulator's "watchdog" line, SIGCONT, wait for the
service to latch the fault and the link to come back, reset, repeat.
Run: .venv/bin/python bench/bench_service_watchdog.py [--trials 20]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lampctl.testing import TWO_LAMPS, ServiceProcess, Simulator, add_users, service_config, wait_until  # noqa: E402

WATCHDOG_S = 1.0
HEARTBEAT_S = 0.2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    sim = Simulator(watchdog_s=WATCHDOG_S)
    with tempfile.TemporaryDirectory() as tmp:
        config = service_config(
            Path(tmp),
            TWO_LAMPS,
            extra=f"""
            [safety]
            heartbeat_s = {HEARTBEAT_S}
            [firmware]
            port = "socket://127.0.0.1:{sim.port}"
            watchdog_s = {WATCHDOG_S}
            """,
        )
        tokens = add_users(config)
        svc = ServiceProcess(config, simulate=False).start()
        after_stop = []
        try:
            for _ in range(args.trials):
                wait_until(lambda: svc.get("/api/health")[1]["firmware"] == "ok", 10)
                mark = sim.lines[-1]
                status, body = svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])
                assert status == 201, body
                armed = sim.wait_line(2, after=mark, lamp=0, why="armed")
                time.sleep(0.5)
                stopped = time.monotonic()
                svc.signal(signal.SIGSTOP)
                cut = sim.wait_line(WATCHDOG_S + 3, after=armed, lamp=0, on=False)
                assert cut["why"] == "watchdog", cut
                svc.signal(signal.SIGCONT)
                after_stop.append((cut["t"] - stopped) * 1000)
                wait_until(lambda: svc.get("/api/lamps/room1", tokens["ann"])[1]["state"] == "fault", 5)
                wait_until(lambda: svc.post("/api/lamps/room1/reset", token=tokens["admin"])[0] == 200, 10)
        finally:
            svc.stop()
            sim.stop()
    print(
        f"watchdog_s = {WATCHDOG_S} s, heartbeat_s = {HEARTBEAT_S} s, {args.trials} trials, real lampctl serve "
        f"SIGSTOPped mid-session"
    )
    print(
        f"lamp cut by the firmware after SIGSTOP: median {statistics.median(after_stop):.0f} ms, "
        f"max {max(after_stop):.0f} ms, min {min(after_stop):.0f} ms "
        f"(bound: watchdog_s + 100 ms = {WATCHDOG_S * 1000 + 100:.0f} ms; under watchdog_s because "
        f"the last heartbeat came before the stop)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
