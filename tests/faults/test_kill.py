"""kill -9 at random moments while clients start, extend and stop sessions (S4, S7, S9, S12)."""

from __future__ import annotations

import random
import time

import pytest

from lampctl.testing import wait_until
from tests.faults.driver import Driver
from tests.faults.oracle import Oracle, summary

pytestmark = pytest.mark.integration


def kill_trials(rig, seed: int, trials: int) -> None:
    rng = random.Random(seed)
    rig.start()
    with Driver(rig, threads=4, seed=seed):
        for _ in range(trials):
            # The random moment: somewhere in the first 1.5 s of a life, sessions starting and ending.
            time.sleep(rng.uniform(0.05, 1.5))
            rig.kill9()
            # S7: the microcontroller cuts every output on its own once the heartbeats stop.
            wait_until(lambda: not any(rig.firmware_now().values()), rig.watchdog_s + 5, "the firmware's cut")
            rig.start()
    rig.finish()
    oracle = Oracle(rig)
    oracle.check()
    print(summary(rig, oracle))


def test_s4_s7_s9_kill9_at_random_moments(rig, seed):
    kill_trials(rig, seed, trials=10)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_s4_s7_s9_kill9_at_random_moments_soak(rig, seed):
    kill_trials(rig, seed, trials=100)
