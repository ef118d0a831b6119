"""A Stop always wins: relay first and unlocked (S10), cancels a start in flight (S11), the firmware's last word is OFF (S12)."""

from __future__ import annotations

import threading

import pytest

from lampctl.core.controller import Refused, SessionController, Unavailable
from lampctl.devices.backstop import FirmwareBackstop
from tests.conftest import pin_history
from tests.procs import wait_until

ROOM1, ROOM2 = 17, 18


class GatedBackstop:
    """A backstop whose ARM round trip waits on `gate`; it records a command when the firmware obeys it."""

    grace_s = 0.1

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.arming = threading.Event()
        self.wire: list = []
        self.fail: Exception | None = None

    def arm(self, index, ms):
        self.arming.set()
        assert self.gate.wait(10), "test gate never opened"
        if self.fail is not None:
            raise self.fail
        self.wire.append(("ARM", index))

    def release(self, index):
        self.wire.append(("OFF", index))

    def cut_at(self, index, since):
        return None


class Call(threading.Thread):
    """Run fn(*args) in a thread; .result holds its return value or the exception it raised."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__(daemon=True)
        self.fn, self.args, self.kwargs, self.result = fn, args, kwargs, None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except Exception as exc:  # handed to the test to assert on
            self.result = exc

    def outcome(self):
        self.join(10)
        assert not self.is_alive(), "call did not return"
        return self.result


@pytest.fixture
def gated(cfg, relays, clock, usage_log):
    backstop = GatedBackstop()
    return backstop, SessionController(cfg.lamps, relays, clock, usage_log, backstop=backstop)


def start_in_flight(backstop, ctl, lamp="room1"):
    backstop.gate.clear()
    backstop.arming.clear()
    call = Call(ctl.start, lamp, 600, "ann")
    assert backstop.arming.wait(10)
    return call


def test_s11_stop_cancels_start_in_flight(gated, factory, usage_log):
    backstop, ctl = gated
    starter = start_in_flight(backstop, ctl)
    assert ctl.stop("room1", "bob").state == "off"
    backstop.gate.set()
    result = starter.outcome()
    assert isinstance(result, Refused) and result.code == "cancelled"
    assert pin_history(factory, ROOM1) == [False]
    assert backstop.wire == [("ARM", 0), ("OFF", 0)]
    usage_log.flush(5)
    assert usage_log.sessions() == []
    assert any(e["why"] == "start cancelled by stop" and e["who"] == "bob" for e in usage_log.events())


def test_s11_stop_all_cancels_start_in_flight(gated, factory):
    backstop, ctl = gated
    starter = start_in_flight(backstop, ctl, "room2")
    ctl.stop_all("bob")
    backstop.gate.set()
    assert starter.outcome().code == "cancelled"
    assert pin_history(factory, ROOM2)[1:] == [True]  # active-low: idle high, never driven low
    assert backstop.wire[-1] == ("OFF", 1)


@pytest.mark.parametrize("action", ["stop", "stop_all", "estop", "fault"])
def test_s10_stop_turns_relay_off_before_taking_the_lock(controller, factory, action):
    controller.start("room1", 600, "ann")
    held, done = threading.Event(), threading.Event()

    def hold_lock():  # as a thread stuck inside the controller would
        with controller._cond:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold_lock, daemon=True)
    holder.start()
    assert held.wait(5)
    calls = {
        "stop": (controller.stop, "room1", "ann"),
        "stop_all": (controller.stop_all, "ann"),
        "estop": (controller.estop, "ann"),
        "fault": (controller.fault, "link lost"),
    }
    fn, *args = calls[action]
    stopper = Call(fn, *args)
    try:
        wait_until(lambda: pin_history(factory, ROOM1)[-1] is False, 5, "relay off while the lock is held")
        assert stopper.is_alive()  # the bookkeeping waits for the lock, the relay did not
    finally:
        done.set()
    assert not isinstance(stopper.outcome(), Exception)
    assert pin_history(factory, ROOM1) == [False, True, False]
    assert controller.lamp("room1").state in ("off", "fault")


def test_s12_extend_whose_session_ended_during_arm_releases(gated, clock):
    backstop, ctl = gated
    ctl.start("room1", 600, "ann")
    backstop.gate.clear()
    backstop.arming.clear()
    extender = Call(ctl.extend, "room1", 300, "ann")
    assert backstop.arming.wait(10)
    ctl.stop("room1", "bob")
    backstop.gate.set()
    result = extender.outcome()
    assert isinstance(result, Refused) and result.code == "not-running"
    # The extension's ARM reached the firmware after the stop's OFF: another OFF must follow it.
    assert backstop.wire == [("ARM", 0), ("OFF", 0), ("ARM", 0), ("OFF", 0)]


def test_s12_start_waits_while_an_extension_settles(gated):
    backstop, ctl = gated
    ctl.start("room1", 600, "ann")
    backstop.gate.clear()
    backstop.arming.clear()
    extender = Call(ctl.extend, "room1", 300, "ann")
    assert backstop.arming.wait(10)
    ctl.stop("room1", "bob")
    with pytest.raises(Refused) as exc:  # else its ARM could land before the extension's OFF
        ctl.start("room1", 60, "bob")
    assert exc.value.code == "busy"
    backstop.gate.set()
    extender.outcome()
    ctl.start("room1", 60, "bob")
    assert backstop.wire[-1] == ("ARM", 0)


class FailingRelays:
    """Relays whose ON fails (a dead driver), delegating everything else."""

    def __init__(self, relays):
        self._relays = relays

    def set(self, index, on):
        if on:
            raise OSError("GPIO write failed")
        self._relays.set(index, on)

    def __getattr__(self, name):
        return getattr(self._relays, name)


def test_s12_relay_failure_after_arming_releases(cfg, relays, clock, usage_log, factory):
    backstop = GatedBackstop()
    ctl = SessionController(cfg.lamps, FailingRelays(relays), clock, usage_log, backstop=backstop)
    with pytest.raises(Refused) as exc:
        ctl.start("room1", 600, "ann")
    assert exc.value.code == "hardware"
    assert backstop.wire == [("ARM", 0), ("OFF", 0)]
    assert ctl.lamp("room1").state == "fault"


def test_s12_refused_arm_still_ends_with_off(gated, factory):
    backstop, ctl = gated
    backstop.fail = TimeoutError("no reply")
    with pytest.raises(Unavailable):
        ctl.start("room1", 600, "ann")
    assert backstop.wire == [("OFF", 0)]
    assert pin_history(factory, ROOM1) == [False]


class SlowLink:
    """A FirmwareLink stand-in whose ARM reply is held until `gate` opens; records what the firmware obeyed."""

    reply_timeout_s = 0.05
    up = True

    def __init__(self):
        self.gate = threading.Event()
        self.wire: list = []

    def start(self):
        pass

    def wait_up(self, timeout):
        return True

    def arm(self, lamp, ms):
        self.gate.wait(10)
        self.wire.append(("ARM", lamp))

    def off(self, lamp):
        self.wire.append(("OFF", lamp))

    def silent_cut_at(self, since):
        return None

    def close(self):
        pass


def test_s12_arm_reply_timeout_is_followed_by_off(cfg, relays, clock, usage_log, factory):
    link = SlowLink()
    backstop = FirmwareBackstop(link, grace_s=0.1, arm_wait_s=0.05)
    ctl = SessionController(cfg.lamps, relays, clock, usage_log, backstop=backstop)
    backstop.attach(ctl)
    backstop.start(0)
    try:
        with pytest.raises(Unavailable):
            ctl.start("room1", 600, "ann")
        link.gate.set()  # the ARM the caller gave up on still reaches the firmware...
        wait_until(lambda: len(link.wire) == 2, 5, "the queued commands")
        assert link.wire == [("ARM", 0), ("OFF", 0)]  # ...and OFF follows it
        assert pin_history(factory, ROOM1) == [False]
    finally:
        link.gate.set()
        backstop.close()


def test_s12_arm_given_up_while_still_queued_is_never_sent(cfg, relays, clock, usage_log, factory):
    link = SlowLink()
    backstop = FirmwareBackstop(link, grace_s=0.1, arm_wait_s=0.05)
    ctl = SessionController(cfg.lamps, relays, clock, usage_log, backstop=backstop)
    backstop.start(0)
    try:
        for lamp in ("room1", "room2"):  # room2's ARM waits behind room1's slow one, then is given up
            with pytest.raises(Unavailable):
                ctl.start(lamp, 600, "ann")
        link.gate.set()
        wait_until(lambda: len(link.wire) >= 3, 5, "the queued commands")
        assert link.wire == [("ARM", 0), ("OFF", 0), ("OFF", 1)]
        assert [l.relay_on for l in ctl.lamps()] == [False, False]
    finally:
        link.gate.set()
        backstop.close()


# ---- S19: a Stop beats every start or extension that arrived before it -----------------------
def test_s19_start_that_arrived_before_a_stop_never_turns_the_lamp_on(controller, clock, factory, usage_log):
    arrived = clock.monotonic()
    controller.note_arrival("room1", arrived)  # queued behind busy workers
    clock.advance(0.05)
    stopped = controller.stop("room1", "bob", arrived=clock.monotonic())
    assert (stopped.result, stopped.state, stopped.relay_on) == ("cancelled-start", "off", False)
    clock.advance(0.5)  # the start reaches the controller after the Stop was answered
    with pytest.raises(Refused) as exc:
        controller.start("room1", 600, "ann", arrived=arrived)
    assert exc.value.code == "cancelled"
    assert "a Stop of it arrived 0.05 s after this request" in str(exc.value)
    assert pin_history(factory, ROOM1) == [False]
    usage_log.flush(5)
    assert usage_log.sessions() == []
    assert [e["why"] for e in usage_log.events() if e["lamp_id"] == "room1"] == ["start cancelled by stop"]
    # A start that arrives after the Stop is obeyed.
    controller.start("room1", 600, "ann", arrived=clock.monotonic())
    assert pin_history(factory, ROOM1) == [False, True]


def test_s19_extension_that_arrived_before_a_stop_is_refused_even_on_a_later_session(controller, clock, factory):
    controller.start("room1", 600, "ann")
    extend_arrived = clock.monotonic()
    clock.advance(1)
    assert controller.stop("room1", "bob", arrived=clock.monotonic()).result == "ended"
    clock.advance(1)
    controller.start("room1", 600, "cy")  # a new session, started after the Stop
    with pytest.raises(Refused) as exc:
        controller.extend("room1", 300, "ann", arrived=extend_arrived)
    assert exc.value.code == "cancelled"
    assert controller.lamp("room1").planned_s == 600
    assert pin_history(factory, ROOM1) == [False, True, False, True]


def test_s19_stop_all_and_estop_cancel_what_arrived_before_them_on_every_lamp(controller, clock, factory):
    early = clock.monotonic()
    controller.start("room1", 600, "ann")
    controller.note_arrival("room2", early)
    clock.advance(0.1)
    views = controller.stop_all("bob", arrived=clock.monotonic())
    assert {v.id: v.result for v in views} == {"room1": "ended", "room2": "cancelled-start"}
    for lamp in ("room1", "room2"):
        with pytest.raises(Refused) as exc:
            controller.start(lamp, 60, "ann", arrived=early)
        assert exc.value.code == "cancelled"
    controller.drop_arrival("room2", early)
    clock.advance(0.1)
    before_estop = clock.monotonic()
    clock.advance(0.1)
    views = controller.estop("ann", "emergency stop by ann", arrived=clock.monotonic())
    assert {v.id: v.result for v in views} == {"room1": "already-off", "room2": "already-off"}
    controller.reset_fault("room1", "admin")
    with pytest.raises(Refused) as exc:
        controller.start("room1", 60, "ann", arrived=before_estop)
    assert exc.value.code == "cancelled"
    assert pin_history(factory, ROOM1) == [False, True, False]
    assert pin_history(factory, ROOM2) == [False, True]  # active low: claimed off, never switched on


def test_s19_an_older_stop_reaching_the_controller_late_never_moves_the_mark_back(controller, clock):
    start_arrived = clock.monotonic() + 0.2
    clock.advance(0.3)
    controller.stop("room1", "bob", arrived=clock.monotonic())  # arrived at +0.3
    controller.stop("room1", "cy", arrived=clock.monotonic() - 0.3)  # an older Stop, served late
    with pytest.raises(Refused):
        controller.start("room1", 60, "ann", arrived=start_arrived)


def test_s19_stop_says_what_it_did(gated, clock, usage_log):
    backstop, ctl = gated
    assert ctl.stop("room1", "bob").result == "already-off"
    starter = start_in_flight(backstop, ctl)
    assert ctl.stop("room1", "bob").result == "cancelled-start"
    backstop.gate.set()
    assert isinstance(starter.outcome(), Refused)
    ctl.start("room1", 600, "ann")
    assert ctl.stop("room1", "bob").result == "ended"
    usage_log.flush(5)
    assert [e["why"] for e in usage_log.events() if e["lamp_id"] == "room1" and e["who"] == "bob"][::-1] == [
        "stop: the lamp was already off",
        "start cancelled by stop",
        "stopped: stopped by user",
    ]
