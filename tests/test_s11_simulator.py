"""S11/S12 end to end: a real FirmwareLink to the simulator process, with the firmware's ARM reply 0.3 s slow."""

from __future__ import annotations

import threading
import time

import pytest
import serial

from firmware_bridge.bridge import FirmwareLink
from lampctl.core.clock import MonotonicClock
from lampctl.core.controller import Refused, SessionController
from lampctl.devices.backstop import FirmwareBackstop
from tests.conftest import pin_history
from tests.procs import Simulator, wait_until

pytestmark = pytest.mark.integration
SLOW_S = 0.3


class SlowArmPort:
    """A serial port whose ARM frames take SLOW_S to get through, as a busy firmware's reply would."""

    def __init__(self, port):
        self._port = port

    def write(self, data):
        if b" ARM " in data:
            time.sleep(SLOW_S)
        return self._port.write(data)

    def __getattr__(self, name):
        return getattr(self._port, name)

    def __setattr__(self, name, value):
        if name == "_port":
            object.__setattr__(self, name, value)
        else:
            setattr(self._port, name, value)


@pytest.fixture
def slow_rig(cfg, relays, usage_log):
    sim = Simulator(lamps=2, watchdog_s=1.0)
    link = FirmwareLink(
        f"socket://127.0.0.1:{sim.port}",
        2,
        watchdog_s=1.0,
        heartbeat_s=0.2,
        reply_timeout_s=1.0,
        serial_for_url=lambda url, **kw: SlowArmPort(serial.serial_for_url(url, **kw)),
    )
    backstop = FirmwareBackstop(link, grace_s=0.1)
    ctl = SessionController(cfg.lamps, relays, MonotonicClock(), usage_log, backstop=backstop)
    backstop.attach(ctl)
    assert backstop.start(10), link.reason
    yield sim, ctl
    backstop.close()
    sim.stop()


def test_s11_stop_during_slow_arm_cancels_start_end_to_end(slow_rig, factory, usage_log):
    sim, ctl = slow_rig
    outcome: list = []

    def start():
        try:
            outcome.append(ctl.start("room1", 600, "ann"))
        except Refused as exc:
            outcome.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    wait_until(lambda: ctl._by_id["room1"].starting, 5, "the start in flight", step=0.002)
    pressed = time.monotonic()
    view = ctl.stop("room1", "bob")
    answered = time.monotonic() - pressed
    starter.join(10)
    assert view.state == "off" and answered < 0.1
    assert isinstance(outcome[0], Refused) and outcome[0].code == "cancelled"
    assert pin_history(factory, 17) == [False]  # the Pi's relay never closed
    armed = sim.wait_line(5, lamp=0, why="armed")
    sim.wait_line(5, after=armed, lamp=0, on=False, why="off")  # the firmware's last word is OFF
    usage_log.flush(5)
    assert usage_log.sessions() == []
