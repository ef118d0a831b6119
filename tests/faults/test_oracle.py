"""The oracle itself: a clean record passes, and each planted fault is caught (no check that cannot fail)."""

from __future__ import annotations

import contextlib
import sqlite3
from types import SimpleNamespace

import pytest

from lampctl.storage.db import open_database
from tests.faults.harness import PinTrace
from tests.faults.oracle import Oracle
from tests.faults.rig import Call, Figures, Life, Rig


class FakeRig:
    """What Oracle reads of a Rig, built by hand: one life in which room1 ran a 2 s session."""

    rows = Rig.rows

    def __init__(self, tmp_path):
        self.database = tmp_path / "lampctl.db"
        open_database(self.database)
        self.trace = tmp_path / "trace-0.bin"
        self.lives = [Life(self.trace, 0, 99.0, ended=120.0, serving=99.5)]
        self.calls: list[Call] = []
        self.faults = []
        self.figures = Figures()
        self.watchdog_s = 1.0
        self.sim = SimpleNamespace(lines=[])
        self.relay = [(100.0, 17, True), (102.0, 17, False)]
        self.firmware(0, 99.99, 102.01)
        self.session(1, "room1", planned=2.0, actual=2.0)
        self.calls.append(Call("start", "room1", 99.9, 100.01, 201, {"session_id": 1, "recorded": True}, 0))

    def firmware(self, lamp: int, on: float, off: float) -> None:
        self.sim.lines += [
            {"t": on, "lamp": lamp, "on": True, "why": "armed"},
            {"t": off, "lamp": lamp, "on": False, "why": "off"},
        ]

    def session(
        self,
        sid,
        lamp,
        planned,
        actual,
        reason="completed",
        started="2026-01-05T09:00:00.000Z",
        ended="2026-01-05T09:00:02.000Z",
    ) -> None:
        with sqlite3.connect(self.database) as conn:
            conn.execute(
                "INSERT INTO sessions (id, lamp_id, user, started_at, ended_at, planned_s, actual_s, "
                "end_reason) VALUES (?, ?, 'ann', ?, ?, ?, ?, ?)",
                (sid, lamp, started, ended, planned, actual, reason),
            )

    def check(self) -> list[str]:
        trace = PinTrace(str(self.trace))
        for t, pin, state in self.relay:
            trace.add(t, pin, state)
        oracle = Oracle(self)
        with contextlib.suppress(AssertionError):  # the problems list is what these tests read
            oracle.check()
        return oracle.problems


@pytest.fixture
def fake(tmp_path):
    return FakeRig(tmp_path)


def test_oracle_passes_a_clean_record(fake):
    assert fake.check() == []


def caught(fake, tag: str) -> None:
    problems = fake.check()
    assert any(p.startswith(tag) for p in problems), problems


def test_oracle_catches_a_relay_on_without_a_session(fake):
    fake.relay += [(105.0, 18, True), (106.0, 18, False)]
    fake.firmware(1, 104.9, 106.1)
    caught(fake, "S2/S9")


def test_oracle_catches_a_relay_past_its_deadline(fake):
    fake.relay[1] = (103.0, 17, False)
    fake.sim.lines[1]["t"] = 103.01
    caught(fake, "S2:")


def test_oracle_catches_a_relay_on_without_the_firmware_armed(fake):
    fake.sim.lines[0]["t"] = 100.5
    caught(fake, "S7/S12")


def test_oracle_catches_the_firmware_left_armed(fake):
    fake.sim.lines[1]["t"] = 110.0
    caught(fake, "S12")


def test_oracle_catches_an_acknowledged_session_lost(fake):
    fake.calls.append(Call("start", "room2", 101.0, 101.1, 201, {"session_id": 7, "recorded": True}, 0))
    caught(fake, "S9")


def test_oracle_catches_a_recorded_stop_all_missing(fake):
    fake.calls.append(Call("stop-all", None, 110.0, 110.01, 200, {"recorded": True}, 0))
    caught(fake, "S9")


def test_oracle_catches_a_slow_relay_after_a_stop(fake):
    fake.calls.append(Call("stop", "room1", 101.0, 101.01, 200, {"recorded": False}, 0))
    caught(fake, "S10")


def test_oracle_catches_a_stop_never_answered(fake):
    fake.calls.append(Call("stop", "room2", 110.0, 120.0, None, None, 0))
    caught(fake, "S10")


def test_oracle_catches_an_end_before_the_start(fake):
    fake.session(2, "room2", 1.0, 1.0, started="2026-01-05T10:00:00.000Z", ended="2026-01-05T09:00:00.000Z")
    fake.relay += [(105.0, 18, True), (106.0, 18, False)]
    fake.firmware(1, 104.9, 106.1)
    caught(fake, "S13")


def test_oracle_catches_a_session_left_open(fake):
    fake.session(2, "room2", 1.0, None, reason=None, ended=None)
    caught(fake, "S4")


def test_oracle_catches_a_relay_left_on_at_a_clean_exit(fake):
    fake.relay.pop()
    fake.sim.lines[1]["t"] = 120.5
    caught(fake, "S1")


def test_oracle_catches_a_chain_past_the_max(fake):
    fake.session(2, "room1", 40.0, 40.0)
    with sqlite3.connect(fake.database) as conn:
        conn.execute("UPDATE sessions SET planned_s = 50, actual_s = 50 WHERE id = 1")
        conn.execute("UPDATE sessions SET continues = 1 WHERE id = 2")
    caught(fake, "S18")


def test_oracle_catches_a_recovered_session_claiming_time_it_did_not_run(fake):
    fake.lives[0].killed = True
    fake.relay.pop()  # killed while on: the relay's time ends with the process
    fake.lives[0].ended = 100.5
    fake.sim.lines[1]["t"] = 101.4  # the firmware's watchdog cut
    with sqlite3.connect(fake.database) as conn:
        conn.execute("UPDATE sessions SET end_reason = 'interrupted' WHERE id = 1")
    caught(fake, "S13")


def test_oracle_counts_a_stop_that_found_the_firmware_had_cut_first(fake):
    with sqlite3.connect(fake.database) as conn:
        conn.execute(
            "INSERT INTO events (at, lamp_id, from_state, to_state, who, why) VALUES "
            "('2026-01-05T09:00:02.000Z', 'room1', 'on', 'off', 'ann', 'firmware: stopped by user')"
        )
    fake.calls.append(Call("stop", "room1", 103.0, 103.01, 200, {"recorded": True}, 0))
    assert fake.check() == []
