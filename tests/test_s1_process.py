"""S1/S15 on a real process: relays OFF before Flask is imported, and OFF again on every signal, a crashed thread, a failing close step."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import sys

import pytest

from tests.procs import (
    ROOT,
    TWO_LAMPS,
    ServiceProcess,
    add_users,
    service_config,
    wait_until,
)

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


def db_rows(config, sql):
    """Read the database the stopped service left, as the next start would find it."""
    with sqlite3.connect(config.parent / "var" / "lampctl.db") as conn:
        return conn.execute(sql).fetchall()


def started_then_ended(svc, tokens, end) -> dict:
    """Start a session on room1, end the service with end(), return the pin dump."""
    try:
        assert svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])[0] == 201
        end()
        assert svc.proc.wait(20) == 0  # a requested stop is a clean exit
    finally:
        svc.stop()
    return json.loads((svc.config.parent / "pins.json").read_text())


# man 7 signal: every signal whose default action ends the process ("Term" or "Core"), named
# here, not taken from the code: a signal dropped from the code's list must fail a test.
TERMINATE_BY_DEFAULT = (
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
)  # and every real-time signal, SIGRTMIN..SIGRTMAX
# The ones the service does not handle, and why (lampctl/platform/signals.py): uncatchable; ignored by
# Python (a dropped client must not end the service); a fault of the process itself, which a
# Python handler would turn into a spinning process instead of a dead one systemd restarts.
NOT_HANDLED = {
    "SIGKILL": "default",
    "SIGPIPE": "ignore",
    "SIGSEGV": "default",
    "SIGBUS": "default",
    "SIGFPE": "default",
    "SIGILL": "default",
}
# Sent one by one to a service with a lamp on: the ones systemd, a terminal, a UPS daemon or an
# operator's `kill` really send, and one real-time signal at each end of the range.
SENT = (
    "SIGTERM",
    "SIGINT",
    "SIGHUP",
    "SIGQUIT",
    "SIGABRT",
    "SIGUSR1",
    "SIGUSR2",
    "SIGALRM",
    "SIGVTALRM",
    "SIGPROF",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGPWR",
    "SIGRTMIN",
    "SIGRTMAX",
)
# What `lampctl serve` must not have imported when it claims the relays (S1: relays OFF
# before any slow import): the web stack, the store and its database, the accounts, the
# serial port, the firmware link, the broker client, the controller. (firmware_bridge.protocol
# may be there: it is pure, and the config checks its limits against the firmware's, S14.)
# ssl: OpenSSL's library and the module took 5-10 ms of exec -> relays OFF through [mqtt]'s TLS checks.
# lampctl.config.mqtt (and socket with it): read only where a config has an [mqtt] table, which this one has not.
NOT_BEFORE_CLAIM = (
    "lampctl.config.mqtt",
    "ssl",
    "_ssl",
    "sqlite3",
    "_sqlite3",
    "lampctl.storage.store",
    "lampctl.storage.db",
    "lampctl.storage.accounts",
    "lampctl.core.controller",
    "lampctl.devices.backstop",
    "lampctl.platform.httpserver",
    "web",
    "flask",
    "werkzeug",
    "jinja2",
    "waitress",
    "serial",
    "firmware_bridge.bridge",
    "firmware_bridge.simulator",
    "firmware_bridge.firmware",
    "paho",
    "paho.mqtt",
    "lampctl.fleet.mqtt",
)


@pytest.mark.parametrize("name", SENT)
def test_s1_s15_signal_turns_relays_off_and_closes_session(tmp_path, name):
    sig = getattr(signal, name)
    svc, tokens, _ = run_harness(tmp_path)
    pins = started_then_ended(svc, tokens, lambda: svc.signal(sig))
    assert pins["pins"]["GPIO17"] == [False, True, False]
    assert pins["pins"]["GPIO18"] == [False]
    # The record was flushed before exit: nothing is left open for the next start to recover.
    [(reason, actual_s)] = db_rows(svc.config, "SELECT end_reason, actual_s FROM sessions")
    assert reason == "interrupted" and 0 < actual_s < 600
    name = signal.Signals(sig).name
    assert any(name in why for (why,) in db_rows(svc.config, "SELECT why FROM events"))


def test_s1_relays_claimed_before_the_store_the_accounts_the_web_and_the_serial_port(tmp_path):
    svc, tokens, _ = run_harness(tmp_path)
    pins = started_then_ended(svc, tokens, lambda: svc.signal(signal.SIGTERM))
    [loaded] = pins["modules_at_claim"]  # one relay bank, claimed once
    assert [m for m in NOT_BEFORE_CLAIM if m in loaded] == []
    assert pins["pins"]["GPIO17"] == [False, True, False]


def test_s15_every_signal_that_ends_a_process_by_default_has_the_handler(tmp_path):
    svc, tokens, _ = run_harness(tmp_path)
    pins = started_then_ended(svc, tokens, lambda: svc.signal(signal.SIGTERM))
    got = pins["signals"]
    numbers = {name: getattr(signal, name) for name in TERMINATE_BY_DEFAULT}
    numbers |= {f"SIGRTMIN+{n}": signal.SIGRTMIN + n for n in range(signal.SIGRTMAX - signal.SIGRTMIN + 1)}
    wrong = {
        name: got.get(str(num))
        for name, num in numbers.items()
        if got.get(str(num)) != NOT_HANDLED.get(name, "handler")
    }
    assert wrong == {}


def test_s1_s15_second_signal_cuts_no_close_step_short(tmp_path):
    release = tmp_path / "release"
    svc, tokens, _ = run_harness(tmp_path, S1_HOLD_CLOSE="usage log", S1_HOLD_UNTIL=str(release))

    def two_signals():
        svc.signal(signal.SIGTERM)
        wait_until(lambda: "holding close step usage log" in svc.stderr(), 20, "the log's close step")
        svc.signal(signal.SIGHUP)  # an impatient operator, or systemd's SIGHUP after SIGTERM
        wait_until(lambda: "SIGHUP received" in svc.stderr(), 20, "the second signal")
        release.touch()

    pins = started_then_ended(svc, tokens, two_signals)
    assert "closed usage log" in svc.stderr()
    assert pins["pins"]["GPIO17"] == [False, True, False]
    assert db_rows(svc.config, "SELECT end_reason FROM sessions") == [("interrupted",)]


@pytest.mark.parametrize("step", ["watchdog", "web server", "scheduler", "stop event"])
def test_s1_failing_close_step_still_turns_relays_off_and_flushes_log(tmp_path, step):
    svc, tokens, _ = run_harness(tmp_path, S1_FAIL_CLOSE=step)
    pins = started_then_ended(svc, tokens, lambda: svc.signal(signal.SIGTERM))
    assert f"closing {step} failed" in svc.stderr()
    assert "closed usage log" in svc.stderr() and "closed relays" in svc.stderr()
    assert pins["pins"]["GPIO17"] == [False, True, False]
    assert pins["pins"]["GPIO18"] == [False]
    assert db_rows(svc.config, "SELECT end_reason FROM sessions") == [("interrupted",)]


def test_s1_crashed_thread_turns_relays_off_and_latches_fault(tmp_path):
    trigger = tmp_path / "crash-now"
    svc, tokens, dump = run_harness(tmp_path, S1_CRASH_WHEN=str(trigger))
    try:
        assert svc.post("/api/lamps/room1/start", {"minutes": 10}, tokens["ann"])[0] == 201
        trigger.touch()  # only now, with the session running, may the thread crash
        wait_until(
            lambda: svc.get("/api/lamps/room1", tokens["ann"])[1]["state"] == "fault",
            10,
            "a fault after the injected crash",
        )
        lamp = svc.get("/api/lamps/room1", tokens["ann"])[1]
        assert lamp["relay_on"] is False and "crashing-worker" in lamp["fault_reason"]
        # The record follows the cutoff.
        wait_until(lambda: sessions(svc, tokens)[0]["end_reason"] is not None, 5, "the session record")
        assert sessions(svc, tokens)[0]["end_reason"] == "fault"
    finally:
        assert svc.stop() == 0
    assert json.loads(dump.read_text())["pins"]["GPIO17"] == [False, True, False]


def test_s15_ready_only_once_the_panel_answers_then_pings_and_sigabrt_ends_safely(tmp_path):
    first_answer, notes = tmp_path / "first-answer", tmp_path / "notify.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        address = f"lampctl-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + address)
        sock.settimeout(30)
        svc, tokens, _ = run_harness(
            tmp_path, NOTIFY_SOCKET="@" + address, S1_FIRST_ANSWER=str(first_answer), S1_NOTIFY_LOG=str(notes)
        )
        try:
            assert sock.recv(64) == b"READY=1"
            assert sock.recv(64) == b"WATCHDOG=1"
            ready_sent_at = float(notes.read_text().split()[0])
            # READY=1 went out only after the panel had answered a request.
            assert float(first_answer.read_text()) < ready_sent_at
        finally:
            pins = started_then_ended(svc, tokens, lambda: svc.signal(signal.SIGABRT))
    assert pins["pins"]["GPIO17"] == [False, True, False]
    assert db_rows(svc.config, "SELECT end_reason FROM sessions") == [("interrupted",)]
