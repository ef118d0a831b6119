"""Behaviour no other test pinned down: each test here fails on a mutant that left the suite green (docs/mutation.md)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import ExitStack

import pytest

from firmware_bridge import protocol
from lampctl import config as config_mod
from lampctl import service
from lampctl.core.clock import FakeClock
from lampctl.core.controller import Refused, SessionController, Unavailable
from lampctl.core.errors import fmt_s
from lampctl.core.safety import s3_allows, s7_backstop_ms
from lampctl.devices.hardware import RelayBank
from lampctl.storage.db import connect
from lampctl.storage.store import UsageLog
from tests.conftest import BASE_CONFIG, pin_history, write_config
from tests.procs import wait_until
from tests.test_controller_records import CutBackstop
from tests.test_controller_stops import gated, start_in_flight  # noqa: F401  (gated: a fixture)
from tests.test_fw_firmware import Rig
from tests.test_web_panel import web  # noqa: F401  (fixture: a practitioner logged in to the panel)

BANK_INDICATOR = 5


def test_service_lights_the_bank_indicator_named_in_the_config(tmp_path):
    """safety.indicator_pin reaches the relay bank: lit while a relay is on, dark after."""
    text = BASE_CONFIG.replace("[safety]\n", f"[safety]\nindicator_pin = {BANK_INDICATOR}\n")
    svc = service.Service(str(write_config(tmp_path, text)), simulate=True)
    svc.cfg = config_mod.load(svc.config_path)
    with ExitStack() as stack:
        svc._open_relays(stack, time.monotonic())
        factory = svc.relays._factory
        svc.relays.set(0, True)
        svc.relays.all_off()
        assert pin_history(factory, BANK_INDICATOR) == [False, True, False]


def _broken_disk(path):
    raise sqlite3.OperationalError("database or disk is full")


def test_panel_log_banner_while_the_usage_log_cannot_write(web, services, tmp_path):  # noqa: F811
    failing = UsageLog(tmp_path / "failing.db")
    failing._connect = _broken_disk
    failing.start()
    services.usage_log = failing
    try:
        failing.event(None, None, None, "system", "waits for the disk")
        wait_until(lambda: failing.write_errors, 10, "a write error")
        html = web.get("/panel/").data.decode()
        assert (
            'class="banner banner-log" role="alert" data-short="Usage log not saving (1 waiting). Tell an admin.">'
            "The usage log cannot be saved right now (1 records waiting); lamps still work. Tell an admin."
        ) in html
        assert [b["kind"] for b in web.get("/panel/state.json").get_json()["banners"]] == ["log"]
        failing._connect = connect
        assert failing.flush(10)
        assert web.get("/panel/state.json").get_json()["banners"] == []
        assert "banner-log" not in web.get("/panel/").data.decode()
    finally:
        failing.close()


# ---- controller ------------------------------------------------------------------------
@pytest.mark.parametrize("earlier,stop", [(1, "stop"), (2, "stop_all")])
def test_s11_a_stop_cancels_a_start_in_flight_whatever_stops_came_before(gated, factory, earlier, stop):
    """The epoch a Stop bumps must differ from every earlier one, not merely from 0."""
    backstop, ctl = gated
    for _ in range(earlier):
        ctl.stop_all("bob")
    starter = start_in_flight(backstop, ctl)
    if stop == "stop":
        ctl.stop("room1", "bob")
    else:
        ctl.stop_all("bob")
    backstop.gate.set()
    assert starter.outcome().code == "cancelled"
    assert pin_history(factory, 17) == [False]


def test_s12_extension_the_firmware_refuses_is_refused_and_leaves_the_plan(gated):
    backstop, ctl = gated
    ctl.start("room1", 600, "ann")
    backstop.fail = TimeoutError("no reply")
    with pytest.raises(Unavailable) as exc:
        ctl.extend("room1", 60, "ann")
    assert exc.value.code == "firmware-unavailable"
    assert str(exc.value) == ("Room 1 was not extended: the safety microcontroller did not accept it (no reply).")
    assert ctl.lamp("room1").planned_s == 600


def test_s3_extension_refusal_says_what_is_left_of_the_patients_budget(controller, clock):
    controller.start("room1", 20 * 60, "ann")
    clock.advance(20 * 60)
    controller.tick()
    controller.start("room1", 20 * 60, "ann")  # the same patient: 20 min already used
    with pytest.raises(Refused, match=r"limit of 60 min per patient \(20 min left to add\)\.$"):
        controller.extend("room1", 30 * 60, "ann")
    controller.extend("room1", 20 * 60, "ann")
    with pytest.raises(Refused, match=r"\(0 s left to add\)\.$"):
        controller.extend("room1", 1, "ann")


def _audit(usage_log) -> list[tuple]:
    assert usage_log.flush(5)
    return [
        (e["lamp_id"], e["from_state"], e["to_state"], e["who"], e["why"])
        for e in reversed(usage_log.events())
        if e["lamp_id"]
    ]


def test_s13_every_ending_is_recorded_with_who_and_why(controller, clock, usage_log, factory):
    """A record without its who is refused by the database (NOT NULL) and lost: each path must name one."""
    controller.start("room2", 60, "ann")
    controller.stop("room2", "bob")
    clock.advance(60)
    controller.tick()
    controller.start("room1", 60, "ann")
    clock.advance(60)
    controller.tick()
    controller.start("room1", 60, "ann")  # the same patient: continues session 2
    assert controller.lamp("room1").user == "ann"
    controller.extend("room1", 30, "ann")
    controller.stop_all("carol", "stop all (panel)")
    controller.start("room1", 60, "ann", new_patient=True)
    controller.estop("dan", "emergency stop by dan")
    controller.reset_fault("room1", "admin")
    controller.reset_fault("room2", "admin")
    controller.start("room1", 60, "ann", new_patient=True)
    controller.fault("relay of Room 2 is stuck closed", "room2")
    controller.reset_fault("room2", "admin")
    controller.start("room1", 60, "ann", new_patient=True)
    controller.shutdown("service stopping")
    assert _audit(usage_log) == [
        ("room2", "off", "on", "ann", "started for 1 min"),
        ("room2", "on", "cooldown", "bob", "stopped: stopped by user"),
        ("room2", "cooldown", "off", "system", "cooldown over"),
        ("room1", "off", "on", "ann", "started for 1 min"),
        ("room1", "on", "off", "system", "completed: time up"),
        ("room1", "off", "on", "ann", "started for 1 min, continuing session 2"),
        ("room1", "on", "on", "ann", "extended by 30 s"),
        ("room1", "on", "off", "carol", "stopped: stop all (panel)"),
        ("room1", "off", "on", "ann", "started for 1 min, declared a new patient by ann inside the rest window"),
        ("room1", "on", "off", "dan", "estop: emergency stop by dan"),
        ("room1", "off", "fault", "dan", "emergency stop by dan"),
        ("room2", "off", "fault", "dan", "emergency stop by dan"),
        ("room1", "fault", "off", "admin", "fault cleared (emergency stop by dan)"),
        ("room2", "fault", "off", "admin", "fault cleared (emergency stop by dan)"),
        ("room1", "off", "on", "ann", "started for 1 min, declared a new patient by ann inside the rest window"),
        ("room1", "on", "off", "system", "fault: relay of Room 2 is stuck closed"),
        ("room2", "off", "fault", "system", "relay of Room 2 is stuck closed"),
        ("room2", "fault", "off", "admin", "fault cleared (relay of Room 2 is stuck closed)"),
        ("room1", "off", "on", "ann", "started for 1 min, declared a new patient by ann inside the rest window"),
        ("room1", "on", "off", "system", "interrupted: service stopping"),
    ]


class RecordingClock(FakeClock):
    """A FakeClock that remembers how long each scheduler wait was asked to last."""

    def __init__(self):
        super().__init__()
        self.waits: list[float] = []

    def wait(self, condition, timeout):
        self.waits.append(timeout)
        super().wait(condition, timeout)


@pytest.fixture
def plain(tmp_path, factory, usage_log):
    """A controller whose lamps have no feedback input, on a clock that records the scheduler's waits."""
    cfg = config_mod.load(write_config(tmp_path, BASE_CONFIG.replace("feedback_pin = 22\n", ""), "plain.toml"))
    relays = RelayBank(cfg.lamps, factory)
    clock = RecordingClock()
    yield SessionController(cfg.lamps, relays, clock, usage_log), clock
    relays.close()


