"""The firmware backstop adapter: command order, refusals mapped to 409/503, link loss latches running lamps."""
from __future__ import annotations

import threading

import pytest

from firmware_bridge.bridge import FirmwareError, FirmwareTimeout
from lampctl.backstop import FirmwareBackstop
from lampctl.controller import Refused, SessionController
from tests.conftest import pin_history


class FakeLink:
    reply_timeout_s = 0.05

    def __init__(self):
        self.up = True
        self.wire: list = []
        self.fail_next: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()

    def start(self):
        pass

    def wait_up(self, timeout):
        return self.up

    def arm(self, lamp, ms):
        if self.fail_next:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.wire.append(("ARM", lamp, ms))

    def off(self, lamp):
        self.gate.wait(5)
        self.wire.append(("OFF", lamp))

    def close(self):
        pass

    def silent_cut_at(self, since):
        return None  # the host never fell silent here


@pytest.fixture
def rig(cfg, relays, clock, usage_log):
    link = FakeLink()
    backstop = FirmwareBackstop(link, grace_s=0.1, usage_log=usage_log, clock=clock.monotonic)
    ctl = SessionController(cfg.lamps, relays, clock, usage_log, backstop=backstop)
    backstop.attach(ctl)
    backstop.start(0)
    yield link, backstop, ctl
    link.gate.set()
    backstop.close()


def test_s7_off_of_last_session_reaches_firmware_before_next_arm(rig):
    link, backstop, ctl = rig
    ctl.start("room1", 60, "ann")
    link.gate.clear()  # the OFF is slow on the wire
    ctl.stop("room1", "ann")
    starter = threading.Thread(target=ctl.start, args=("room1", 60, "ann"))
    starter.start()
    link.gate.set()
    starter.join(5)
    assert link.wire == [("ARM", 0, 66100), ("OFF", 0), ("ARM", 0, 66100)]


def test_s7_firmware_refusal_is_409_and_timeout_503_relay_stays_off(rig, factory):
    link, backstop, ctl = rig
    link.fail_next = FirmwareError("The firmware refused ARM: bad lamp.")
    with pytest.raises(Refused) as exc:
        ctl.start("room1", 60, "ann")
    assert exc.value.code == "firmware-refused"
    assert str(exc.value).startswith("Room 1 was not started: the safety microcontroller refused it")
    link.fail_next = FirmwareTimeout("No reply within 0.5 s.")
    with pytest.raises(Refused) as exc:
        ctl.start("room1", 60, "ann")
    assert exc.value.code == "firmware-unavailable"
    assert pin_history(factory, 17) == [False]
    assert ctl.lamp("room1").state == "off"


def test_s6_link_lost_latches_only_running_lamps_and_blocks_reset(rig, factory, usage_log):
    link, backstop, ctl = rig
    ctl.start("room1", 600, "ann")
    link.up = False
    backstop._link_changed(False, "No heartbeat reply for 1.5 s.")
    assert [l.state for l in ctl.lamps()] == ["fault", "off"]
    assert pin_history(factory, 17) == [False, True, False]
    with pytest.raises(Refused, match="firmware link is still down"):
        ctl.reset_fault("room1", "admin")
    link.up = True
    backstop._link_changed(True, "Firmware 1.0.0 is up.")
    assert ctl.reset_fault("room1", "admin").state == "off"
    backstop._link_changed(False, "Port closed.")  # nothing on: logged, nothing latched
    assert [l.state for l in ctl.lamps()] == ["off", "off"]
    usage_log.flush(5)
    assert any(e["why"] == "firmware link lost: Port closed." for e in usage_log.events())
