"""The analog guard end to end: the simulator's --guard and --control port, and FirmwareLink's GUARDS, SENSE and CLEAR."""

import socket
import subprocess
import sys
import threading
import time

import pytest

from firmware_bridge import protocol
from firmware_bridge.bridge import FirmwareError, FirmwareLink
from tests.test_fw_bridge import LinkEvents, started
from tests.test_fw_simulator import ROOT, SimProcess

pytestmark = pytest.mark.integration

THERMISTOR = (0, 0, 9000, 52000)
CURRENT = (1, 2, 0, 30000)
GUARDS = [THERMISTOR, CURRENT]


class Control:
    """A client of the simulator's --control port: one request line, one reply line."""

    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=5)
        self.file = self.sock.makefile("rb")

    def ask(self, line):
        self.sock.sendall(line.encode() + b"\n")
        return self.file.readline().decode().strip()

    def adc(self, n, value):
        assert self.ask("adc %d %s" % (n, value)) == "ok"

    def close(self):
        self.file.close()
        self.sock.close()


class Readings:
    """Collects on_guard calls; lets a test wait for readings that match."""

    def __init__(self):
        self.calls = []
        self.threads = set()
        self._cond = threading.Condition()

    def __call__(self, readings):
        with self._cond:
            self.calls.append(readings)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait(self, match, timeout=5.0):
        with self._cond:
            if not self._cond.wait_for(lambda: self.calls and match(self.calls[-1]), timeout):
                raise AssertionError("no matching readings within %g s; last %r" % (timeout, self.calls[-1:]))
            return self.calls[-1]


@pytest.fixture
def guarded_sim():
    args = ["--lamps", "2", "--watchdog", "1.0", "--control", "127.0.0.1:0"]
    for lamp, adc, low, high in GUARDS:
        args += ["--guard", "%d:%d:%d:%d" % (lamp, adc, low, high)]
    process = SimProcess(*args)
    control = Control(process.control)
    yield process, control
    control.close()
    process.stop()


@pytest.fixture
def link_to():
    made = []

    def make(sim, **kwargs):
        kwargs.setdefault("watchdog_s", 1.0)
        kwargs.setdefault("heartbeat_s", 0.1)
        link = FirmwareLink(sim.url, 2, **kwargs)
        made.append(link)
        return link

    yield make
    for link in made:
        link.close()


@pytest.mark.parametrize(
    "case, line, reply",
    [
        ("a reading", "adc 0 20000", "ok"),
        ("a failing read", "adc 2 fail", "ok"),
        ("an input the Pico lacks", "adc 3 5", "error: ADC input must be 0..2, got '3'"),
        ("a reading past 65535", "adc 0 65536", "error: a reading must be 0..65535 or 'fail', got '65536'"),
        ("not a request", "fire 0", "error: expected 'adc <n> <raw>' or 'adc <n> fail', got 'fire 0'"),
    ],
)
def test_simulator_control_port_answers_each_line(guarded_sim, case, line, reply):
    _sim, control = guarded_sim
    assert control.ask(line) == reply, case


def test_simulator_control_port_trips_a_lamp_without_the_host(guarded_sim):
    sim, control = guarded_sim
    host = socket.create_connection(("127.0.0.1", sim.port), timeout=5)
    try:
        host.sendall(b"\n" + protocol.encode_command(1, "HELLO") + protocol.encode_command(2, "ARM", 1, 60000))
        assert sim.wait_event(lamp=1, why="armed")["on"] is True
        control.adc(2, 30001)  # over the current limit
        assert sim.wait_event(lamp=1, why="guard")["on"] is False
    finally:
        host.close()


@pytest.mark.parametrize(
    "case, guards, said",
    [
        ("a shared adc", ["0:0:1:2", "0:0:3:4"], "--guard: ADC 0 guards two channels; each ADC input serves one\n"),
        ("a lamp not served", ["1:0:1:2"], "--guard: guard channel (1, 0, 1, 2) names lamp 1; lamps are 0..0\n"),
    ],
)
def test_simulator_refuses_a_bad_guard_table_in_one_line(case, guards, said):
    args = [sys.executable, "-m", "firmware_bridge.simulator", "--listen", "127.0.0.1:0", "--lamps", "1"]
    for guard in guards:
        args += ["--guard", guard]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert (proc.returncode, proc.stderr) == (2, said), case


