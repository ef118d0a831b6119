"""S1 on a real process: relays OFF before Flask is imported, and OFF again on SIGTERM, SIGINT and a crashed thread."""
from __future__ import annotations

import json
import signal
import sys

import pytest

from tests.procs import ROOT, TWO_LAMPS, ServiceProcess, add_users, service_config, wait_until

pytestmark = pytest.mark.integration
HARNESS = [sys.executable, str(ROOT / "tests" / "s1_harness.py")]


def run_harness(tmp_path, **env):
    config = service_config(tmp_path, TWO_LAMPS)
    tokens = add_users(config)
    dump = tmp_path / "pins.json"
    svc = ServiceProcess(config, program=HARNESS, extra_env={"S1_PIN_DUMP": str(dump), **env}).start()
    return svc, tokens, dump


def sessions(svc, tokens):
    return svc.get("/api/sessions", token=tokens["admin"])[1]["sessions"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_s1_signal_turns_relays_off_and_closes_session(tmp_path, sig):
    svc, tokens, dump = run_harness(tmp_path)
    try:
        assert svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])[0] == 201
        svc.signal(sig)
        assert svc.proc.wait(10) == 0  # a requested stop is a clean exit
    finally:
        svc.stop()
    pins = json.loads(dump.read_text())
    assert pins["flask_loaded_at_claim"] == [False]
    assert pins["pins"]["GPIO17"] == [False, True, False]
    assert pins["pins"]["GPIO18"] == [False]
    svc = ServiceProcess(svc.config).start()  # a clean restart: nothing left open to recover
    try:
        [row] = sessions(svc, tokens)
        assert row["end_reason"] == "interrupted"
        assert 0 < row["actual_s"] < 10
    finally:
        svc.stop()


def test_s1_crashed_thread_turns_relays_off_and_latches_fault(tmp_path):
    svc, tokens, dump = run_harness(tmp_path, S1_CRASH_AFTER="1.0")
    try:
        assert svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])[0] == 201
        wait_until(lambda: svc.get("/api/lamps/room1", tokens["ann"])[1]["state"] == "fault", 10,
                   "a fault after the injected crash")
        lamp = svc.get("/api/lamps/room1", tokens["ann"])[1]
        assert lamp["relay_on"] is False and "crashing-worker" in lamp["fault_reason"]
        # The record follows the cutoff.
        wait_until(lambda: sessions(svc, tokens)[0]["end_reason"] is not None, 5, "the session record")
        assert sessions(svc, tokens)[0]["end_reason"] == "fault"
    finally:
        assert svc.stop() == 0
    assert json.loads(dump.read_text())["pins"]["GPIO17"] == [False, True, False]
