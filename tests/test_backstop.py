"""The firmware backstop adapter: command order, refusals mapped to 409/503, link loss latches running lamps."""

from __future__ import annotations

import threading

import pytest

from firmware_bridge.bridge import FirmwareError, FirmwareTimeout
from lampctl.core.controller import Refused, SessionController
from lampctl.devices.backstop import FirmwareBackstop
from tests.conftest import pin_history


class FakeLink:
    reply_timeout_s = 0.05

    def __init__(self):
        self.up = True
        self.last_heard = None
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
    assert any(
        e["why"] == "firmware link lost: Port closed. No lamp was on: nothing latched." for e in usage_log.events()
    )


def outcome(ctl, usage_log, factory):
    """What a link loss left: lamp states, relay histories, latch records, the room1 session's end."""
    usage_log.flush(5)
    latches = [(e["lamp_id"], e["why"]) for e in usage_log.events() if e["to_state"] == "fault"]
    [session] = usage_log.sessions()
    return ([l.state for l in ctl.lamps()], pin_history(factory, 17), sorted(latches), session["end_reason"])


@pytest.mark.parametrize("first", ["scheduler", "link thread"])
def test_s6_link_lost_while_on_latches_once_whichever_thread_comes_first(rig, clock, factory, usage_log, first):
    # A freeze: the firmware last heard 0.5 s before room1's deadline; when the process runs
    # again the scheduler (deadline passed) and the link thread (silence) race for the lock.
    link, backstop, ctl = rig
    ctl.start("room1", 10, "ann")
    link.last_heard = clock.monotonic() + 9.5
    clock.advance(10.7)
    link.up = False
    steps = [ctl.tick, lambda: backstop._link_changed(False, "No reply for 1.2 s.")]
    for step in steps if first == "scheduler" else steps[::-1]:
        step()
    assert outcome(ctl, usage_log, factory) == (
        ["fault", "off"],
        [False, True, False],
        [("room1", "firmware link lost: No reply for 1.2 s.")],
        "completed",
    )


def test_s6_start_in_flight_when_the_link_is_lost_is_latched(rig, factory, usage_log):
    # The link thread tells the backstop before it wakes the ARM's caller (firmware_bridge/bridge.py
    # FirmwareLink._set_down), so the start is still "being started" when the latch looks.
    link, backstop, ctl = rig
    arming, answer = threading.Event(), threading.Event()

    def slow_arm(lamp, ms):
        arming.set()
        answer.wait(5)
        raise FirmwareTimeout("The firmware link went down before ARM was answered.")

    link.arm = slow_arm
    refused = []
    starter = threading.Thread(target=lambda: refused.append(pytest.raises(Refused, ctl.start, "room1", 60, "ann")))
    starter.start()
    assert arming.wait(5)
    link.up = False
    backstop._link_changed(False, "Lost the port.")
    answer.set()
    starter.join(5)
    assert refused and [l.state for l in ctl.lamps()] == ["fault", "off"]
    assert pin_history(factory, 17) == [False]


def test_s6_link_lost_latches_nothing_and_says_so_when_nothing_was_on(rig, clock, usage_log, caplog):
    link, backstop, ctl = rig
    ctl.start("room1", 10, "ann")
    clock.advance(11)
    ctl.tick()  # ended well before the firmware was last heard
    link.last_heard = clock.monotonic()
    clock.advance(1)
    link.up = False
    with caplog.at_level("WARNING"):
        backstop._link_changed(False, "Port closed.")
    assert [l.state for l in ctl.lamps()] == ["off", "off"]
    assert "fault latched" not in caplog.text and "no lamp was on, nothing latched" in caplog.text


def test_s6_second_loss_latches_nothing_more_and_the_log_says_so(rig, clock, usage_log, caplog):
    link, backstop, ctl = rig
    ctl.estop("ann")  # every lamp latched already
    caplog.clear()
    link.up = False
    with caplog.at_level("WARNING"):
        assert ctl.fault("firmware link lost: again", running_only=True) == []
        assert ctl.fault("relay stuck", "room1") == []
    assert "fault latched" not in caplog.text
    assert "relay stuck: nothing latched (already latched: room1)" in caplog.text
    assert "firmware link lost: again: nothing latched (no lamp concerned)" in caplog.text
