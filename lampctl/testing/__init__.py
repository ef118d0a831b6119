"""Real `lampctl serve` and simulator processes on loopback ports, for integration tests and benchmarks.

In the spirit of flask.testing and gpiozero.pins.mock: helpers that tests and bench/
both use, shipped with the package so neither depends on the other.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate, timeout: float, what: str = "condition", step: float = 0.02):
    """Poll predicate() until it is true (returning its value), or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(step)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lampctl(*args: str, config: Path, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run one CLI command as its own process."""
    proc = subprocess.run(
        [sys.executable, "-m", "lampctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lampctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


class ServiceProcess:
    """A `lampctl serve` child; stdout/stderr go to files in the test's tmp dir."""

    def __init__(
        self,
        config: Path,
        *,
        simulate: bool = True,
        extra_env: dict | None = None,
        program: list[str] | None = None,
        root: Path = ROOT,
    ):
        self.config = config
        self.root = Path(root)
        self.program = program or [sys.executable, "-m", "lampctl"]
        self.simulate = simulate
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.spawned_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> ServiceProcess:
        text = self.config.read_text()
        self.port = int(text.split('bind = "127.0.0.1:')[1].split('"')[0])
        self._err_path = self.config.parent / f"serve-{self.port}.err"
        self.log_out = open(self.config.parent / f"serve-{self.port}.out", "ab")
        self.log_err = open(self._err_path, "ab")
        announced = self.port == 0  # bind port 0: the service writes the port it got beside its database
        cmd = [*self.program, "serve", "--config", str(self.config)]
        if self.simulate:
            cmd.append("--simulate")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(self.root), **self.extra_env}
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log_out, stderr=self.log_err, stdin=subprocess.DEVNULL, cwd=self.root, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lampctl serve exited {self.proc.returncode}: {self.stderr()}")
            if announced:
                self.port = self._announced_port() or 0
            try:
                if self.port:
                    self.get("/api/health")
                    return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"lampctl serve did not answer within {timeout} s: {self.stderr()}")

    def _announced_port(self) -> int | None:
        from lampctl.config import load
        from lampctl.platform.runtime import read_address

        address = read_address(load(self.config).service.database)
        return address[1] if address else None

    def stderr(self) -> str:
        return self._err_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.load(exc)

    def get(self, path: str, token: str | None = None):
        return self.request("GET", path, token=token)

    def post(self, path: str, body: dict | None = None, token: str | None = None):
        return self.request("POST", path, body, token)

    def _started(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError("the service was not started: call start() first")
        return self.proc

    def signal(self, sig: int) -> None:
        self._started().send_signal(sig)

    def kill9(self) -> None:
        proc = self._started()
        proc.kill()
        proc.wait(10)
        self._close_logs()

    def stop(self, timeout: float = 10) -> int:
        if self.proc is None or self.proc.poll() is not None:
            self._close_logs()
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
        self._close_logs()
        return rc

    def _close_logs(self) -> None:
        for fh in (getattr(self, "log_out", None), getattr(self, "log_err", None)):
            if fh is not None and not fh.closed:
                fh.close()


def service_config(tmp_path: Path, lamps: str, *, port: int | None = None, extra: str = "") -> Path:
    """A config file for a service on a free loopback port, its database in tmp_path."""
    port = port or free_port()
    path = tmp_path / "config.toml"
    path.write_text(
        textwrap.dedent(f"""
        [service]
        bind = "127.0.0.1:{port}"
        database = "var/lampctl.db"
        pin_factory = "mock"
        """)
        + textwrap.dedent(extra)
        + textwrap.dedent(lamps)
    )
    return path


TWO_LAMPS = """
[[lamps]]
id = "room1"
name = "Room 1"
relay_pin = 17
max_minutes = 30
default_minutes = 0.05
presets = [0.05, 0.1, 10]

[[lamps]]
id = "room2"
name = "Room 2"
relay_pin = 18
max_minutes = 30
presets = [10, 20]
"""


def add_users(config: Path) -> dict:
    """An admin and a practitioner, with API tokens: {"admin": token, "ann": token}."""
    lampctl("user", "add", "admin", "--role", "admin", "--pin", "1234", config=config)
    lampctl("user", "add", "ann", "--role", "practitioner", "--pin", "2468", config=config)
    return {name: lampctl("token", "create", name, config=config).stdout.strip() for name in ("admin", "ann")}


class Simulator:
    """The simulated microcontroller as its own process; its JSON lines collected as they come."""

    def __init__(self, lamps: int = 2, watchdog_s: float = 1.0, guards=()):
        """`guards`: (lamp, adc, low, high) channels it is flashed with; then `adc()` sets an input's reading
        through its control port, as a sensor would, without the host."""
        self.port = free_port()
        extra = ["--control", "127.0.0.1:0"] if guards else []
        for lamp, adc, low, high in guards:
            extra += ["--guard", f"{lamp}:{adc}:{low}:{high}"]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "firmware_bridge.simulator",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--lamps",
                str(lamps),
                "--watchdog",
                str(watchdog_s),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None  # both piped
        self.lines: list[dict] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._control: socket.socket | None = None
        line = self.proc.stderr.readline()
        if guards:
            assert line.startswith("control 127.0.0.1:"), line
            self._control = socket.create_connection(("127.0.0.1", int(line.rsplit(":", 1)[1])), timeout=10)
            self._replies = self._control.makefile("rb")
            line = self.proc.stderr.readline()
        assert line.startswith("listening 127.0.0.1:"), line

    def adc(self, n: int, raw: int | str) -> None:
        """Set ADC input n's reading (0..65535, or "fail": its read raises)."""
        assert self._control is not None, "a Simulator made without guards has no control port"
        self._control.sendall(f"adc {n} {raw}\n".encode())
        assert self._replies.readline().strip() == b"ok"

    def _read(self):
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(json.loads(line))
                self._changed.notify_all()

    def wait_line(self, timeout: float, after: dict | None = None, **match) -> dict:
        """The first line matching, later than the line `after` if given."""

        def found():
            start = self.lines.index(after) + 1 if after else 0
            return next((l for l in self.lines[start:] if all(l.get(k) == v for k, v in match.items())), None)

        with self._changed:
            assert self._changed.wait_for(found, timeout), f"no line {match} in {self.lines}"
            return found()

    def stop(self):
        if self._control is not None:
            self._replies.close()
            self._control.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self._reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """Open count TCP connections to the service that never send a byte (a flood needs no login)."""
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks) -> None:
    for sock in socks:
        sock.close()


def timed_post(url: str, token: str, timeout: float) -> tuple[int | None, float]:
    """POST url with a bearer token on a new connection; (status or None on timeout, seconds taken)."""
    req = urllib.request.Request(url, data=b"", method="POST", headers={"Authorization": f"Bearer {token}"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status, time.monotonic() - t0
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - t0
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, TimeoutError):
            raise
        return None, time.monotonic() - t0
