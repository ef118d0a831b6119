"""Every terminating signal, and SIGSTOP/SIGCONT of the service and of the microcontroller, under load (S1, S7, S13, S15)."""

from __future__ import annotations

import random
import signal
import time

import pytest

from lampctl.testing import wait_until
from tests.faults.driver import Driver
from tests.faults.oracle import Oracle, summary

pytestmark = pytest.mark.integration
# Named here, not taken from the code (tests/test_s1_process.py checks every other one's handler).
SIGNALS = (
    "SIGTERM",
    "SIGINT",
    "SIGHUP",
    "SIGQUIT",
    "SIGABRT",
    "SIGUSR1",
    "SIGUSR2",
    "SIGALRM",
    "SIGVTALRM",
    "SIGPROF",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGPWR",
    "SIGRTMIN",
)


def judge(rig) -> dict:
    rig.finish()
    oracle = Oracle(rig)
    oracle.check()
    figures = summary(rig, oracle)
    print(figures)
    return figures


@pytest.mark.timeout(300)
def test_s1_s15_every_terminating_signal_under_load(rig, seed):
    rng = random.Random(seed)
    rig.start()
    with Driver(rig, threads=4, seed=seed):
        for name in SIGNALS:
            time.sleep(rng.uniform(0.05, 1.0))  # the random moment the signal lands
            rc = rig.stop(getattr(signal, name))
            assert rc == 0, f"{name}: exit {rc}: {rig.svc.stderr()[-2000:]}"
            rig.start()
    judge(rig)


def freeze(rig, target: str, seconds: float) -> None:
    """SIGSTOP the service or the simulator for `seconds`, then SIGCONT."""
    proc = rig.svc.proc if target == "service" else rig.sim.proc
    fault = rig.fault("SIGSTOP " + target, target)
    proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)  # the fault's length, drawn at random by the caller
    finally:
        proc.send_signal(signal.SIGCONT)
        fault.t1 = time.monotonic()


def freeze_trials(rig, seed: int, trials: int) -> None:
    rng = random.Random(seed)
    rig.start()
    with Driver(rig, threads=4, seed=seed):
        for n in range(trials):
            time.sleep(rng.uniform(0.05, 1.0))
            target = "service" if n % 2 == 0 else "simulator"
            # Either side of the firmware's watchdog: a hiccup, or long enough for it to cut.
            freeze(rig, target, rng.choice((rng.uniform(0.05, 0.5), rig.watchdog_s + rng.uniform(0.2, 1.5))))
            wait_until(lambda: rig.health(), 20, "the service answering again")
    judge(rig)


@pytest.mark.timeout(300)
def test_s7_s13_sigstop_sigcont_of_service_and_simulator(rig, seed):
    freeze_trials(rig, seed, trials=6)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_s7_s13_sigstop_sigcont_of_service_and_simulator_soak(rig, seed):
    freeze_trials(rig, seed, trials=60)
