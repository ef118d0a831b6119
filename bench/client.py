"""HTTP clients for the benchmarks: an admin's browser session, keep-alive pollers, a request-rate load."""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

BENCH_ROOT = Path(__file__).resolve().parent.parent


class Browser:
    """A logged-in browser: cookie session from the PIN login form."""

    def __init__(self, base: str, name: str, pin: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        page = self.opener.open(base + "/login", timeout=30).read().decode()
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"name": name, "pin": pin, "csrf_token": token}).encode()
        self.opener.open(base + "/login", data=form, timeout=30).read()

    def cookie_header(self) -> str:
        """The login's cookies as a Cookie header, for a client of its own (a keep-alive poller)."""
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)

    def timed_get(self, path: str) -> tuple[float, int]:
        """(milliseconds to the last byte, bytes), reading the body in 64 KiB pieces."""
        t0 = time.perf_counter()
        with self.opener.open(self.base + path, timeout=600) as resp:
            assert resp.status == 200, f"{path}: {resp.status}"
            size = 0
            while piece := resp.read(65536):
                size += len(piece)
        return (time.perf_counter() - t0) * 1000, size


class Load:
    """`clients` keep-alive connections each polling GET path as fast as answers come (a panel's poll, flooded)."""

    def __init__(self, port: int, path: str, token: str | None, clients: int):
        self.port, self.path, self.clients = port, path, clients
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.latencies: list[float] = []
        self.errors = 0
        self._go = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, daemon=True) for _ in range(clients)]

    def _poll(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        mine = []
        self._go.wait()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("GET", self.path, headers=self.headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                ok = False
            if ok:
                mine.append((time.perf_counter() - t0) * 1000)
            else:
                self.errors += 1
        conn.close()
        self.latencies.extend(mine)

    def __enter__(self):
        for t in self._threads:
            t.start()
        self._go.set()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.elapsed = time.perf_counter() - self.started
        for t in self._threads:
            t.join(35)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


class LoadProcess:
    """Load run by `python -m bench.loadgen` for `seconds`; result() waits for its figures."""

    def __init__(self, port: int, path: str, token: str | None, clients: int, seconds: float):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", str(port), path, token or "-", str(clients), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=BENCH_ROOT,
        )
        self._result: dict | None = None

    def __enter__(self):
        assert self.proc.stdout.readline().strip() == "ready", "the load generator did not start"
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            self.proc.kill()
        else:
            self.result()
        self.proc.wait(120)
        self.proc.stdout.close()

    def result(self) -> dict:
        """The load's figures, once it has run its time."""
        if self._result is None:
            self._result = json.loads(self.proc.stdout.readline())
            self.proc.wait(120)
        return self._result


def timed_post(port: int, path: str, token: str, body: bytes = b"") -> float:
    """POST on a new connection; milliseconds to the answer (any 2xx)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        t0 = time.perf_counter()
        conn.request(
            "POST", path, body=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        resp.read()
        took = (time.perf_counter() - t0) * 1000
        assert 200 <= resp.status < 300, f"POST {path}: {resp.status}"
        return took
    finally:
        conn.close()
