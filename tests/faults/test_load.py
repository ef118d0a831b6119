"""Fifty clients at once beside hundreds of idle connections, and wall-clock steps (S10, S11, S13)."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from lampctl.testing import close_all, idle_connections, wait_until
from tests.faults.disk import DatabaseLock
from tests.faults.driver import Driver
from tests.faults.oracle import Oracle, summary

pytestmark = pytest.mark.integration
IDLE = 300  # past the server's limit of 250: the idlest are closed to make room (lampctl/platform/httpserver.py)


def storm(rig, seed: int, seconds: float) -> dict:
    rig.start()
    with Driver(rig, threads=50, seed=seed) as driver:
        end = time.monotonic() + seconds
        idle = idle_connections(rig.svc.port, IDLE)
        try:
            stop_a_lit_lamp(rig)
            # The storm's length is the fault itself; the oracle judges what happened in it.
            while time.monotonic() < end and not driver.errors:
                time.sleep(0.1)
        finally:
            close_all(idle)
    oracle_figures = judge(rig)
    assert oracle_figures["stops_measured"] > 0, "no Stop met a lamp that was on: the storm tested nothing"
    return oracle_figures


def stop_a_lit_lamp(rig) -> None:
    """One Stop sure to meet its lamp on in the storm, whatever the clients' seed drew."""

    def attempt() -> bool:
        if rig.call("start", "room1", seconds=30).status != 201:
            rig.call("reset", "room1", user="admin")  # an E-stop of the storm's may have latched it
            return False
        return rig.call("stop", "room1").status == 200  # else a client's Stop came first: again

    wait_until(attempt, 60, "a Stop of a lamp that was on", step=0.05)


def judge(rig) -> dict:
    rig.finish()
    oracle = Oracle(rig)
    oracle.check()
    figures = summary(rig, oracle)
    print(figures)
    return figures


@pytest.mark.timeout(240)
def test_s10_s11_fifty_clients_and_idle_connections(rig, seed):
    storm(rig, seed, seconds=15)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_s10_s11_fifty_clients_and_idle_connections_soak(rig, seed):
    storm(rig, seed, seconds=60)


def stepped_dates(rig) -> set[str]:
    return {r["started_at"][:10] for r in rig.rows("SELECT started_at FROM sessions")}


def real_dates() -> set[str]:
    """Today's UTC date, and the neighbour a minute either side of now (a trial near midnight)."""
    now = datetime.now(UTC)
    return {(now + timedelta(minutes=m)).date().isoformat() for m in (-1, 0, 1)}


def clock_steps(rig, seed: int, steps: int) -> None:
    """The wall clock stepped forwards and back (NTP after a dead RTC battery), with a kill -9 among the steps.

    The offsets are random; so that what the trial must show does not hang on the luck of its
    seed, the first step is sure to move the date (two days either way) and is held until a
    session is recorded under it.
    """
    rng = random.Random(seed)
    rig.start()
    with Driver(rig, threads=4, seed=seed):
        for n in range(steps):
            time.sleep(rng.uniform(0.2, 1.0))  # the random moment of the step
            if n == 0:
                offset = rng.choice((-2, 2)) * 86400
            else:
                offset = rng.choice((-86400, -3600, -60, 60, 3600, 86400)) * rng.choice((1, 2))
            rig.wall_file.write_text(str(offset))
            rig.fault(f"wall clock step to {offset:+d} s", target="clock")
            if n == 0:
                # The driver's clients start sessions all the time; one of them lands on the new date.
                wait_until(
                    lambda: stepped_dates(rig) - real_dates(), 60, f"a session recorded {offset:+d} s away", step=0.1
                )
            if n % 3 == 2:
                time.sleep(rng.uniform(0.1, 1.0))
                rig.kill9()
                wait_until(lambda: not any(rig.firmware_now().values()), rig.watchdog_s + 5, "the firmware's cut")
                rig.start()
    judge(rig)
    assert len(stepped_dates(rig)) > 1, "no session was recorded under a stepped clock"


@pytest.mark.timeout(240)
def test_s13_wall_clock_steps(rig, seed):
    clock_steps(rig, seed, steps=6)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_s13_wall_clock_steps_soak(rig, seed):
    clock_steps(rig, seed, steps=40)


@pytest.mark.timeout(240)
def test_s10_stop_never_queues_behind_stops_waiting_for_their_records(rig):
    """A Stop's reply waits (up to 2 s) for its record; with the disk failing, Stops that came
    first must not hold every thread of the safety lane while a later Stop waits its turn."""
    rig.start()
    lock = DatabaseLock(rig.database)  # every record now waits: each Stop's reply takes its full 2 s
    fault = rig.fault("database locked", target="disk")
    try:
        blockers = [threading.Thread(target=rig.call, args=("stop-all",)) for _ in range(6)]
        for t in blockers:
            t.start()
        # All six are past the controller, each waiting for its record (one event each).
        wait_until(lambda: rig.health().get("log", {}).get("pending", 0) >= 6, 30, "the Stops waiting")
        starter = threading.Thread(target=rig.call, args=("start", "room1"), kwargs={"seconds": 30})
        starter.start()
        wait_until(lambda: any(l["relay_on"] for l in rig.health().get("lamps", [])), 30, "room1 on")
        stop = rig.call("stop", "room1")
        assert stop.status in (200, 409), stop.body  # 409 if a queued stop-all got there first
        for t in [*blockers, starter]:
            t.join(30)
    finally:
        lock.release()
        fault.t1 = time.monotonic()
    wait_until(lambda: rig.health().get("log", {}).get("pending") == 0, 30, "the records written")
    judge(rig)  # S10: room1's relay off within the bound of its Stop