def test_link_refuses_a_firmware_flashed_with_other_guards(guarded_sim, link_to):
    sim, _control = guarded_sim
    events = LinkEvents()
    link = link_to(sim, guards=[THERMISTOR, (1, 2, 0, 25000)], on_link_change=events)
    link.start()
    _, up, reason = events.wait(False)
    assert not link.up
    assert reason == (
        "The firmware on %s guards lamp 0 on ADC 0 between 9000 and 52000, lamp 1 on ADC 2 between 0 and 30000 "
        "but the config asks for lamp 0 on ADC 0 between 9000 and 52000, lamp 1 on ADC 2 between 0 and 25000: "
        "run lampctl firmware flash." % sim.url
    )


def test_link_without_guards_refuses_a_guarded_firmware(guarded_sim, link_to):
    sim, _control = guarded_sim
    events = LinkEvents()
    link = link_to(sim, on_link_change=events)
    link.start()
    _, _, reason = events.wait(False)
    assert "but the config asks for no channel" in reason


def test_link_readings_arrive_on_sense_heartbeats_and_on_guard(guarded_sim, link_to):
    sim, control = guarded_sim
    readings = Readings()
    link = started(link_to(sim, guards=GUARDS, on_guard=readings))
    first = readings.wait(lambda r: True)
    assert first == [
        {"raw": 30500, "trip": 0, "trip_raw": 0, "trip_ago_ms": 0},
        {"raw": 15000, "trip": 0, "trip_raw": 0, "trip_ago_ms": 0},
    ]
    control.adc(0, 21000)
    readings.wait(lambda r: r[0]["raw"] == 21000)
    assert link.readings[0]["raw"] == 21000
    assert time.monotonic() - link.readings_at < 1.0
    assert readings.threads == {"firmware-link %s" % sim.url}
    link.arm(0, 60000)
    # 15 SENSE heartbeats (1.5 s) feed the firmware's 1 s watchdog as PING does.
    beats = len(readings.calls)
    readings.wait(lambda r: len(readings.calls) >= beats + 15, timeout=10)
    assert link.status()[0]["on"] is True
    assert not [e for e in sim.drain() if e["why"] == "watchdog"]
    assert link.up


def test_link_sees_a_trip_refuses_arm_and_clears(guarded_sim, link_to):
    sim, control = guarded_sim
    readings = Readings()
    link = started(link_to(sim, guards=GUARDS, on_guard=readings))
    link.arm(0, 60000)
    control.adc(0, 8000)  # the lamp head is too hot
    assert sim.wait_event(lamp=0, why="guard")["on"] is False
    tripped = readings.wait(lambda r: r[0]["trip"] == protocol.TRIP_LOW)
    assert tripped[0]["trip_raw"] == 8000
    with pytest.raises(FirmwareError) as caught:
        link.arm(0, 60000)
    assert caught.value.reason == protocol.GUARD_TRIPPED
    assert "guard of that lamp has tripped" in str(caught.value)
    with pytest.raises(FirmwareError) as caught:
        link.clear(0)  # still too hot
    assert caught.value.reason == protocol.GUARD_TRIPPED
    control.adc(0, 20000)
    link.clear(0)
    readings.wait(lambda r: r[0]["trip"] == protocol.TRIP_NONE)
    link.arm(0, 60000)
    assert sim.wait_event(lamp=0, why="armed")["on"] is True


def test_link_learns_a_trip_made_while_it_was_away(guarded_sim, link_to):
    sim, control = guarded_sim
    control.adc(2, "fail")  # the current sensor cannot be read: the firmware trips on its own
    readings = Readings()
    started(link_to(sim, guards=GUARDS, on_guard=readings))
    latched = readings.wait(lambda r: r[1]["trip"] == protocol.TRIP_FAIL)
    assert latched[1]["trip_ago_ms"] >= 0


def test_link_refuses_a_bad_guard_table_at_construction():
    with pytest.raises(ValueError):
        FirmwareLink("loop://", 2, guards=[(0, 0, 1, 2), (1, 0, 1, 2)])


def test_serve_simulate_starts_the_simulator_with_the_guards_it_is_given(tmp_path, link_to):
    from types import SimpleNamespace

    from lampctl.devices.simproc import start_simulator, stop_simulator

    cfg = SimpleNamespace(
        service=SimpleNamespace(database=tmp_path / "var" / "lampctl.db"),
        lamps=[object(), object()],
        firmware=SimpleNamespace(watchdog_s=1.0),
    )
    proc, url = start_simulator(cfg, guards=GUARDS)
    try:
        link = started(link_to(SimpleNamespace(url=url), guards=GUARDS))
        assert link.up
    finally:
        stop_simulator(proc)
