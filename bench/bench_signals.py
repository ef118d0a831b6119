"""Each terminating signal against a real `lampctl serve` with a lamp on: relays off how fast, exit how, record how (S15).

Prints figures; asserts nothing. `--root DIR` measures another checkout for a before/after.
Signal -> relays off is read from the service's own log line ("<SIG> received: relays
off"), written just after the relays are off, against the wall clock at the kill (ms).
Run: .venv/bin/python bench/bench_signals.py [--root DIR]
"""

from __future__ import annotations

import argparse
import re
import signal
import sqlite3
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lampctl.testing import TWO_LAMPS, ServiceProcess, add_users, service_config

SIGNALS = ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGABRT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGXCPU"]


def one(config: Path, tokens: dict, root: Path, name: str) -> str:
    svc = ServiceProcess(config, root=root).start(timeout=60)
    try:
        status, body = svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])
        if status != 201:
            return f"{name:<8} could not start a session: {status} {body}"
        sent = time.time()
        svc.signal(getattr(signal, name))
        rc = svc.proc.wait(30)
        exited = time.time() - sent
    finally:
        svc.stop()
    found = re.search(rf"^(\S+ \S+) WARNING lampctl: {name} received", svc.stderr(), re.MULTILINE)
    if found:
        at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        off = f"relays off <= {max(0.0, at - sent) * 1000 + 1:.0f} ms"  # the log has 1 ms resolution
    else:
        off = "no relays-off line in the log"
    with sqlite3.connect(config.parent / "var" / "lampctl.db") as conn:
        reason = conn.execute("SELECT end_reason FROM sessions ORDER BY id DESC LIMIT 1").fetchone()[0]
    how = f"exit {rc}" if rc >= 0 else f"killed by {signal.Signals(-rc).name}"
    return f"{name:<8} {off:<38} {how:<20} after {exited * 1000:5.0f} ms; session {reason or 'left open'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout whose `lampctl serve` to measure")
    args = ap.parse_args()
    lines = []
    for name in SIGNALS:
        with tempfile.TemporaryDirectory() as tmp:
            config = service_config(Path(tmp), TWO_LAMPS)
            tokens = add_users(config)
            lines.append(one(config, tokens, args.root, name))
    print(f"signal -> relays off, exit, session record; service from {args.root}:")
    for line in lines:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
