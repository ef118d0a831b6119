"""Reference firmware logic on a fake tick clock: deadlines, tick wrap, watchdog, bad frames, replays, faults."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol
from firmware_bridge.firmware import mpshim
from firmware_bridge.firmware.logic import Firmware
from firmware_bridge.firmware.mpshim import TICKS_PERIOD, FakeTicks, Pin, ticks_add, ticks_diff

ROOT = Path(__file__).resolve().parent.parent
WATCHDOG_MS = 3000
HOUR_MS = 60 * 60 * 1000


class Rig:
    """A Firmware on fake ticks with shim pins, driven the way the board's main loop drives it."""

    def __init__(self, lamps=2, start=0, watchdog_ms=WATCHDOG_MS, bad_frame_limit=3, guards=()):
        self.clock = FakeTicks(start)
        self.pins = [Pin(n) for n in range(lamps)]
        self.changes = []
        # What each ADC input of a guard (lamp, adc, low, high) reads: an int, an exception to raise, or a callable.
        self.adc = {adc: (low + high) // 2 for _lamp, adc, low, high in guards}
        self.fw = Firmware(
            self.pins,
            self.clock.ticks_ms,
            ticks_diff,
            ticks_add,
            watchdog_ms=watchdog_ms,
            bad_frame_limit=bad_frame_limit,
            on_change=self._record,
            guards=[(lamp, self._reader(adc), low, high, adc) for lamp, adc, low, high in guards],
        )
        self.seq = 0

    def _reader(self, adc):
        def read():
            value = self.adc[adc]
            if callable(value):  # a reading that changes with time
                value = value()
            if isinstance(value, BaseException):
                raise value
            return value

        return read

    def _record(self, lamp, on, why):
        assert self.pins[lamp].value() == (1 if on else 0), "reported before the pin was driven"
        self.changes.append((self.clock.now, lamp, on, why))

    def send_raw(self, data):
        return [protocol.parse_reply(line) for line in self.fw.feed(data)]

    def send(self, word, *args, seq=None):
        if seq is None:
            self.seq = protocol.next_seq(self.seq)
            seq = self.seq
        replies = self.send_raw(protocol.encode_command(seq, word, *args))
        assert len(replies) == 1
        assert replies[0].seq == seq
        return replies[0]

    def ok(self, word, *args):
        reply = self.send(word, *args)
        assert reply.word == "OK", reply
        return reply

    def err(self, word, *args, seq=None):
        reply = self.send(word, *args, seq=seq)
        assert reply.word == "ERR", reply
        return reply.args[0]

    def advance(self, ms):
        """Move time on like the main loop: wake at every timer the firmware asks for."""
        target = self.clock.now + ms
        while True:
            wait = self.fw.poll()
            if wait is None or self.clock.now + wait > target:
                self.clock.advance(target - self.clock.now)
                self.fw.poll()
                return
            assert wait > 0
            self.clock.advance(wait)

    def heartbeat_for(self, ms, every=1000):
        """PING every ``every`` ms for ``ms`` ms, ending exactly at now + ms."""
        end = self.clock.now + ms
        while self.clock.now + every < end:
            self.advance(every)
            self.ok("PING")
        self.advance(end - self.clock.now)

    def levels(self):
        return [pin.value() for pin in self.pins]

    def whys(self):
        return [(lamp, on, why) for _, lamp, on, why in self.changes]


def test_firmware_boot_drives_every_output_off():
    rig = Rig(lamps=4)
    assert [pin.states for pin in rig.pins] == [[0]] * 4
    assert rig.whys() == [(n, False, "boot") for n in range(4)]
    assert not rig.fw.synced


def test_firmware_refuses_everything_but_hello_after_boot():
    rig = Rig()
    assert rig.err("ARM", 0, 1000) == protocol.NEED_HELLO
    assert rig.err("PING") == protocol.NEED_HELLO
    assert rig.levels() == [0, 0]


def test_firmware_hello_reports_version_lamps_watchdog_and_ceiling():
    rig = Rig(lamps=3, watchdog_ms=2500)
    info = protocol.parse_hello(rig.ok("HELLO").args)
    assert info == {
        "protocol": protocol.PROTOCOL_VERSION,
        "firmware": "2.0.0",
        "lamps": 3,
        "watchdog_ms": 2500,
        "max_arm_ms": protocol.MAX_ARM_MS,
    }


def test_firmware_arm_turns_lamp_on_until_its_deadline():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 1, 1000)
    assert rig.levels() == [0, 1]
    rig.advance(999)
    assert rig.levels() == [0, 1]
    rig.advance(1)
    assert rig.levels() == [0, 0]
    assert rig.changes[-2:] == [(0, 1, True, "armed"), (1000, 1, False, "deadline")]
    assert rig.pins[1].states == [0, 0, 1, 0]  # boot, HELLO, ARM, deadline