def test_s2_tick_wakes_for_the_earliest_deadline_or_cooldown_and_marks_its_time(plain):
    ctl, clock = plain
    assert ctl.tick() is None
    ctl.start("room2", 60, "ann")  # cooldown_s = 60 after it
    ctl.stop("room2", "ann")  # room2 cools down until now + 60
    ctl.start("room1", 600, "ann")
    clock.advance(5)
    assert ctl.tick() == clock.monotonic() + 55
    assert ctl.last_tick == clock.monotonic()
    ctl.stop("room1", "ann")
    ctl.start("room1", 30, "ann", new_patient=True)
    assert ctl.tick() == clock.monotonic() + 30  # the deadline now comes before the cooldown's end


def test_s6_feedback_is_polled_every_tenth_of_a_second_while_it_agrees(controller, clock):
    assert controller.tick() == clock.monotonic() + 0.1


def test_s6_idle_scheduler_still_wakes_every_second_and_stops_when_told(plain):
    ctl, clock = plain
    ctl.start_scheduler()
    assert ctl._scheduler.daemon and ctl._scheduler.name == "lamp-scheduler"
    wait_until(lambda: len(clock.waits) >= 3, 10, "three scheduler waits")
    ctl.stop_scheduler()
    assert not ctl.scheduler_alive
    assert set(clock.waits[:3]) == {1.0}


