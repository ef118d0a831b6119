"""Stop under load: time for a Stop all to be answered with 100 and 500 idle connections open, and with 50 keep-alive pollers.

Prints figures; asserts nothing about timing. `--root DIR` runs the service from another
checkout (e.g. `git archive <commit> | tar -x -C DIR`) to compare before and after.
Run: .venv/bin/python bench/bench_stop_flood.py [--root DIR] [--timeout 60]
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lampctl.testing import (
    TWO_LAMPS,
    ServiceProcess,
    add_users,
    close_all,
    idle_connections,
    service_config,
    timed_post,
)


def pollers(port: int, token: str, count: int, stop: threading.Event) -> list[threading.Thread]:
    """count clients each polling GET /api/lamps on one keep-alive connection, as panels do."""

    def poll():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            try:
                conn.request("GET", "/api/lamps", headers={"Authorization": f"Bearer {token}"})
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.close()

    threads = [threading.Thread(target=poll, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return threads


def trial(svc, tokens, timeout: float, idle: int = 0, polling: int = 0) -> str:
    """Start a session, load the service, time one Stop all; returns the figure as text."""
    status, body = svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])
    if status != 201:
        return f"(could not start a session: {status} {body})"
    flood, stop, threads = [], threading.Event(), []
    try:
        flood = idle_connections(svc.port, idle)
        threads = pollers(svc.port, tokens["ann"], polling, stop)
        answered, took = timed_post(svc.url + "/api/stop-all", tokens["ann"], timeout)
        if answered != 200:
            return f"no answer within {took:.1f} s (status {answered})"
        return f"answered in {took * 1000:.0f} ms"
    finally:
        stop.set()
        close_all(flood)
        for t in threads:
            t.join(35)
        # Let the service close the flood before the next trial (it may take its idle timeout).
        svc.post("/api/stop-all", token=tokens["ann"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout whose `lampctl serve` to measure")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on a Stop after this many seconds")
    ap.add_argument("--repeat", type=int, default=3, help="quiet-service Stops to time (default 3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = service_config(Path(tmp), TWO_LAMPS)
        tokens = add_users(config)
        results = {}
        for name, load in [
            ("quiet", {}),
            ("100 idle connections", {"idle": 100}),
            ("500 idle connections", {"idle": 500}),
            ("50 keep-alive pollers", {"polling": 50}),
        ]:
            # A fresh service per load, so one trial's leftovers cannot slow the next.
            svc = ServiceProcess(config, root=args.root).start(timeout=60)
            try:
                repeat = args.repeat if not load else 1
                results[name] = [trial(svc, tokens, args.timeout, **load) for _ in range(repeat)]
            finally:
                svc.stop(timeout=30)
    print(
        f"Stop all answered (POST /api/stop-all on a new connection; the reply follows the relay,\n"
        f"so this bounds Stop -> relay off from above), service from {args.root}:"
    )
    for name, figures in results.items():
        print(f"  {name:<24} {'; '.join(figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
