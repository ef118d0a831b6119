"""The firmware's analog guard on a fake tick clock: sampling, trips, latching, ARM refusals, CLEAR, SENSE, GUARDS."""

import pytest

from firmware_bridge import protocol
from firmware_bridge.firmware.logic import GUARD_SAMPLE_MS, GUARD_TRIP_READS, Firmware
from firmware_bridge.firmware.mpshim import FakeTicks, Pin, ticks_add, ticks_diff
from tests.test_fw_firmware import Rig

# A thermistor on lamp 0 (hot reads low, open reads high) and a current sensor on lamp 1.
THERMISTOR = (0, 0, 9000, 52000)
CURRENT = (1, 2, 0, 30000)
GUARDS = (THERMISTOR, CURRENT)
IN_RANGE = 20000
TOO_HOT = 8000
OPEN = 60000
HOUR_MS = 60 * 60 * 1000


def guarded(**kwargs):
    rig = Rig(guards=GUARDS, **kwargs)
    rig.ok("HELLO")
    return rig


def sense(rig):
    return protocol.parse_sense(rig.ok("SENSE").args)


def test_guard_trip_after_three_out_of_range_reads_cuts_only_its_lamp_at_once():
    rig = guarded()
    rig.ok("ARM", 0, HOUR_MS)
    rig.ok("ARM", 1, HOUR_MS)
    rig.adc[0] = TOO_HOT
    start = rig.clock.now
    # The next samples fall on the 50 ms grid from boot; the third out-of-range one trips.
    trip_at = (start // GUARD_SAMPLE_MS + GUARD_TRIP_READS) * GUARD_SAMPLE_MS
    rig.advance(trip_at - start - 1)
    assert rig.levels() == [1, 1]
    rig.advance(1)
    assert rig.levels() == [0, 1]
    assert rig.changes[-1] == (trip_at, 0, False, "guard")
    assert rig.fw.tripped(0) == protocol.TRIP_LOW


def test_guard_needs_consecutive_reads_one_in_range_restarts_the_count():
    rig = guarded()
    rig.ok("ARM", 0, HOUR_MS)
    for _ in range(3):
        rig.adc[0] = TOO_HOT
        rig.advance(GUARD_SAMPLE_MS * (GUARD_TRIP_READS - 1))
        rig.adc[0] = IN_RANGE
        rig.advance(GUARD_SAMPLE_MS)
    assert rig.levels()[0] == 1
    assert rig.fw.tripped(0) == protocol.TRIP_NONE


@pytest.mark.parametrize(
    "case, channel, reading, side, trip_raw",
    [
        ("thermistor too hot reads below low", 0, TOO_HOT, protocol.TRIP_LOW, TOO_HOT),
        ("thermistor open reads above high", 0, OPEN, protocol.TRIP_HIGH, OPEN),
        ("thermistor shorted reads 0", 0, 0, protocol.TRIP_LOW, 0),
        ("current over its maximum", 1, 30001, protocol.TRIP_HIGH, 30001),
        ("a read that raises is out of range", 1, OSError("adc"), protocol.TRIP_FAIL, 0),
    ],
)
def test_guard_trip_latches_side_reading_and_age(case, channel, reading, side, trip_raw):
    rig = guarded()
    adc = GUARDS[channel][1]
    rig.adc[adc] = reading
    rig.advance(GUARD_SAMPLE_MS * GUARD_TRIP_READS)
    assert rig.fw.tripped(channel) == side, case
    tripped_at = rig.clock.now - rig.clock.now % GUARD_SAMPLE_MS
    rig.adc[adc] = (GUARDS[channel][2] + GUARDS[channel][3]) // 2  # back in range: the trip stays
    rig.advance(1234)
    readings = sense(rig)
    assert readings[channel]["trip"] == side
    assert readings[channel]["trip_raw"] == trip_raw
    assert readings[channel]["trip_ago_ms"] == rig.clock.now - tripped_at
    assert readings[channel]["raw"] == rig.adc[adc]
    assert readings[1 - channel] == {"raw": rig.adc[GUARDS[1 - channel][1]], "trip": 0, "trip_raw": 0, "trip_ago_ms": 0}


def test_guard_arm_refused_while_tripped_and_while_reading_out_of_range_now():
    rig = guarded()
    rig.adc[2] = 30001  # out of range, not yet sampled three times
    assert rig.err("ARM", 1, 1000) == protocol.GUARD_TRIPPED
    rig.adc[2] = IN_RANGE
    rig.ok("ARM", 1, 1000)
    rig.ok("OFF", 1)
    rig.adc[0] = OPEN
    rig.advance(GUARD_SAMPLE_MS * GUARD_TRIP_READS)
    rig.adc[0] = IN_RANGE  # reads fine again, but the trip is latched
    assert rig.err("ARM", 0, 1000) == protocol.GUARD_TRIPPED
    assert rig.levels() == [0, 0]


def test_guard_refusal_is_not_a_bad_frame():
    rig = guarded()
    rig.ok("ARM", 1, HOUR_MS)
    rig.adc[0] = TOO_HOT
    for _ in range(5):
        assert rig.err("ARM", 0, 1000) == protocol.GUARD_TRIPPED
    assert rig.levels() == [0, 1]
    assert rig.fw.synced


def test_guard_rearm_of_a_lamp_already_on_is_refused_too():
    rig = guarded()
    rig.ok("ARM", 1, 10_000)
    rig.adc[2] = 30001
    assert rig.err("ARM", 1, 20_000) == protocol.GUARD_TRIPPED


@pytest.mark.parametrize("cut", ["hello", "watchdog", "bad-frames"])
def test_guard_trip_survives_hello_and_the_other_cuts(cut):
    rig = guarded()
    rig.adc[0] = TOO_HOT
    rig.advance(GUARD_SAMPLE_MS * GUARD_TRIP_READS)
    rig.adc[0] = IN_RANGE
    if cut == "watchdog":
        rig.advance(rig.fw.watchdog_ms)
        assert not rig.fw.synced
    elif cut == "bad-frames":
        for _ in range(3):
            rig.send_raw(b"garbage\n")
        assert not rig.fw.synced
    rig.ok("HELLO")
    assert sense(rig)[0]["trip"] == protocol.TRIP_LOW
    assert rig.err("ARM", 0, 1000) == protocol.GUARD_TRIPPED


def test_guard_runs_before_hello_and_after_a_watchdog_cut():
    rig = Rig(guards=GUARDS)  # no host ever synced
    rig.adc[2] = 40000
    rig.advance(GUARD_SAMPLE_MS * GUARD_TRIP_READS)
    assert rig.fw.tripped(1) == protocol.TRIP_HIGH


def test_guard_sense_and_guards_answer_before_hello_without_syncing_or_feeding_the_watchdog():
    rig = Rig(guards=GUARDS)
    assert protocol.parse_guards(rig.ok("GUARDS").args) == list(GUARDS)
    assert [r["raw"] for r in sense(rig)] == [rig.adc[0], rig.adc[2]]
    assert not rig.fw.synced
    assert rig.err("ARM", 0, 1000) == protocol.NEED_HELLO
    # After a HELLO, SENSE before the cut does not keep a lamp on once the host stops...
    rig.ok("HELLO")
    rig.ok("ARM", 1, HOUR_MS)
    rig.advance(rig.fw.watchdog_ms)
    assert rig.levels()[1] == 0
    # ...and SENSE sent while unsynced neither syncs nor starts a watchdog period.
    for _ in range(3):
        rig.ok("SENSE")
        rig.advance(1000)
    assert not rig.fw.synced
    assert rig.err("ARM", 1, 1000) == protocol.NEED_HELLO


def test_guard_sense_is_a_heartbeat_once_synced():
    rig = guarded()
    rig.ok("ARM", 0, HOUR_MS)
    for _ in range(10):
        rig.advance(1000)
        rig.ok("SENSE")
    assert rig.levels()[0] == 1


def test_guard_clear_needs_in_range_readings_then_arm_works():
    rig = guarded()
    rig.adc[0] = TOO_HOT
    rig.advance(GUARD_SAMPLE_MS * GUARD_TRIP_READS)
    assert rig.err("CLEAR", 0) == protocol.GUARD_TRIPPED
    assert rig.fw.tripped(0) == protocol.TRIP_LOW
    rig.adc[0] = IN_RANGE
    rig.ok("CLEAR", 0)
    assert sense(rig)[0] == {"raw": TOO_HOT, "trip": 0, "trip_raw": 0, "trip_ago_ms": 0}  # not sampled since
    rig.ok("ARM", 0, 1000)
    assert rig.levels()[0] == 1


def test_guard_clear_of_one_lamp_leaves_the_others_trip():
    rig = guarded()
    rig.adc[0] = TOO_HOT
    rig.adc[2] = 40000
    rig.advance(GUARD_SAMPLE_MS * GUARD_TRIP_READS)
    rig.adc[0] = IN_RANGE
    rig.adc[2] = IN_RANGE
    rig.ok("CLEAR", 0)
    assert [r["trip"] for r in sense(rig)] == [0, protocol.TRIP_HIGH]


def test_guard_clear_needs_hello_and_a_real_lamp():
    rig = Rig(guards=GUARDS)
    assert rig.err("CLEAR", 0) == protocol.NEED_HELLO
    rig.ok("HELLO")
    assert rig.err("CLEAR", 5) == protocol.NO_SUCH_LAMP


def test_guard_sample_is_a_timer_poll_wakes_for():
    rig = Rig(guards=GUARDS)
    assert 0 < rig.fw.poll() <= GUARD_SAMPLE_MS
    plain = Rig()
    assert plain.fw.poll() is None
    rig.ok("HELLO")
    cut_at = rig.clock.now + rig.fw.watchdog_ms
    rig.adc[0] = lambda: TOO_HOT if rig.clock.now >= cut_at else IN_RANGE
    # The poll that makes the watchdog cut still asks to wake for the next sample,
    # so the trip lands on time (advance() wakes only when poll asks it to).
    rig.advance(rig.fw.watchdog_ms + GUARD_SAMPLE_MS * GUARD_TRIP_READS)
    assert not rig.fw.synced
    assert rig.fw.tripped(0) == protocol.TRIP_LOW
    assert 0 < rig.fw.poll() <= GUARD_SAMPLE_MS


def test_guard_trip_age_saturates_instead_of_wrapping():
    rig = guarded()
    rig.adc[0] = TOO_HOT
    rig.advance(GUARD_SAMPLE_MS * GUARD_TRIP_READS)
    # Samples every 2**27 ms (the main loop samples far more often): past the ticks' half period.
    for _ in range(5):
        rig.clock.advance(1 << 27)
        rig.fw.poll()
    rig.ok("HELLO")
    assert sense(rig)[0]["trip_ago_ms"] == protocol.MAX_TRIP_AGO_MS


def test_guard_with_no_channels_answers_empty_guards_and_sense():
    rig = Rig()
    assert rig.ok("GUARDS").args == ()
    assert rig.ok("SENSE").args == ()


@pytest.mark.parametrize(
    "case, guards",
    [
        ("two channels on one adc", [(0, 0, 1, 2), (1, 0, 1, 2)]),
        ("three channels on one lamp", [(0, 0, 1, 2), (0, 1, 1, 2), (0, 2, 1, 2)]),
        ("a lamp the board does not drive", [(2, 0, 1, 2)]),
        ("an adc the Pico does not have", [(0, 3, 1, 2)]),
        ("low above high", [(0, 0, 5, 4)]),
        ("high above 65535", [(0, 0, 0, 65536)]),
    ],
)
def test_guard_table_refused_at_construction(case, guards):
    clock = FakeTicks()
    with pytest.raises(ValueError):
        Firmware(
            [Pin(0), Pin(1)],
            clock.ticks_ms,
            ticks_diff,
            ticks_add,
            guards=[(lamp, lambda: 1, low, high, adc) for lamp, adc, low, high in guards],
        )