def test_s6_stuck_relay_latches_at_the_settle_time_and_again_after_a_reset(controller, clock, factory):
    feedback = factory.pin(22)
    controller.start("room1", 600, "ann")
    controller.tick()  # relay on, lamp not powered: the settle time starts
    clock.advance(0.5)
    controller.tick()
    assert controller.lamp("room1").fault_reason == (
        "Room 1 is not powered while its relay is on (relay stuck open or bulb failed)"
    )
    controller.reset_fault("room1", "admin")
    feedback.drive_high()  # now powered with the relay off: stuck closed
    controller.tick()
    clock.advance(0.5)
    controller.tick()
    assert controller.lamp("room1").fault_reason == (
        "Room 1 is still powered after its relay was switched off (relay stuck closed)"
    )


def test_s7_backstop_rounds_up_to_whole_ms_after_dropping_float_noise():
    assert s7_backstop_ms(0.1, 0.0004) == 111  # 110.4 ms: up, never down
    assert s7_backstop_ms(840, 0.0) == 924000  # 924000.0000000001 is noise
    assert s7_backstop_ms(0, 0.1000000004) == 100  # below a microsecond is noise too


# ---- firmware and protocol -------------------------------------------------------------
def test_firmware_remaining_is_zero_when_off_and_after_the_deadline():
    rig = Rig()
    rig.ok("HELLO")
    assert rig.fw.remaining_ms(0) == 0
    rig.ok("ARM", 0, 1000)
    rig.clock.advance(400)
    assert rig.fw.remaining_ms(0) == 600
    rig.clock.advance(700)  # past the deadline, before the loop polls
    assert rig.fw.remaining_ms(0) == 0


def test_firmware_shutdown_reports_every_lamp_off_as_off():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 1, 1000)
    rig.fw.shutdown()
    assert rig.levels() == [0, 0]
    assert rig.changes[-1] == (0, 1, False, "off")
    assert rig.err("ARM", 0, 1000) == "need-hello"  # a shut-down firmware obeys nothing before HELLO


def test_protocol_frames_differ_by_seq_word_or_args():
    frame = protocol.Frame(1, "ARM", (0, 100))
    assert frame == protocol.Frame(1, "ARM", (0, 100))
    for other in (
        protocol.Frame(2, "ARM", (0, 100)),
        protocol.Frame(1, "OFF", (0, 100)),
        protocol.Frame(1, "ARM", (1, 100)),
        (1, "ARM", (0, 100)),
    ):
        assert frame != other


