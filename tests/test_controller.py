"""The lamp state machine on a fake clock and mock pins: S2, S3, S5, S6, S8 and thread safety."""

from __future__ import annotations

import threading

import pytest

from lampctl.core.clock import MonotonicClock
from lampctl.core.controller import BadDuration, Refused, SessionController, Unavailable
from lampctl.core.errors import BadDuration as DurationRefused
from lampctl.core.errors import check_duration
from lampctl.core.safety import s3_left_s
from tests.conftest import pin_history

ROOM1, ROOM2 = 17, 18  # room2 is active-low: ON drives the pin low


def run_for(controller, clock, seconds, step=0.1):
    """Tick the controller as its scheduler would while fake time passes."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        controller.tick()


def sessions(usage_log):
    usage_log.flush(5)
    return usage_log.sessions()


def test_s2_session_ends_exactly_at_deadline(controller, clock, factory, usage_log):
    sid, view = controller.start("room1", 20 * 60, "ann")
    assert view.state == "on" and view.relay_on and view.remaining_s == 1200
    clock.advance(1199.999)
    assert controller.tick() == pytest.approx(clock.monotonic() + 0.001)
    assert controller.lamp("room1").state == "on"
    clock.advance(0.001)
    controller.tick()
    view = controller.lamp("room1")
    assert view.state == "off" and view.relay_on is False and view.session_id is None
    assert pin_history(factory, ROOM1) == [False, True, False]
    [row] = sessions(usage_log)
    assert row["id"] == sid and row["end_reason"] == "completed" and row["actual_s"] == 1200
    assert row["started_at"] == "2026-01-05T09:00:00.000Z" and row["ended_at"] == "2026-01-05T09:20:00.000Z"


def test_s2_sixty_minute_session_and_active_low_relay(controller, clock, factory, usage_log, cfg):
    controller.start("room1", 3600, "ann")
    controller.start("room2", 30 * 60, "ann")
    # Active-low board: idle high, on low, off high again.
    assert pin_history(factory, ROOM2)[1:] == [True, False]
    clock.advance(30 * 60)
    controller.tick()
    assert pin_history(factory, ROOM2)[1:] == [True, False, True]
    assert controller.lamp("room1").remaining_s == 1800
    clock.advance(1800)
    assert controller.tick() is None or controller.lamp("room1").state == "off"
    assert pin_history(factory, ROOM1) == [False, True, False]
    assert [r["actual_s"] for r in sessions(usage_log)] == [3600, 1800]


def test_s2_lamp_never_on_outside_a_session(controller, clock, factory):
    for _ in range(3):
        controller.start("room1", 60, "ann")
        clock.advance(30)
        controller.stop("room1", "ann")
        clock.advance(100)
        controller.tick()
    assert pin_history(factory, ROOM1) == [False, True, False, True, False, True, False]


def test_s3_extensions_up_to_max_then_refused(controller, clock, usage_log):
    controller.start("room1", 50 * 60, "ann")
    clock.advance(600)
    assert controller.extend("room1", 300, "ann").remaining_s == 45 * 60
    view = controller.extend("room1", 300, "ann")  # exactly 60 min in all
    assert view.planned_s == 3600 and view.remaining_s == 50 * 60
    with pytest.raises(Refused) as exc:
        controller.extend("room1", 300, "ann")
    assert exc.value.code == "over-limit"
    assert "limit of 60 min" in str(exc.value)
    with pytest.raises(Refused):
        controller.extend("room1", 0.5, "ann")
    clock.advance(50 * 60)
    controller.tick()
    [row] = sessions(usage_log)
    assert row["planned_s"] == 3600 and row["actual_s"] == 3600 and row["end_reason"] == "completed"


def test_s3_start_longer_than_max_is_refused_and_relay_untouched(controller, factory):
    with pytest.raises(BadDuration) as exc:
        controller.start("room2", 30 * 60 + 1, "ann")
    assert exc.value.code == "too-long"
    for bad in (0, -5, float("nan"), float("inf"), True, "10"):
        with pytest.raises(BadDuration):
            controller.start("room1", bad, "ann")
    assert pin_history(factory, ROOM1) == [False]
    assert pin_history(factory, ROOM2)[1:] == [True]


# (case, time the patient has had, the lamp's limit, what is left), all in seconds
S3_BUDGETS = [
    ("nothing used: the whole limit", 0, 1800, 1800),
    ("part used", 1200, 1800, 600),
    ("a fraction of a second used", 0.25, 60, 59.75),
    ("the whole limit used", 1800, 1800, 0),
    ("more used than the limit, as a session carried over past it counts: none, never negative", 1830.5, 1800, 0),
]


@pytest.mark.parametrize(("case", "used_s", "max_s", "left_s"), S3_BUDGETS, ids=[c[0] for c in S3_BUDGETS])
def test_s3_budget_is_what_is_left_of_the_limit_never_below_zero(case, used_s, max_s, left_s):
    assert s3_left_s(used_s, max_s) == left_s


def test_s3_view_offers_plus_five_only_while_five_minutes_still_fit(controller):
    _, view = controller.start("room2", 20 * 60, "ann")  # room2: max 30 min
    assert (view.extend_ok, view.extend_left_s) == (True, 600)
    view = controller.extend("room2", 300, "ann")
    assert (view.extend_ok, view.extend_left_s) == (True, 300)  # exactly five minutes left: it fits
    view = controller.extend("room2", 1, "ann")
    assert (view.extend_ok, view.extend_left_s) == (False, 299)
    assert controller.lamp("room1").extend_ok is False  # off: nothing to extend


def test_s18_view_says_what_a_start_for_the_same_patient_may_run(controller, clock):
    assert controller.lamp("room1").same_patient_s(600) is None  # no rest window yet: every start is fresh
    controller.start("room1", 50 * 60, "ann")  # room1: max 60 min, rest window 300 s
    clock.advance(45 * 60)
    view = controller.stop("room1", "ann")
    assert view.same_patient_s(10 * 60) == 10 * 60  # fits: all of it
    assert view.same_patient_s(20 * 60) == 15 * 60  # longer than what is left: what is left


# (case, value, unit, limit in seconds or None, the seconds it is, or the code and the end of its sentence)
DURATIONS = [
    ("whole minutes", 10, "minutes", None, 600.0),
    ("a fraction of a second", 0.5, "seconds", None, 0.5),
    ("exactly at the limit", 1800, "seconds", 1800, 1800.0),
    ("a microsecond past the limit: float slack", 1800.000001, "seconds", 1800, 1800.000001),
    ("zero", 0, "seconds", None, ("bad-duration", "greater than 0, got 0.")),
    ("negative minutes", -5.0, "minutes", None, ("bad-duration", "greater than 0, got -5.")),
    ("a boolean", True, "minutes", None, ("bad-duration", "greater than 0, got True.")),
    ("a string of digits", "10", "minutes", None, ("bad-duration", "greater than 0, got '10'.")),
    ("not a number", float("nan"), "seconds", None, ("bad-duration", "greater than 0, got nan.")),
    ("infinity", float("inf"), "seconds", None, ("bad-duration", "greater than 0, got inf.")),
    (
        "an integer of 400 digits",
        int("9" * 400),
        "minutes",
        None,
        ("too-long", "greater than 0, got a number of 400 digits, far longer than any limit."),
    ),
    ("finite, but not in seconds", 1e308, "minutes", None, ("too-long", "got 1e+308, far longer than any limit.")),
    ("past the limit, shown as a duration", 1801, "seconds", 1800, ("too-long", "at most 30 min, got 30 min 1 s.")),
    ("days past their limit", 36501, "days", 36500 * 86400, ("too-long", "at most 30 min, got 36501.")),
]


@pytest.mark.parametrize(("case", "value", "unit", "most_s", "expected"), DURATIONS, ids=[c[0] for c in DURATIONS])
def test_duration_one_check_and_one_sentence_naming_value_and_range(case, value, unit, most_s, expected):
    most = (most_s, "30 min") if most_s is not None else None
    if not isinstance(expected, tuple):
        assert check_duration(value, "It", unit=unit, most=most) == expected
        return
    with pytest.raises(DurationRefused) as exc:
        check_duration(value, "It", unit=unit, most=most)
    code, end = expected
    span = f"It must be a number of {unit} greater than 0" + (" and at most 30 min" if most else "")
    assert exc.value.code == code and str(exc.value).startswith(span + ", got ") and str(exc.value).endswith(end)


def test_controller_refuses_double_start_and_stop_when_off(controller):
    controller.start("room1", 60, "ann")
    with pytest.raises(Refused) as exc:
        controller.start("room1", 60, "bob")
    assert exc.value.code == "already-on"
    assert controller.stop("room2", "ann").result == "already-off"  # a Stop is never refused
    with pytest.raises(Refused) as exc:
        controller.extend("room2", 60, "ann")
    assert exc.value.code == "not-running"
    with pytest.raises(Refused) as exc:
        controller.lamp("room9")
    assert exc.value.code == "unknown-lamp"


def test_s5_stop_all_turns_every_lamp_off_at_once(controller, factory, usage_log):
    controller.start("room1", 600, "ann")
    controller.start("room2", 600, "bob")
    views = controller.stop_all("ann")
    assert [v.state for v in views] == ["off", "cooldown"]  # room2 has a 60 s cooldown
    assert [v.relay_on for v in views] == [False, False]
    assert pin_history(factory, ROOM1) == [False, True, False]
    assert pin_history(factory, ROOM2)[1:] == [True, False, True]
    assert [r["end_reason"] for r in sessions(usage_log)] == ["stopped", "stopped"]
    usage_log.flush(5)
    assert any(e["why"] == "stop all" and e["who"] == "ann" for e in usage_log.events())


def test_s5_estop_ends_sessions_and_latches_until_reset(controller, factory, usage_log, clock):
    controller.start("room1", 600, "ann")
    factory.pin(27).drive_low()  # button to ground, pulled up: pressed
    assert [l.state for l in controller.lamps()] == ["fault", "fault"]
    assert pin_history(factory, ROOM1) == [False, True, False]
    assert [r["end_reason"] for r in sessions(usage_log)] == ["estop"]
    with pytest.raises(Refused) as exc:
        controller.start("room2", 60, "ann")
    assert exc.value.code == "fault"
    with pytest.raises(Refused) as exc:
        controller.reset_fault("room1", "admin")
    assert "still pressed" in str(exc.value)
    factory.pin(27).drive_high()
    assert controller.reset_fault("room1", "admin").state == "off"
    assert controller.lamp("room2").state == "fault"
    controller.start("room1", 60, "ann")
    assert pin_history(factory, ROOM1) == [False, True, False, True]
    usage_log.flush(5)
    whys = [e["why"] for e in usage_log.events()]
    assert any("E-stop pressed" in w for w in whys) and any("fault cleared" in w for w in whys)


def test_s6_stuck_relay_latches_fault(controller, factory, clock, usage_log):
    feedback = factory.pin(22)
    controller.start("room1", 600, "ann")
    feedback.drive_high()  # lamp powered
    clock.advance(1)
    controller.tick()
    assert controller.lamp("room1").state == "on"
    controller.stop("room1", "ann")
    # The contact welds: the lamp stays powered with the relay off.
    run_for(controller, clock, 0.4)
    assert controller.lamp("room1").state == "off"
    run_for(controller, clock, 0.2)
    view = controller.lamp("room1")
    assert view.state == "fault" and "stuck closed" in view.fault_reason
    assert controller.lamp("room2").state == "off"  # its relay is fine


def test_s6_lamp_not_powered_while_on_is_a_fault(controller, factory, clock, usage_log):
    controller.start("room1", 600, "ann")  # feedback stays low: no power reaches the lamp
    run_for(controller, clock, 0.4)
    assert controller.lamp("room1").state == "on"
    run_for(controller, clock, 0.2)
    assert controller.lamp("room1").state == "fault"
    assert pin_history(factory, ROOM1) == [False, True, False]
    assert [r["end_reason"] for r in sessions(usage_log)] == ["fault"]


def test_s6_fault_latches_all_lamps_and_needs_reset(controller, factory, usage_log):
    controller.start("room1", 600, "ann")
    controller.start("room2", 600, "ann")
    controller.fault("firmware link lost")
    assert [l.state for l in controller.lamps()] == ["fault", "fault"]
    assert pin_history(factory, ROOM1)[-1] is False and pin_history(factory, ROOM2)[-1] is True
    assert [r["end_reason"] for r in sessions(usage_log)] == ["fault", "fault"]
    blocked = ["link still down"]
    controller.add_reset_blocker(lambda: blocked[0] if blocked else None)
    with pytest.raises(Refused, match="link still down"):
        controller.reset_fault("room1", "admin")
    blocked.clear()
    assert controller.reset_fault("room1", "admin").state == "off"


def test_s8_cooldown_blocks_restart_until_passed(controller, clock):
    controller.start("room2", 60, "ann")
    clock.advance(60)
    controller.tick()
    assert controller.lamp("room2").state == "cooldown"
    assert controller.lamp("room2").cooldown_remaining_s == 60
    clock.advance(59.9)
    controller.tick()
    with pytest.raises(Refused) as exc:
        controller.start("room2", 60, "ann")
    assert exc.value.code == "cooldown" and "0.1 s" in str(exc.value)
    clock.advance(0.1)
    controller.tick()
    assert controller.lamp("room2").state == "off"
    controller.start("room2", 60, "ann")


def test_controller_two_simultaneous_starts_exactly_one_wins(controller, factory):
    for _ in range(30):
        barrier = threading.Barrier(2)
        results = []

        def attempt(user):
            barrier.wait()
            try:
                results.append(controller.start("room1", 60, user)[0])
            except Refused as exc:
                results.append(exc.code)

        threads = [threading.Thread(target=attempt, args=(u,)) for u in ("ann", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count("already-on") == 1
        assert sum(isinstance(r, int) for r in results) == 1
        controller.stop("room1", "ann")


class FakeBackstop:
    grace_s = 0.1

    def __init__(self, fail=False):
        self.fail = fail
        self.calls = []

    def arm(self, index, ms):
        self.calls.append(("arm", index, ms))
        if self.fail:
            raise TimeoutError("no reply within 0.5 s")

    def release(self, index):
        self.calls.append(("release", index))

    def cut_at(self, index, since):
        return None


def test_s7_start_arms_backstop_first_and_refusal_keeps_relay_off(cfg, relays, clock, usage_log, factory):
    backstop = FakeBackstop()
    ctl = SessionController(cfg.lamps, relays, clock, usage_log, backstop=backstop)
    ctl.start("room1", 600, "ann")
    assert backstop.calls == [("arm", 0, 660100)]
    clock.advance(60)
    ctl.extend("room1", 300, "ann")
    assert backstop.calls[-1] == ("arm", 0, 924100)  # (540 + 300) x 1.1 + 0.1 s
    ctl.stop("room1", "ann")
    assert backstop.calls[-1] == ("release", 0)
    backstop.fail = True
    with pytest.raises(Unavailable) as exc:
        ctl.start("room2", 60, "ann")
    assert "not started" in str(exc.value)
    assert pin_history(factory, ROOM2)[1:] == [True]
    assert ctl.lamp("room2").state == "off"


class HeldUpBackstop(FakeBackstop):
    """The ARM is confirmed, then the host is held up (frozen, starved) for `held_s` before its relay."""

    def __init__(self, clock, held_s, silence_cut=None):
        super().__init__()
        self.clock, self.held_s, self.silence_cut = clock, held_s, silence_cut

    def arm(self, index, ms):
        super().arm(index, ms)
        self.armed_at = self.clock.monotonic()
        self.clock.advance(self.held_s)

    def cut_at(self, index, since):
        return None if self.silence_cut is None else self.armed_at + self.silence_cut


@pytest.mark.parametrize(
    "held_s, silence_cut, why",
    [
        (0.431, None, "the firmware's own timer ran out (0.3 s x 1.1 + 0.1 s = 430 ms)"),
        (0.2, 0.15, "the host's silence let the firmware's watchdog cut"),
    ],
)
def test_s7_s12_start_refused_when_its_arm_ran_out_before_the_relay(
    cfg, relays, clock, usage_log, factory, held_s, silence_cut, why
):
    backstop = HeldUpBackstop(clock, held_s, silence_cut)
    ctl = SessionController(cfg.lamps, relays, clock, usage_log, backstop=backstop)
    with pytest.raises(Unavailable, match="firmware arm ran out"):
        ctl.start("room1", 0.3, "ann")
    assert pin_history(factory, ROOM1) == [False], why  # never on without the firmware armed
    assert backstop.calls == [("arm", 0, 430), ("release", 0)]  # S12: the last word is OFF
    assert ctl.lamp("room1").state == "off"


def test_s7_start_held_up_less_than_its_arm_goes_on(cfg, relays, clock, usage_log, factory):
    backstop = HeldUpBackstop(clock, 0.429, silence_cut=0.5)
    ctl = SessionController(cfg.lamps, relays, clock, usage_log, backstop=backstop)
    ctl.start("room1", 0.3, "ann")
    assert pin_history(factory, ROOM1) == [False, True]
    assert backstop.calls == [("arm", 0, 430)]


def test_s6_scheduler_death_latches_fault(cfg, relays, usage_log, factory):
    class ExplodingClock(MonotonicClock):
        armed = False

        def wait(self, condition, timeout):
            if self.armed:
                raise RuntimeError("boom")
            condition.wait(min(timeout or 0.01, 0.01))

    clock = ExplodingClock()
    ctl = SessionController(cfg.lamps, relays, clock, usage_log)
    ctl.start("room1", 600, "ann")
    died = threading.Event()
    original = threading.excepthook
    threading.excepthook = lambda args: died.set()
    try:
        thread = ctl.start_scheduler()
        clock.armed = True
        thread.join(5)
    finally:
        threading.excepthook = original
    assert died.is_set() and not ctl.scheduler_alive
    assert ctl.lamp("room1").state == "fault" and "scheduler died" in ctl.lamp("room1").fault_reason
    assert pin_history(factory, ROOM1) == [False, True, False]


def test_s2_real_scheduler_thread_cuts_at_deadline(cfg, relays, usage_log, factory):
    ctl = SessionController(cfg.lamps, relays, MonotonicClock(), usage_log)
    ctl.start_scheduler()
    try:
        ctl.start("room2", 0.2, "ann")
        done = threading.Event()
        for _ in range(100):
            if ctl.lamp("room2").state != "on":
                done.set()
                break
            done.wait(0.01)
        assert done.is_set()
        assert pin_history(factory, ROOM2)[1:] == [True, False, True]
    finally:
        ctl.stop_scheduler()
    [row] = sessions(usage_log)
    assert row["end_reason"] == "completed" and 0.2 <= row["actual_s"] < 0.3


def test_s1_shutdown_turns_relays_off_and_closes_session_interrupted(controller, factory, usage_log):
    controller.start("room1", 600, "ann")
    controller.shutdown("SIGTERM received")
    controller.shutdown("process exit")  # idempotent
    assert pin_history(factory, ROOM1) == [False, True, False]
    [row] = sessions(usage_log)
    assert row["end_reason"] == "interrupted"
    with pytest.raises(Refused, match="shutting down"):
        controller.start("room2", 60, "ann")
