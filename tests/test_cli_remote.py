"""The CLI as an API client: the requests it sends (estop, start --new-patient) and replies it cannot use."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lampctl.cli import main
from tests.procs import TWO_LAMPS, service_config

LAMP_OFF = {"id": "room1", "state": "off", "relay_on": False, "remaining_s": None, "session_id": None}
LAMP_FAULT = {"id": "room1", "state": "fault", "relay_on": False, "fault_reason": "emergency stop by cli"}


class FakeService(ThreadingHTTPServer):
    """Answers the API on loopback with canned replies and keeps every request it got."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.reply: tuple[int, bytes] = (200, b"{}")
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append(
            {
                "method": self.command,
                "path": self.path,
                "auth": self.headers["Authorization"],
                "body": json.loads(body) if body else None,
            }
        )
        status, payload = self.server.reply
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def fake(tmp_path):
    server = FakeService()
    yield server, str(service_config(tmp_path, TWO_LAMPS, port=server.server_address[1]))
    server.close()


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_estop_posts_api_estop_and_says_the_lamps_are_latched(fake, capsys):
    server, config = fake
    server.reply = (200, json.dumps({"lamps": [LAMP_FAULT]}).encode())
    rc, out, err = run(capsys, "estop", "--config", config, "--token", "tok")
    assert rc == 0 and err == ""
    assert server.requests == [{"method": "POST", "path": "/api/estop", "auth": "Bearer tok", "body": None}]
    assert out.splitlines()[0].startswith("room1        fault     relay off  emergency stop by cli")
    assert "latched until an admin resets it" in out


def test_cli_start_new_patient_sends_the_flag_and_only_when_asked(fake, capsys):
    server, config = fake
    server.reply = (201, json.dumps({"session_id": 7, "lamp": LAMP_OFF}).encode())
    assert run(capsys, "start", "room2", "--minutes", "10", "--new-patient", "--config", config, "--token", "t")[0] == 0
    assert run(capsys, "start", "room2", "--seconds", "90", "--config", config, "--token", "t")[0] == 0
    assert [(r["path"], r["body"]) for r in server.requests] == [
        ("/api/lamps/room2/start", {"minutes": 10.0, "new_patient": True}),
        ("/api/lamps/room2/start", {"seconds": 90.0}),
    ]


def test_cli_refusal_is_the_services_sentence_exit_1(fake, capsys):
    server, config = fake
    server.reply = (409, json.dumps({"error": "Room 2 is already on.", "code": "state"}).encode())
    rc, out, err = run(capsys, "start", "room2", "--minutes", "5", "--config", config, "--token", "t")
    assert rc == 1 and out == "" and err == "lampctl: refused (409): Room 2 is already on.\n"


def test_cli_request_the_service_calls_malformed_is_usage_error_exit_2(fake, capsys):
    server, config = fake
    server.reply = (400, json.dumps({"error": "Room 2 allows at most 30 minutes.", "code": "too-long"}).encode())
    rc, _, err = run(capsys, "start", "room2", "--minutes", "45", "--config", config, "--token", "t")
    assert rc == 2 and err == "lampctl start: error: refused (400): Room 2 allows at most 30 minutes.\n"


@pytest.mark.parametrize("payload", [b"<html>oops</html>", b"[1, 2]", b'{"lamps": 5}'])
def test_cli_unusable_reply_is_one_line_not_a_traceback(fake, capsys, payload):
    server, config = fake
    server.reply = (200, payload)
    rc, out, err = run(capsys, "status", "--config", config, "--token", "t")
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("lampctl: the service") and "internal error" not in err


def test_cli_token_from_environment_and_file_checked(fake, capsys, monkeypatch, tmp_path):
    server, config = fake
    server.reply = (200, json.dumps({"lamps": [LAMP_OFF]}).encode())
    monkeypatch.setenv("LAMPCTL_TOKEN", "from-env")
    assert run(capsys, "status", "--config", config)[0] == 0
    assert server.requests[-1]["auth"] == "Bearer from-env"
    monkeypatch.setenv("LAMPCTL_TOKEN", "bad\r\nX-Evil: 1")
    rc, _, err = run(capsys, "status", "--config", config)
    assert rc == 2 and "LAMPCTL_TOKEN must be printable ASCII" in err
    monkeypatch.delenv("LAMPCTL_TOKEN")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "cli.token").write_text("line one\nline two\n")
    rc, _, err = run(capsys, "status", "--config", config)
    assert rc == 1 and "does not hold a token" in err and len(server.requests) == 1


