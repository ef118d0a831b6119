"""A service and a simulated microcontroller on real processes, with every call and fault written down for the oracle."""

from __future__ import annotations

import http.client
import json
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lampctl.testing import ROOT, ServiceProcess, Simulator, add_users, service_config, wait_until
from tests.faults.harness import read_trace

HARNESS = [sys.executable, str(ROOT / "tests" / "faults" / "harness.py")]
WATCHDOG_S = 1.0
# Two lamps of one minute at most: short enough that sessions end by themselves within a trial.
# room2 keeps a rest window, so its starts are continuations whose budget S18 must hold.
LAMPS = """
[[lamps]]
id = "room1"
name = "Room 1"
relay_pin = 17
max_minutes = 1
default_minutes = 0.05
presets = [0.05, 0.1, 1]
rest_window_s = 0

[[lamps]]
id = "room2"
name = "Room 2"
relay_pin = 18
max_minutes = 1
default_minutes = 0.05
presets = [0.05, 0.1, 1]
rest_window_s = 20
"""
LAMP_IDS = ("room1", "room2")
PIN_LAMP = {17: "room1", 18: "room2"}
STOPS = ("stop", "stop-all", "estop")


@dataclass
class Call:
    kind: str  # start, extend, stop, stop-all, estop, reset
    lamp: str | None
    t0: float
    t1: float | None = None
    status: int | None = None
    body: dict | None = None
    life: int = -1

    @property
    def recorded(self) -> bool:
        return bool(self.status in (200, 201) and self.body and self.body.get("recorded") is True)


@dataclass
class Life:
    """One run of the service: its relay trace, the highest session id on disk when it began, how it ended."""

    trace: Path
    base_id: int
    began: float
    ended: float | None = None
    killed: bool = False
    serving: float | None = None  # when it first answered with the firmware link up

    def relay_events(self):
        return read_trace(self.trace) if self.trace.exists() else []


@dataclass
class Fault:
    kind: str  # what was done, e.g. "kill -9", "SIGSTOP service", "disk full"
    t0: float
    t1: float | None = None
    target: str = "service"  # service, simulator or disk


@dataclass
class Figures:
    stops: int = 0
    worst_stop_answer_s: float = 0.0
    worst_relay_off_s: float = 0.0
    relay_off_samples: list = field(default_factory=list)


class Rig:
    """A service under test (through tests/faults/harness.py) beside an external simulator.

    The simulator is the test's own process, so it outlives a service killed with -9
    and its JSON lines tell what the microcontroller's outputs did meanwhile.
    """

    def __init__(self, tmp_path: Path, *, database: Path | None = None, watchdog_s: float = WATCHDOG_S):
        self.tmp = tmp_path
        self.watchdog_s = watchdog_s
        self.sim = Simulator(lamps=len(LAMP_IDS), watchdog_s=watchdog_s)
        extra = f"""
            [safety]
            heartbeat_s = 0.2

            [firmware]
            port = "socket://127.0.0.1:{self.sim.port}"
            watchdog_s = {watchdog_s}
            grace_s = 0.1
            reply_timeout_s = 1.0
            """
        self.config = service_config(tmp_path, LAMPS, extra=extra)
        if database is not None:
            text = self.config.read_text().replace('database = "var/lampctl.db"', f'database = "{database}"')
            self.config.write_text(text)
        self.database = database or tmp_path / "var" / "lampctl.db"
        self.wall_file = tmp_path / "wall-offset"
        self.wall_file.write_text("0")
        self.tokens = add_users(self.config)
        self.lives: list[Life] = []
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.figures = Figures()
        self.svc: ServiceProcess | None = None
        self._lock = threading.Lock()

    # ---- the service's lives -----------------------------------------------------------
    def start(self, timeout: float = 30) -> ServiceProcess:
        life = Life(self.tmp / f"trace-{len(self.lives)}.bin", self.max_session_id(), time.monotonic())
        env = {"FAULTS_PIN_TRACE": str(life.trace), "FAULTS_WALL_FILE": str(self.wall_file)}
        self.lives.append(life)
        self.svc = ServiceProcess(self.config, simulate=False, program=HARNESS, extra_env=env)
        self.svc.start(timeout)
        wait_until(lambda: self.health().get("firmware") == "ok", 20, "the firmware link")
        life.serving = time.monotonic()
        return self.svc

    def kill9(self) -> None:
        t = time.monotonic()
        self.svc.kill9()
        self.lives[-1].ended, self.lives[-1].killed = t, True
        self.faults.append(Fault("kill -9", t, t))

    def stop(self, sig=None, timeout: float = 20) -> int:
        """End the service (SIGTERM, or sig) and wait for its exit code."""
        t = time.monotonic()
        if sig is None:
            rc = self.svc.stop(timeout)
        else:
            self.svc.signal(sig)
            rc = self.svc.proc.wait(timeout)
            self.svc.stop()
        self.lives[-1].ended = time.monotonic()
        self.faults.append(Fault(f"stop ({sig or 'SIGTERM'})", t, self.lives[-1].ended))
        return rc

    def finish(self) -> None:
        """A last clean life: the next start closes what a crash left open, as a clinic's restart would."""
        if self.svc is not None and self.svc.proc.poll() is None:
            self.stop()
        self.start()
        self.stop()
        wait_until(lambda: all(not on for on in self.firmware_now().values()), 10, "every firmware output off")

    def close(self) -> None:
        if self.svc is not None:
            if self.svc.proc is not None and self.svc.proc.poll() is None:
                self.svc.proc.kill()
                self.svc.proc.wait(10)
            self.svc._close_logs()  # even after a failed start: an open log file fails the next test
        self.sim.stop()

    # ---- calls, each written down ------------------------------------------------------
    def request(
        self, method: str, path: str, body: dict | None = None, token: str | None = None, timeout: float = 10
    ) -> tuple[int | None, dict | None]:
        conn = http.client.HTTPConnection("127.0.0.1", self.svc.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, {"raw": raw[:200].decode(errors="replace")}
        except (OSError, http.client.HTTPException):
            return None, None
        finally:
            conn.close()

    def health(self) -> dict:
        status, body = self.request("GET", "/api/health", timeout=5)
        return body if status == 200 and body else {}

    def call(
        self,
        kind: str,
        lamp: str | None = None,
        *,
        seconds: float | None = None,
        user: str = "ann",
        new_patient: bool = False,
        timeout: float = 10,
    ) -> Call:
        path = {"stop-all": "/api/stop-all", "estop": "/api/estop"}.get(kind, f"/api/lamps/{lamp}/{kind}")
        body = None
        if kind in ("start", "extend"):
            body = {"seconds": seconds}
            if new_patient:
                body["new_patient"] = True
        record = Call(kind, lamp, time.monotonic(), life=len(self.lives) - 1)
        with self._lock:
            self.calls.append(record)
        record.status, record.body = self.request("POST", path, body, self.tokens[user], timeout)
        record.t1 = time.monotonic()
        return record

    # ---- what the oracle reads -----------------------------------------------------------
    def max_session_id(self) -> int:
        if not self.database.exists():
            return 0
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=30) as conn:
            try:
                return conn.execute("SELECT coalesce(max(id), 0) FROM sessions").fetchone()[0]
            except sqlite3.OperationalError:
                return 0

    def firmware_now(self) -> dict[int, bool]:
        state = {}
        for line in list(self.sim.lines):
            state[line["lamp"]] = line["on"]
        return state

    def rows(self, sql: str, params=()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def fault(self, kind: str, target: str = "service") -> Fault:
        fault = Fault(kind, time.monotonic(), target=target)
        self.faults.append(fault)
        return fault