@pytest.mark.parametrize(
    "start",
    [
        TICKS_PERIOD - 1,
        TICKS_PERIOD - 300,
        TICKS_PERIOD - 999,
        TICKS_PERIOD - 1000,
        TICKS_PERIOD - 1001,
        TICKS_PERIOD // 2 - 500,
        0,
    ],
)
def test_firmware_deadline_across_tick_wrap_is_neither_early_nor_late(start):
    rig = Rig(start=start)
    rig.ok("HELLO")
    rig.ok("ARM", 0, 1000)
    rig.advance(999)
    assert rig.levels()[0] == 1, "cut early"
    assert 0 < rig.fw.remaining_ms(0) <= 1
    rig.advance(1)
    assert rig.levels()[0] == 0, "cut late"
    assert rig.changes[-1] == (1000, 0, False, "deadline")


@pytest.mark.parametrize("start", [0, TICKS_PERIOD - 30 * 60 * 1000, TICKS_PERIOD - 1])
def test_firmware_sixty_minute_arm_ends_on_the_millisecond(start):
    rig = Rig(start=start)
    rig.ok("HELLO")
    rig.ok("ARM", 0, HOUR_MS)
    rig.heartbeat_for(HOUR_MS - 1)
    assert rig.levels()[0] == 1
    status = protocol.parse_status(rig.ok("STATUS").args)
    assert status[0] == {"on": True, "remaining_ms": 1}
    rig.advance(1)
    assert rig.levels()[0] == 0
    assert rig.changes[-1] == (HOUR_MS, 0, False, "deadline")


def test_firmware_late_poll_cuts_before_handling_the_next_frame():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 500)
    rig.clock.advance(800)  # the loop was busy past the deadline
    rig.ok("ARM", 0, 500)  # this frame must not extend the lamp that should be off
    assert rig.whys()[-2:] == [(0, False, "deadline"), (0, True, "armed")]


def test_firmware_arm_limits_are_enforced():
    rig = Rig()
    rig.ok("HELLO")
    assert rig.err("ARM", 0, 0) == protocol.MS_OUT_OF_RANGE
    assert rig.err("ARM", 0, protocol.MAX_ARM_MS + 1) == protocol.MS_OUT_OF_RANGE
    assert rig.err("ARM", 2, 1000) == protocol.NO_SUCH_LAMP
    assert rig.err("OFF", 7) == protocol.NO_SUCH_LAMP
    assert rig.levels() == [0, 0]
    rig.ok("ARM", 0, protocol.MAX_ARM_MS)
    assert rig.levels() == [1, 0]


def test_firmware_rearm_moves_the_deadline():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 1000)
    rig.advance(500)
    rig.ok("ARM", 0, 2000)
    rig.advance(1999)
    assert rig.levels()[0] == 1
    rig.advance(1)
    assert rig.changes[-1] == (2500, 0, False, "deadline")
    assert rig.pins[0].states == [0, 0, 1, 0]
    assert [w for w in rig.whys() if w[0] == 0] == [(0, False, "boot"), (0, True, "armed"), (0, False, "deadline")]


def test_firmware_rearm_cannot_hold_a_lamp_on_past_the_ceiling():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, protocol.MAX_ARM_MS)
    rig.heartbeat_for(60_000)
    assert rig.err("ARM", 0, protocol.MAX_ARM_MS - 59_999) == protocol.OVER_CEILING
    rig.ok("ARM", 0, protocol.MAX_ARM_MS - 60_000)
    rig.heartbeat_for(protocol.MAX_ARM_MS - 60_000)
    assert rig.levels()[0] == 0
    assert rig.changes[-1] == (protocol.MAX_ARM_MS, 0, False, "deadline")