def test_s19_cli_stop_of_an_off_lamp_exits_0_saying_it_was_already_off(fake, capsys):
    server, config = fake
    server.reply = (200, json.dumps({"lamp": LAMP_OFF, "result": "already-off", "recorded": True}).encode())
    rc, out, err = run(capsys, "stop", "room1", "--config", config, "--token", "t")
    assert rc == 0 and err == ""
    assert out.splitlines()[-1] == "room1: was already off"
    server.reply = (
        200,
        json.dumps(
            {
                "lamps": [LAMP_OFF, {**LAMP_OFF, "id": "room2"}],
                "recorded": True,
                "results": {"room1": "ended", "room2": "cancelled-start"},
            }
        ).encode(),
    )
    rc, out, err = run(capsys, "stop-all", "--config", config, "--token", "t")
    assert rc == 0 and out.splitlines()[-2:] == [
        "room1: stopped, its session ended",
        "room2: a start was cancelled, the lamp stays off",
    ]


def test_cli_never_sends_a_stop_or_its_token_to_a_proxy(fake, capsys, monkeypatch):
    server, config = fake
    proxy = FakeService()  # records whatever reaches it, and answers as a proxy that cannot help would
    proxy.reply = (502, b'{"error": "bad gateway"}')
    try:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        server.reply = (200, json.dumps({"lamps": [LAMP_OFF]}).encode())
        rc, out, err = run(capsys, "stop-all", "--config", config, "--token", "admin-token")
        assert proxy.requests == [], "the Stop and its token went to the proxy"
        assert rc == 0 and err == ""
        assert server.requests == [
            {"method": "POST", "path": "/api/stop-all", "auth": "Bearer admin-token", "body": None}
        ]
    finally:
        proxy.close()


def _start_time(pid: int) -> str:
    from pathlib import Path

    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()[19]  # field 22 of proc(5): starttime


def test_cli_follows_the_live_services_address_file_but_never_a_stale_one(fake, capsys, tmp_path):
    import os
    import subprocess
    import sys

    server, config = fake
    server.reply = decoy_reply = (200, json.dumps({"lamps": [LAMP_OFF]}).encode())
    decoy = FakeService()
    decoy.reply = decoy_reply
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    address = tmp_path / "var" / "service.address"
    address.parent.mkdir()
    me = os.getpid()
    cases = [
        ("a process that has ended", {"pid": ended.pid, "started": None}, server),
        ("a pid now used by another process", {"pid": me, "started": str(int(_start_time(me)) + 1)}, server),
        ("not an address file", None, server),
        ("the live service", {"pid": me, "started": _start_time(me)}, decoy),
    ]
    try:
        for what, owner, reached in cases:
            address.write_text(
                "{not json"
                if owner is None
                else json.dumps({**owner, "host": "127.0.0.1", "port": decoy.server_address[1]})
            )
            before = (len(server.requests), len(decoy.requests))
            rc, _, err = run(capsys, "status", "--config", config, "--token", "t")
            assert rc == 0, (what, err)
            after = (len(server.requests), len(decoy.requests))
            went = decoy if after[1] > before[1] else server
            assert went is reached, f"with an address file of {what} the CLI went to the wrong port"
    finally:
        decoy.close()


@pytest.mark.integration
def test_cli_reaches_a_service_bound_to_port_0_and_its_address_file_goes_with_it(tmp_path):
    import stat

    from tests.procs import ServiceProcess, add_users, lampctl

    config = service_config(tmp_path, TWO_LAMPS)
    config.write_text(re.sub(r'bind = "127\.0\.0\.1:\d+"', 'bind = "127.0.0.1:0"', config.read_text()))
    assert lampctl("check-config", config=config).returncode == 0
    tokens = add_users(config)
    svc = ServiceProcess(config).start()
    address = tmp_path / "var" / "service.address"
    try:
        assert svc.port != 0
        assert stat.S_IMODE(address.stat().st_mode) == 0o600
        status = lampctl("status", config=config)
        assert status.stdout.startswith("room1") and status.stderr == ""
        assert svc.post("/api/lamps/room1/start", {"minutes": 5}, tokens["ann"])[0] == 201
        stopped = lampctl("stop-all", config=config)
        assert stopped.returncode == 0, stopped.stderr
        lamp = svc.get("/api/lamps/room1", tokens["ann"])[1]
        assert lamp["state"] == "off" and lamp["relay_on"] is False
    finally:
        assert svc.stop() == 0
    assert not address.exists(), "a clean exit leaves its address file behind"
    gone = lampctl("status", config=config, check=False)
    assert gone.returncode == 1 and len(gone.stderr.splitlines()) == 1
    assert "the service is not running" in gone.stderr and "port 0" in gone.stderr