def test_protocol_line_splitter_reset_forgets_the_half_line():
    splitter = protocol.LineSplitter()
    splitter.feed(b"x" * 100)
    splitter.reset()
    line = b"y" * (protocol.MAX_LINE - 1) + b"\n"
    assert splitter.feed(line) == [line]


class FailingRelays:
    """A relay bank whose set(index, on) raises for the (index, on) pairs in `broken`."""

    def __init__(self, bank):
        self.bank, self.broken = bank, set()

    def set(self, index, on):
        if (index, on) in self.broken:
            raise OSError("GPIO write failed")
        self.bank.set(index, on)

    def __getattr__(self, name):
        return getattr(self.bank, name)


@pytest.fixture
def failing(cfg, relays, clock, usage_log):
    hw = FailingRelays(relays)
    return hw, SessionController(cfg.lamps, hw, clock, usage_log)


def test_s6_a_relay_that_will_not_switch_off_latches_a_fault(failing, factory):
    hw, ctl = failing
    ctl.start("room1", 600, "ann")
    hw.broken.add((0, False))
    ctl.stop("room1", "bob")
    assert ctl.lamp("room1").fault_reason == "relay of Room 1 could not be switched off: GPIO write failed"
    assert pin_history(factory, 17) == [False, True, False]  # the all-off got it


def test_s6_a_relay_that_will_not_switch_on_refuses_the_start_and_latches(failing):
    hw, ctl = failing
    hw.broken.add((0, True))
    with pytest.raises(Refused) as exc:
        ctl.start("room1", 600, "ann")
    assert (exc.value.code, str(exc.value)) == (
        "hardware",
        "Room 1 was not started: its relay output failed (GPIO write failed).",
    )
    assert ctl.lamp("room1").fault_reason == "relay of Room 1 could not be switched on: GPIO write failed"


class SessionCutBackstop(CutBackstop):
    """Reports the firmware's cut only when asked about the session it cut (since = its start)."""

    def __init__(self, since):
        super().__init__()
        self.since = since

    def cut_at(self, index, since):
        return self.cut if since == self.since else None


def test_s13_the_firmware_cut_is_looked_up_for_this_session(cfg, relays, clock, usage_log):
    backstop = SessionCutBackstop(clock.monotonic())
    ctl = SessionController(cfg.lamps, relays, clock, usage_log, backstop=backstop)
    ctl.start("room1", 600, "ann")
    backstop.cut = clock.monotonic() + 100
    clock.advance(200)
    ctl.stop("room1", "ann")
    assert usage_log.flush(5)
    [row] = usage_log.sessions()
    assert (row["end_reason"], row["actual_s"]) == ("firmware", 100)


def test_s8_a_one_second_cooldown_still_cools_down(tmp_path, factory, clock, usage_log):
    cfg = config_mod.load(write_config(tmp_path, BASE_CONFIG.replace("cooldown_s = 60", "cooldown_s = 1"), "c1.toml"))
    relays = RelayBank(cfg.lamps, factory)
    try:
        ctl = SessionController(cfg.lamps, relays, clock, usage_log)
        ctl.start("room2", 60, "ann")
        assert ctl.stop("room2", "ann").state == "cooldown"
    finally:
        relays.close()


def test_controller_refusals_are_sentences_naming_the_lamp(controller, clock):
    controller.start("room1", 50 * 60, "ann")
    with pytest.raises(Refused, match=r"^Room 1 is already on\.$"):
        controller.start("room1", 60, "ann")
    clock.advance(50 * 60)
    controller.tick()
    with pytest.raises(
        Refused,
        match=r"^Room 1 has already run 50 min for this patient, so 10 min of its 60 min "
        r"limit is left; start it for a new patient to begin afresh\.$",
    ):
        controller.start("room1", 20 * 60, "ann")
    controller.fault("relay of Room 1 is stuck closed", "room1")
    with pytest.raises(Refused, match=r"^Room 1 has a latched fault \(relay of Room 1 is stuck closed\); an admin "):
        controller.start("room1", 60, "ann")
    controller.shutdown("service stopping")
    with pytest.raises(Refused) as exc:
        controller.start("room2", 60, "ann")
    assert (exc.value.code, str(exc.value)) == ("shutting-down", "The service is shutting down.")