def test_firmware_off_offall_and_status():
    rig = Rig(lamps=3)
    rig.ok("HELLO")
    rig.ok("ARM", 0, 5000)
    rig.ok("ARM", 2, 7000)
    rig.advance(1000)
    assert protocol.parse_status(rig.ok("STATUS").args) == [
        {"on": True, "remaining_ms": 4000},
        {"on": False, "remaining_ms": 0},
        {"on": True, "remaining_ms": 6000},
    ]
    rig.ok("OFF", 0)
    assert rig.levels() == [0, 0, 1]
    rig.ok("OFF", 1)  # already off: OK, nothing reported
    rig.ok("OFFALL")
    assert rig.levels() == [0, 0, 0]
    assert rig.whys()[3:] == [(0, True, "armed"), (2, True, "armed"), (0, False, "off"), (2, False, "off")]


def test_s7_firmware_watchdog_cuts_after_silence():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    rig.heartbeat_for(2000)  # last PING at 1000
    rig.advance(1999)
    assert rig.levels()[0] == 1
    rig.advance(1)
    assert rig.levels()[0] == 0
    assert rig.changes[-1] == (4000, 0, False, "watchdog")
    assert not rig.fw.synced
    assert rig.err("PING") == protocol.NEED_HELLO
    assert rig.err("ARM", 0, 1000) == protocol.NEED_HELLO
    assert rig.levels()[0] == 0


def test_s7_firmware_watchdog_counts_from_the_last_valid_frame_not_garbage():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    rig.advance(2500)
    rig.send_raw(b"noise\n")
    rig.send_raw(b"1 PING*0000\n")
    rig.advance(500)
    assert rig.changes[-1] == (3000, 0, False, "watchdog")


def test_s7_firmware_watchdog_cut_across_tick_wrap():
    rig = Rig(start=TICKS_PERIOD - 1500)
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    rig.advance(WATCHDOG_MS - 1)
    assert rig.levels()[0] == 1
    rig.advance(1)
    assert rig.changes[-1] == (WATCHDOG_MS, 0, False, "watchdog")


def test_firmware_consecutive_bad_frames_cut_every_lamp():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    rig.ok("ARM", 1, 60_000)
    replies = rig.send_raw(b"garbage\n" + b"1 PING*0000\n")
    assert [(r.seq, r.args[0]) for r in replies] == [(0, protocol.MALFORMED), (0, protocol.BAD_CRC)]
    assert rig.levels() == [1, 1]
    rig.send_raw(b"\xff\xfe\n")
    assert rig.levels() == [0, 0]
    assert rig.whys()[-2:] == [(0, False, "bad-frames"), (1, False, "bad-frames")]
    assert rig.err("ARM", 0, 1000) == protocol.NEED_HELLO


def test_firmware_bad_frame_run_is_broken_by_a_valid_frame():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    for _ in range(5):
        rig.send_raw(b"x\nyy\n")
        rig.ok("PING")
    assert rig.levels()[0] == 1


def test_firmware_frame_that_fails_inside_is_one_bad_frame_and_the_next_is_handled(monkeypatch):
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)

    def broken(lamps):
        raise MemoryError("no room for the reply")

    monkeypatch.setattr(protocol, "format_status", broken)
    status = protocol.encode_command(protocol.next_seq(rig.seq), "STATUS")
    ping = protocol.encode_command(protocol.next_seq(rig.seq + 1), "PING")
    rig.seq += 2
    replies = rig.send_raw(status + ping)
    assert [(r.seq, r.word, r.args) for r in replies] == [(0, "ERR", (protocol.INTERNAL,)), (rig.seq, "OK", ())]
    assert rig.levels() == [1, 0]


