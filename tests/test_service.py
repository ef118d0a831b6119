"""Service wiring: the systemd watchdog pings only while the scheduler lives (S6), secret files are 0600."""
from __future__ import annotations

import os
import socket
import stat
import threading

from lampctl import service


class FakeController:
    def __init__(self, alive=True):
        self.scheduler_alive = alive
        self.last_tick = float("inf")
        self.faults = []
        self.faulted = threading.Event()

    def fault(self, reason):
        self.faults.append(reason)
        self.faulted.set()


def test_s6_service_watchdog_latches_fault_and_stops_pings_when_scheduler_dies(tmp_path, monkeypatch):
    sock_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(sock_path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
        monkeypatch.setattr(service, "WATCHDOG_PERIOD_S", 0.01)
        ctl = FakeController()
        stop = threading.Event()
        thread = threading.Thread(target=service._watchdog, args=(ctl, stop), daemon=True)
        thread.start()
        try:
            assert sock.recv(64) == b"WATCHDOG=1"
            ctl.scheduler_alive = False
            assert ctl.faulted.wait(5)
            sock.setblocking(False)
            while True:  # drain the pings sent before the death was seen
                try:
                    sock.recv(64)
                except BlockingIOError:
                    break
            stop.wait(0.2)  # twenty watchdog periods with a dead scheduler
            try:
                late = sock.recv(64)
            except BlockingIOError:
                late = None
            assert late is None, "systemd was still told all is well"
        finally:
            stop.set()
            thread.join(5)
        assert ctl.faults == ["scheduler died"]


def test_service_secret_file_is_owner_only(tmp_path):
    path = tmp_path / "var" / "cli.token"
    service.write_secret_file(path, "abc\n")
    assert path.read_text() == "abc\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