def test_controller_durations_read_as_people_say_them():
    assert [fmt_s(s) for s in (3, 59.5, 60, 60.4, 297, 1200, 360000, 360001)] == [
        "3 s",
        "59.5 s",
        "1 min",
        "1 min",
        "4 min 57 s",
        "20 min",
        "6000 min",
        "over 100 h",
    ]


def test_s3_limit_allows_float_slack_up_to_a_microsecond():
    assert s3_allows(12 * 300.0, 3600) and s3_allows(3600 + 1e-6, 3600) and not s3_allows(3600 + 2e-6, 3600)


def test_protocol_frame_errors_keep_their_reason():
    exc = protocol.FrameError(protocol.BAD_ARGS)
    assert (str(exc), exc.reason) == (protocol.BAD_ARGS, protocol.BAD_ARGS)
    with pytest.raises(protocol.FrameError) as caught:
        protocol.parse_status(["1:500", "2:0"])
    assert caught.value.reason == protocol.BAD_ARGS


def test_protocol_damaged_frames_keep_their_seq_for_the_err_reply():
    for parse, line, reason in (
        (protocol.parse_command, protocol._encode(7, "ARM", ["1"]), protocol.BAD_ARGS),
        (protocol.parse_command, protocol._encode(7, "ARM", ["1", "x"]), protocol.BAD_ARGS),
        (protocol.parse_reply, protocol._encode(7, "NOPE", []), protocol.UNKNOWN_COMMAND),
        (protocol.parse_reply, protocol._encode(7, "OK", ["a*b"]), protocol.BAD_ARGS),
        (protocol.parse_reply, protocol._encode(7, "ERR", []), protocol.BAD_ARGS),
    ):
        with pytest.raises(protocol.FrameError) as caught:
            parse(line)
        assert (caught.value.reason, caught.value.seq) == (reason, 7), line
    with pytest.raises(protocol.FrameError) as caught:
        protocol.parse_hello(["1"])
    assert caught.value.reason == protocol.BAD_ARGS


def test_protocol_a_frame_of_exactly_max_line_bytes_is_valid():
    n = 1 + protocol.MAX_LINE - len(protocol.encode_reply(9, True, "a"))  # one byte per byte of argument
    line = protocol.encode_reply(9, True, "a" * n)
    assert len(line) == protocol.MAX_LINE and protocol.parse_reply(line).args == ("a" * n,)
    with pytest.raises(ValueError):
        protocol.encode_reply(9, True, "a" * (n + 1))


def test_protocol_line_splitter_limit_is_the_same_however_the_stream_is_cut():
    too_long = b"y" * protocol.MAX_LINE + b"\n"  # MAX_LINE bytes before the newline: one too many
    garbage = b"z" * (3 * protocol.MAX_LINE - 10)
    whole = protocol.LineSplitter().feed(too_long + garbage)
    splitter = protocol.LineSplitter()
    chunked = [
        item
        for part in (too_long[:100], too_long[100:], garbage[:100], garbage[100:250], garbage[250:])
        for item in splitter.feed(part)
    ]
    for items in (whole, chunked):
        assert [getattr(i, "reason", i) for i in items] == [protocol.TOO_LONG] * 3


def test_protocol_seq_window_is_half_the_counter():
    half = protocol.SEQ_MODULO // 2
    assert protocol.seq_is_newer(10 + half - 1, 10) and not protocol.seq_is_newer(10 + half, 10)
    assert protocol.seq_is_newer(10 + protocol.SEQ_MODULO // 3, 10)


def test_firmware_defaults_and_smallest_settings():
    fw = Rig().fw
    assert (fw.watchdog_ms, fw.bad_frame_limit) == (3000, 3)
    one = Rig(lamps=1, watchdog_ms=1, bad_frame_limit=1)
    one.ok("HELLO")
    one.ok("ARM", 0, 1)  # the shortest arm there is
    assert one.levels() == [1]


def test_firmware_poll_says_when_the_next_timer_is_due():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 1000)
    rig.ok("ARM", 1, 500)
    assert rig.fw.poll() == 500
    rig.clock.advance(100)
    assert rig.fw.poll() == 400