def test_s7_firmware_failing_frames_neither_feed_the_watchdog_nor_break_a_bad_run(monkeypatch):
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    rig.ok("ARM", 1, 60_000)
    monkeypatch.setattr(protocol, "format_status", lambda lamps: 1 // 0)
    rig.advance(2500)
    assert rig.send_raw(protocol.encode_command(protocol.next_seq(rig.seq), "STATUS"))[0].args == (protocol.INTERNAL,)
    rig.seq = protocol.next_seq(rig.seq)
    rig.advance(500)
    assert rig.changes[-1] == (3000, 1, False, "watchdog"), "a failed STATUS must not count as a heartbeat"
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    frames = b""
    for _ in range(3):
        rig.seq = protocol.next_seq(rig.seq)
        frames += protocol.encode_command(rig.seq, "STATUS")
    assert [r.args for r in rig.send_raw(frames)] == [(protocol.INTERNAL,)] * 3
    assert rig.changes[-1][1:] == (0, False, "bad-frames")


def test_firmware_splitter_failure_costs_one_bad_frame_and_a_fresh_line(monkeypatch):
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    rig.send_raw(b"half a li")
    real_feed = rig.fw._splitter.feed
    monkeypatch.setattr(rig.fw._splitter, "feed", lambda data: 1 // 0)
    assert [(r.seq, r.args) for r in rig.send_raw(b"ne\n")] == [(0, (protocol.INTERNAL,))]
    monkeypatch.setattr(rig.fw._splitter, "feed", real_feed)
    assert rig.ok("PING").word == "OK", "the half line before the failure must be gone"
    assert rig.levels() == [1, 0]


def test_firmware_endless_garbage_without_newline_counts_as_bad_frames():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    replies = rig.send_raw(b"A" * (protocol.MAX_LINE * 3))
    assert [r.args[0] for r in replies] == [protocol.TOO_LONG] * 3
    assert rig.changes[-1][1:] == (0, False, "bad-frames")


def test_firmware_replayed_and_old_seqs_are_bad_frames():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    arm = protocol.encode_command(rig.seq, "ARM", 0, 60_000)
    assert [r.args[0] for r in rig.send_raw(arm)] == [protocol.REPLAY]
    assert rig.err("PING", seq=rig.seq - 1) == protocol.REPLAY
    assert rig.levels()[0] == 1
    rig.send_raw(arm)
    assert rig.levels()[0] == 0
    assert rig.changes[-1][1:] == (0, False, "bad-frames")


def test_firmware_replay_does_not_feed_the_watchdog():
    rig = Rig()
    rig.ok("HELLO")
    rig.ok("ARM", 0, 60_000)
    ping = protocol.encode_command(rig.seq, "PING")
    rig.advance(2000)
    rig.send_raw(ping)  # same seq as the ARM: a replay
    rig.advance(1000)
    assert rig.changes[-1] == (3000, 0, False, "watchdog")


def test_firmware_seq_wraps_from_65535_to_1():
    rig = Rig()
    rig.seq = protocol.MAX_SEQ - 3
    rig.ok("HELLO")
    rig.ok("PING")
    rig.ok("ARM", 0, 5000)
    assert rig.seq == protocol.MAX_SEQ
    rig.ok("PING")
    assert rig.seq == 1
    rig.ok("OFF", 0)
    assert rig.whys()[-1] == (0, False, "off")


def test_firmware_hello_resets_seq_and_turns_everything_off():
    rig = Rig()
    rig.seq = 500
    rig.ok("HELLO")
    rig.ok("ARM", 1, 60_000)
    rig.seq = 10  # a new host starts its own count
    rig.ok("HELLO")
    assert rig.levels() == [0, 0]
    assert rig.whys()[-1] == (1, False, "off")
    rig.ok("PING")


def test_firmware_unknown_command_with_good_crc_is_answered_with_its_seq():
    rig = Rig()
    rig.ok("HELLO")
    body = b"77 FIRE 1"
    replies = rig.send_raw(b"%s*%04X\n" % (body, protocol.crc16(body)))
    assert [(r.seq, r.word, r.args) for r in replies] == [(77, "ERR", (protocol.UNKNOWN_COMMAND,))]


def test_firmware_rejects_bad_construction():
    with pytest.raises(ValueError):
        Firmware([], mpshim.ticks_ms, ticks_diff, ticks_add)
    with pytest.raises(ValueError):
        Firmware([Pin(n) for n in range(protocol.MAX_LAMPS + 1)], mpshim.ticks_ms, ticks_diff, ticks_add)
    with pytest.raises(ValueError):
        Firmware([Pin(0)], mpshim.ticks_ms, ticks_diff, ticks_add, watchdog_ms=0)


def test_firmware_tick_shim_matches_micropython_semantics():
    assert ticks_diff(5, TICKS_PERIOD - 5) == 10
    assert ticks_diff(TICKS_PERIOD - 5, 5) == -10
    assert ticks_add(TICKS_PERIOD - 1, 2) == 1
    assert ticks_add(1, -2) == TICKS_PERIOD - 1
    assert ticks_diff(TICKS_PERIOD // 2, 0) == -TICKS_PERIOD // 2
    assert ticks_diff(TICKS_PERIOD // 2 - 1, 0) == TICKS_PERIOD // 2 - 1
    clock = FakeTicks(TICKS_PERIOD - 1)
    clock.advance(1)
    assert clock.ticks_ms() == 0
    with pytest.raises(ValueError):
        clock.advance(-1)


# -- never on past its deadline, whatever arrives -------------------------


class Oracle:
    """Host-side bounds every lamp must respect, learnt only from the firmware's replies."""

    REFUSALS_THAT_FEED_THE_WATCHDOG = {protocol.NO_SUCH_LAMP, protocol.MS_OUT_OF_RANGE, protocol.OVER_CEILING}

    def __init__(self, rig):
        self.rig = rig
        self.allowed_until = [0] * len(rig.pins)  # deadline set by the last accepted ARM
        self.on_since = [None] * len(rig.pins)
        self.last_valid = 0
        self.on_checks = 0

    def observe(self, command, replies):
        now = self.rig.clock.now
        for reply in replies:
            if reply.seq == 0:
                continue
            if reply.word == "OK" or reply.args[0] in self.REFUSALS_THAT_FEED_THE_WATCHDOG:
                self.last_valid = now
            if reply.word == "OK" and command is not None and command[0] == "ARM":
                lamp, ms = command[1]
                self.allowed_until[lamp] = now + ms  # an accepted (re-)ARM replaces the deadline

    def check(self):
        now = self.rig.clock.now
        for lamp, pin in enumerate(self.rig.pins):
            on = pin.value() == 1
            assert on == self.rig.fw.is_on(lamp)
            if not on:
                self.on_since[lamp] = None
                continue
            self.on_checks += 1
            if self.on_since[lamp] is None:
                self.on_since[lamp] = now
            assert now < self.allowed_until[lamp], "lamp %d on past its deadline at %d ms" % (lamp, now)
            assert now - self.last_valid < WATCHDOG_MS, "lamp %d on past the watchdog" % lamp
            assert now - self.on_since[lamp] <= protocol.MAX_ARM_MS


def run_fault_campaign(seed, steps):
    """Random valid traffic interleaved with injected faults; returns (rig, oracle, faults)."""
    rnd = random.Random(seed)
    rig = Rig(lamps=3, start=rnd.choice([0, TICKS_PERIOD - 20_000, rnd.randrange(TICKS_PERIOD)]))
    oracle = Oracle(rig)
    sent = []
    faults = 0

    def deliver(data, command=None):
        oracle.observe(command, rig.send_raw(data))
        oracle.check()

    def valid(word, *args):
        rig.seq = protocol.next_seq(rig.seq)
        line = protocol.encode_command(rig.seq, word, *args)
        sent.append(line)
        deliver(line, (word, args))
        return line

    valid("HELLO")
    for _ in range(steps):
        rig.advance(rnd.choice([0, 1, 10, 50, 200, 400, 900]))
        oracle.check()
        roll = rnd.random()
        if roll < 0.45:
            if not rig.fw.synced or rnd.random() < 0.02:
                valid("HELLO")
            elif rnd.random() < 0.4:
                valid("ARM", rnd.randrange(4), rnd.choice([1, 50, 300, 1500, 5000, protocol.MAX_ARM_MS + 1]))
            else:
                word = rnd.choice(["PING", "PING", "STATUS", "OFF", "OFFALL"])
                valid(word, *((rnd.randrange(4),) if word == "OFF" else ()))
            continue
        faults += 1
        kind = rnd.randrange(7)
        if kind == 0:  # garbage bytes, newlines included
            deliver(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200))))
        elif kind == 1:  # a frame cut short; what follows lands on the same line
            line = protocol.encode_command(protocol.next_seq(rig.seq), "ARM", 0, 5000)
            deliver(line[: rnd.randrange(1, len(line) - 1)])
        elif kind == 2:  # wrong CRC on an otherwise valid ARM
            line = bytearray(protocol.encode_command(protocol.next_seq(rig.seq), "ARM", 1, 5000))
            line[-2] = ord("0") if line[-2] != ord("0") else ord("1")
            deliver(bytes(line))
        elif kind == 3 and sent:  # replay of something already sent
            deliver(rnd.choice(sent), None)
        elif kind == 4:  # overlong line
            deliver(b"9" * rnd.randrange(protocol.MAX_LINE, 3 * protocol.MAX_LINE) + b"\n")
        elif kind == 5:  # silence longer or shorter than the watchdog
            rig.advance(rnd.randrange(WATCHDOG_MS * 2))
            oracle.check()
        else:  # one flipped bit inside a valid ARM
            line = bytearray(protocol.encode_command(protocol.next_seq(rig.seq), "ARM", 2, 5000))
            line[rnd.randrange(len(line) - 1)] ^= 1 << rnd.randrange(7)
            deliver(bytes(line))
    return rig, oracle, faults


def test_s2_firmware_fault_injection_never_leaves_a_lamp_on_past_its_bounds():
    total_faults = 0
    whys = set()
    on_checks = 0
    for seed in range(4):
        rig, oracle, faults = run_fault_campaign(seed, 700)
        total_faults += faults
        on_checks += oracle.on_checks
        whys |= {why for _, _, _, why in rig.changes}
    assert total_faults >= 1000
    assert on_checks > 200, "the campaign never kept a lamp on long enough to test anything"
    assert whys == {"boot", "armed", "off", "deadline", "watchdog", "bad-frames"}


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ARM", "PING", "OFF", "STATUS", "GARBAGE", "WAIT", "REPLAY"]),
            st.integers(min_value=0, max_value=2),
            st.integers(min_value=1, max_value=4000),
        ),
        max_size=60,
    )
)
@settings(max_examples=200, deadline=None)
def test_s2_firmware_lamp_never_on_past_deadline_property(actions):
    rig = Rig(start=TICKS_PERIOD - 5000)
    oracle = Oracle(rig)
    oracle.observe(("HELLO", ()), [rig.ok("HELLO")])
    last = None
    for word, lamp, ms in actions:
        if word == "WAIT":
            rig.advance(ms)
            oracle.check()
            continue
        if word == "GARBAGE":
            data, command = b"%d junk\n" % ms, None
        elif word == "REPLAY" and last is not None:
            data, command = last, None
        else:
            args = {"ARM": (lamp, ms), "OFF": (lamp,)}.get(word, ())
            word = "PING" if word == "REPLAY" else word
            rig.seq = protocol.next_seq(rig.seq)
            data, command = protocol.encode_command(rig.seq, word, *args), (word, args)
            last = data
        oracle.observe(command, rig.send_raw(data))
        oracle.check()
    rig.advance(WATCHDOG_MS)
    assert rig.levels() == [0, 0]


