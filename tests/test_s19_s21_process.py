"""S19/S21 on a real `lampctl serve` and simulator: a Stop beats the queued start it follows, and needs no credentials."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time

import pytest

from tests.procs import TWO_LAMPS, ServiceProcess, Simulator, add_users, lampctl, service_config, wait_until

pytestmark = pytest.mark.integration

FIRMWARE = """
[safety]
heartbeat_s = 0.2

[firmware]
port = "socket://127.0.0.1:{port}"
watchdog_s = 1.0
grace_s = 0.1
reply_timeout_s = 0.5
"""
# More than the service's 8 web workers: each holds one while an unknown token waits for an accounts reload.
BLOCKERS = 12


@pytest.fixture
def rig(tmp_path):
    sim = Simulator()
    config = service_config(tmp_path, TWO_LAMPS, extra=FIRMWARE.replace("{port}", str(sim.port)))
    tokens = add_users(config)
    svc = ServiceProcess(config, simulate=False).start()
    yield sim, svc, tokens, config
    if svc.proc.poll() is None:
        svc.proc.send_signal(signal.SIGCONT)
    svc.stop()
    sim.stop()


def send(port: int, method: str, path: str, token: str | None = None, body: dict | None = None):
    """Send one whole request now; the reply is read later with reply()."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else b"", headers=headers)
    return conn


def reply(conn) -> tuple[int, dict, float]:
    """(status, JSON body, monotonic time the reply was read)."""
    try:
        resp = conn.getresponse()
        body = json.loads(resp.read() or b"{}")
        return resp.status, body, time.monotonic()
    finally:
        conn.close()


def test_s19_stop_sent_50ms_after_a_queued_start_keeps_the_lamp_off(rig):
    sim, svc, tokens, config = rig
    queued_tries = 0
    for _ in range(3):
        blockers = [send(svc.port, "GET", "/api/lamps", token="made-up-token") for _ in range(BLOCKERS)]
        lines_before = len(sim.lines)
        start = send(svc.port, "POST", "/api/lamps/room1/start", tokens["ann"], {"seconds": 60})
        time.sleep(0.05)  # the scenario: the practitioner changes their mind 50 ms later
        stop_status, stop_body, stop_at = reply(send(svc.port, "POST", "/api/lamps/room1/stop", tokens["ann"]))
        start_status, start_body, start_at = reply(start)
        for conn in blockers:
            reply(conn)
        assert stop_status == 200, stop_body
        assert stop_body["lamp"]["relay_on"] is False
        if start_at > stop_at:  # the start really was queued behind the busy workers
            queued_tries += 1
            assert stop_body["result"] == "cancelled-start", stop_body
            assert (start_status, start_body["code"]) == (409, "cancelled"), start_body
        # The firmware channel never armed room1 (index 0): the lamp never came on.
        assert [l for l in sim.lines[lines_before:] if l["lamp"] == 0 and l["on"]] == []
        status, health = svc.get("/api/health")
        assert [l["relay_on"] for l in health["lamps"]] == [False, False]
    assert queued_tries >= 1, "no try had its start queued behind the busy workers: the test proved nothing"
    status, sessions = svc.get("/api/sessions", tokens["admin"])
    assert sessions["sessions"] == []
    # The CLI on an off lamp: exit 0, saying so.
    out = lampctl("stop", "room1", config=config)
    assert out.stdout.splitlines()[-1] == "room1: was already off"


def test_s21_practitioner_stop_gets_through_64_connections_stopping_with_made_up_tokens(rig):
    sim, svc, tokens, config = rig
    stop = threading.Event()
    flood_status: list[int] = []

    def flood():
        while not stop.is_set():
            flood_status.append(reply(send(svc.port, "POST", "/api/stop-all", "made-up-token"))[0])

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(64)]
    latencies = []
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(flood_status) >= 64, 30, "the flood under way")
        # (A start would not survive the flood: every Stop all cancels what arrived before it, S19.)
        for _ in range(5):
            t0 = time.monotonic()
            status, body, done = reply(send(svc.port, "POST", "/api/lamps/room1/stop", tokens["ann"]))
            latencies.append(done - t0)
            assert status == 200 and body["lamp"]["relay_on"] is False
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert set(flood_status) == {200}  # S21: no Stop is refused for its token
    # Before S21 each made-up token waited 1.5 s for an accounts reload, 32 at a time: 1.3-1.7 s.
    assert max(latencies) < 1.0, latencies
