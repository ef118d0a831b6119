"""Measures a real `lampctl serve`: cutoff overshoot, resident memory, and exec-to-relays-OFF time.

Prints figures; asserts nothing about timing. Run: .venv/bin/python bench/bench_service.py [--sessions N]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lampctl.testing import TWO_LAMPS, ServiceProcess, add_users, service_config  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sessions", type=int, default=10, help="real-time sessions to time (default 10)")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each session (default 1.0)")
    ap.add_argument("--starts", type=int, default=5, help="service starts to time (default 5)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = service_config(tmp, TWO_LAMPS)
        tokens = add_users(config)

        to_off = []
        for _ in range(args.starts):
            svc = ServiceProcess(config).start()
            off_at = float(re.findall(r"relays off: \d+ lamps at monotonic ([\d.]+)", svc.stderr())[-1])
            to_off.append((off_at - svc.spawned_at) * 1000)
            svc.stop()

        svc = ServiceProcess(config).start()
        try:
            idle_rss = rss_kib(svc.proc.pid)
            overshoot = []
            for _ in range(args.sessions):
                status, body = svc.post("/api/lamps/room1/start", {"seconds": args.seconds}, tokens["ann"])
                assert status == 201, body
                time.sleep(args.seconds + 0.3)
                _, sessions = svc.get("/api/sessions?lamp=room1", token=tokens["admin"])
                row = [s for s in sessions["sessions"] if s["id"] == body["session_id"]][0]
                assert row["end_reason"] == "completed", row
                overshoot.append((row["actual_s"] - args.seconds) * 1000)
            busy_rss = rss_kib(svc.proc.pid)
        finally:
            svc.stop()

    print(
        f"exec -> relays OFF over {args.starts} starts: median {statistics.median(to_off):.0f} ms, "
        f"max {max(to_off):.0f} ms (interpreter start + config + gpiozero import + pin claim)"
    )
    print(
        f"cutoff overshoot over {args.sessions} x {args.seconds:g} s sessions (actual_s - planned, "
        f"service's monotonic clock, ms resolution): median {statistics.median(overshoot):.1f} ms, "
        f"max {max(overshoot):.1f} ms"
    )
    print(f"service RSS: {idle_rss / 1024:.1f} MiB idle after start, {busy_rss / 1024:.1f} MiB after the sessions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
