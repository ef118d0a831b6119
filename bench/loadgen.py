"""A polling load in a process of its own, so its threads do not slow the client that times a Stop.

Run: python -m bench.loadgen PORT PATH TOKEN|- CLIENTS SECONDS; prints "ready", then at the end
one JSON line {"rate", "p99_ms", "errors"}.
"""

from __future__ import annotations

import json
import sys
import time

from bench.client import Load
from bench.stats import pct


def main(argv: list[str]) -> int:
    port, path, token, clients, seconds = int(argv[0]), argv[1], argv[2], int(argv[3]), float(argv[4])
    with Load(port, path, None if token == "-" else token, clients) as load:
        print("ready", flush=True)
        time.sleep(seconds)
    print(json.dumps({"rate": load.rate, "p99_ms": pct(load.latencies, 99), "errors": load.errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
