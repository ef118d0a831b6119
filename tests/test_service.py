"""Service wiring: systemd pings only while the scheduler lives (S6), guarded close steps, the S16 lock, secret files."""

from __future__ import annotations

import os
import stat
import threading
from contextlib import ExitStack

import pytest

from lampctl import service
from lampctl.platform.runtime import AlreadyRunning, InstanceLock, lock_path, write_secret_file


class FakeController:
    def __init__(self):
        self.scheduler_alive = True
        self.last_tick = float("inf")
        self.faults = []

    def fault(self, reason):
        self.faults.append(reason)


class CountedStop:
    """Stands in for the watchdog's stop event: each wait() is one period; calls hooks[n] on the n-th."""

    def __init__(self, periods, hooks):
        self.periods, self.hooks, self.calls = periods, hooks, 0

    def wait(self, _timeout):
        self.calls += 1
        self.hooks.get(self.calls, lambda: None)()
        return self.calls > self.periods


def test_s6_service_watchdog_latches_fault_and_stops_pings_when_scheduler_dies():
    ctl, sent = FakeController(), []

    def die():
        ctl.scheduler_alive = False

    # Three live periods, then the scheduler dies and twenty more periods pass.
    service._watchdog(ctl, CountedStop(23, {4: die}), sent.append)
    assert sent == ["WATCHDOG=1"] * 3, "systemd was still told all is well"
    assert ctl.faults == ["scheduler died"]


def test_s6_service_watchdog_stalled_scheduler_is_a_fault_too():
    ctl, sent = FakeController(), []
    ctl.last_tick = 0.0  # no tick since boot: stalled
    service._watchdog(ctl, CountedStop(5, {}), sent.append)
    assert sent == [] and ctl.faults == ["scheduler stalled"]


def test_service_close_steps_each_guarded_and_all_run(caplog):
    svc, ran = service.Service("unused.toml"), []

    def broken():
        ran.append("broken")
        raise OSError("disk gone")

    with ExitStack() as stack:
        svc.on_close(stack, "relays", ran.append, "relays")
        svc.on_close(stack, "usage log", ran.append, "usage log")
        svc.on_close(stack, "web server", broken)
    assert ran == ["broken", "usage log", "relays"]
    assert svc.close_errors == ["web server: disk gone"]
    assert "closing web server failed" in caplog.text


def test_s16_instance_lock_refuses_a_second_holder_until_released(tmp_path):
    db = tmp_path / "var" / "lampctl.db"
    first = InstanceLock(db).acquire()
    try:
        with pytest.raises(AlreadyRunning, match=rf"another lampctl serve \(pid {os.getpid()}\) is already using"):
            InstanceLock(db).acquire()
        assert not db.exists(), "the lock must not create the database"
    finally:
        first.release()
        first.release()  # idempotent
    InstanceLock(db).acquire().release()
    assert lock_path(db) == tmp_path / "var" / "lampctl.db.lock"


def test_service_secret_file_is_owner_only(tmp_path):
    path = tmp_path / "var" / "cli.token"
    write_secret_file(path, "abc\n")
    assert path.read_text() == "abc\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_service_ready_waits_for_an_answer_and_gives_up_when_stopped():
    stop = threading.Event()
    stop.set()
    assert service.wait_serving("http://127.0.0.1:9/api/health", stop, 5) is False


def test_service_ready_probe_ignores_http_proxy(monkeypatch):
    import http.server

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.delenv("no_proxy", raising=False)
        try:
            url = f"http://127.0.0.1:{httpd.server_address[1]}/api/health"
            assert service.wait_serving(url, threading.Event(), 5) is True
        finally:
            httpd.shutdown()
