"""Instructions per request, counted by valgrind's callgrind in the serving process (`python -m bench --instructions`).

Each server runs under `valgrind --tool=callgrind --instr-atstart=no`; after a warm-up the
counters are zeroed (`callgrind_control -z`), one keep-alive client sends the requests one
after another, and the dump (`callgrind_control -d`) gives the process's instructions. The
process's threads that wake by themselves (the deadline scheduler, the firmware link, the
accounts' reload) are counted too: the same process sits idle for a while beside each window,
and its instructions per second, times the window's length, are taken off ("net").
Counts do not move with the machine's load, unlike times; they are x86-64 instructions.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.client import Browser
from lampctl.testing import ServiceProcess, add_users, free_port, service_config, wait_until

ROOT = Path(__file__).resolve().parent.parent
# A Raspberry Pi Zero 2 W: four Cortex-A53 at 1 GHz; CPython on an in-order A53 retires about
# 0.5-1 instruction a cycle. ARM64 and x86-64 run CPython in roughly as many instructions.
PI_HZ = 1.0e9
PI_IPC = (0.5, 1.0)
IDLE_S = 2.0


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def _valgrind(out_dir: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/callgrind.out.%p",
    ]


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def _dumped(out_dir: Path, pid: int, seen: set[Path]) -> int:
    """The instructions of the newest dump of `pid` (callgrind.out.PID.N) not read before."""
    new = sorted(set(out_dir.glob(f"callgrind.out.{pid}.*")) - seen, key=lambda p: int(p.suffix[1:]))
    if not new:
        raise RuntimeError("callgrind wrote no dump")
    seen.update(new)
    text = new[-1].read_text(errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    return int(found.group(1)) if found else 0


class Counter:
    """One process under callgrind: window(fn, n) -> (gross, net) instructions per call of fn."""

    def __init__(self, pid: int, out_dir: Path):
        self.pid, self.out_dir, self._seen = pid, out_dir, set()
        _control(pid, "-i", "on")
        self.idle_per_s = self._idle()

    def _measure(self, body: Callable[[], None]) -> tuple[int, float]:
        _control(self.pid, "-z")
        t0 = time.monotonic()
        body()
        took = time.monotonic() - t0
        _control(self.pid, "-d")
        return _dumped(self.out_dir, self.pid, self._seen), took

    def _idle(self) -> float:
        ir, took = self._measure(lambda: time.sleep(IDLE_S))
        return ir / took

    def window(self, fn: Callable[[], None], n: int, before: Callable[[], None] | None = None) -> tuple[float, float]:
        """(gross, net) instructions per fn(); with `before`, each fn() is counted alone, after it."""
        if before is None:
            fn()  # outside the count: a connection the server closed while idle is opened again here
            ir, took = self._measure(lambda: [fn() for _ in range(n)])
        else:
            ir, took = 0, 0.0
            for _ in range(n):
                before()
                one, t = self._measure(fn)
                ir, took = ir + one, took + t
        return ir / n, max(0.0, ir - self.idle_per_s * took) / n


class KeepAlive:
    """One keep-alive HTTP connection; get/post assert a 2xx and read the whole body."""

    def __init__(self, port: int, headers: dict):
        self.port, self.headers = port, headers
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def _do(self, method: str, path: str, body: bytes | None = None) -> None:
        try:
            self.conn.request(method, path, body=body, headers=self.headers)
            resp = self.conn.getresponse()
        except (OSError, http.client.HTTPException):
            # Closed by the server while it sat idle (30 s, long under valgrind): once more, on a new one.
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            self.conn.request(method, path, body=body, headers=self.headers)
            resp = self.conn.getresponse()
        resp.read()
        assert 200 <= resp.status < 300, f"{method} {path}: {resp.status}"

    def get(self, path: str) -> Callable[[], None]:
        return lambda: self._do("GET", path)

    def post(self, path: str, body: bytes = b"") -> Callable[[], None]:
        return lambda: self._do("POST", path, body)


def _minimal(n: int, out_dir: Path) -> tuple[float, float]:
    port = free_port()
    proc = subprocess.Popen(
        [*_valgrind(out_dir), sys.executable, "-m", "bench.minimal_app", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "serving"
        client = KeepAlive(port, {})
        wait_until(lambda: _ok(client.get("/api/lamps")), 120, "the minimal app under callgrind")
        counter = Counter(proc.pid, out_dir)
        for _ in range(20):
            client.get("/api/lamps")()
        return counter.window(client.get("/api/lamps"), n)
    finally:
        proc.terminate()
        proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()


def _ok(fn: Callable[[], None]) -> bool:
    try:
        fn()
        return True
    except (OSError, http.client.HTTPException, AssertionError):
        return False


def _service(n: int, stops: int, out_dir: Path, tmp: Path, lamps_toml: str) -> dict[str, tuple[float, float]]:
    config = service_config(tmp, lamps_toml)
    tokens = add_users(config)
    svc = ServiceProcess(config, root=ROOT, program=[*_valgrind(out_dir), sys.executable, "-m", "bench.valgrind_shim"])
    svc.start(timeout=600)
    try:
        assert svc.proc is not None and svc.port is not None
        api = KeepAlive(svc.port, {"Authorization": f"Bearer {tokens['ann']}", "Content-Type": "application/json"})
        cookie = Browser(svc.url, "ann", "2468").cookie_header()
        panel = KeepAlive(svc.port, {"Cookie": cookie, "Accept": "application/json"})
        counter = Counter(svc.proc.pid, out_dir)
        for _ in range(20):
            api.get("/api/lamps")()
            panel.get("/panel/state.json")()
        start = api.post("/api/lamps/room1/start", b'{"minutes": 10, "new_patient": true}')
        return {
            "api": counter.window(api.get("/api/lamps"), n),
            "panel": counter.window(panel.get("/panel/state.json"), n),
            "stop": counter.window(api.post("/api/lamps/room1/stop"), stops, before=start),
        }
    finally:
        svc.stop(timeout=120)


def run(quick: bool, lamps_toml: str) -> list[dict]:
    if not available():
        return [dict(figure="instructions per request", value="valgrind not found", baseline="", goal="", json={})]
    n, stops = (30, 3) if quick else (200, 10)
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as tmp:
        base_gross, base_net = _minimal(n, Path(out))
        got = _service(n, stops, Path(out), Path(tmp), lamps_toml)
    rows = []
    for key, label in (
        ("api", f"GET /api/lamps, {n} on one connection"),
        ("panel", f"GET /panel/state.json (the panel's poll), {n}"),
        ("stop", f"POST /api/lamps/room1/stop of a running lamp, {stops}"),
    ):
        gross, net = got[key]
        slow, fast = (net / (PI_HZ * ipc) * 1000 for ipc in PI_IPC)
        rows.append(
            dict(
                figure=f"instructions per request, {label}",
                value=f"{net / 1e6:.2f} M net ({gross / 1e6:.2f} M gross), {net / base_net:.2f}x; "
                f"Pi Zero 2 W {fast:.1f}-{slow:.1f} ms of a core",
                baseline=f"minimal app GET /api/lamps {base_net / 1e6:.2f} M net ({base_gross / 1e6:.2f} M)",
                goal="<= 1.2x" if key == "api" else "",
                json={f"instr_{key}_m": [net / 1e6, base_net / 1e6]},
            )
        )
    return rows