# -- the board's main loop, run on CPython with the shim as ``machine`` ----


def test_firmware_board_main_loop_answers_over_stdio():
    harness = (
        "import io, runpy, sys\n"
        "from firmware_bridge.firmware import mpshim\n"
        "sys.modules['machine'] = mpshim\n"
        "sys.stdin = io.TextIOWrapper(io.FileIO(0, 'rb', closefd=False))\n"
        "sys.stdout = io.TextIOWrapper(io.FileIO(1, 'wb', closefd=False))\n"
        "runpy.run_path(%r, run_name='__main__')\n" % str(ROOT / "firmware_bridge" / "firmware" / "main.py")
    )
    frames = b"".join(
        [
            b"\n",
            protocol.encode_command(1, "HELLO"),
            protocol.encode_command(2, "ARM", 3, 60_000),
            protocol.encode_command(3, "STATUS"),
            b"junk\n",
        ]
    )
    proc = subprocess.run(
        [sys.executable, "-c", harness],
        input=frames,
        capture_output=True,
        cwd=ROOT,
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    replies = [protocol.parse_reply(line) for line in proc.stdout.splitlines(keepends=True)]
    assert [(r.seq, r.word) for r in replies] == [(1, "OK"), (2, "OK"), (3, "OK"), (0, "ERR")]
    assert protocol.parse_hello(replies[0].args)["lamps"] == 4
    assert protocol.parse_status(replies[2].args)[3]["on"] is True
    assert b"stdin closed" in proc.stderr
