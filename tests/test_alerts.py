"""Per-lamp buzzer and indicator on mock pins: a warning a minute before the end, a tone at the end and on a fault."""

from __future__ import annotations

import pytest

from lampctl import config as config_mod
from lampctl.core.controller import SessionController
from lampctl.devices.hardware import RelayBank
from tests.conftest import BASE_CONFIG, pin_history, write_config
from tests.procs import wait_until

BUZZER1, INDICATOR1, BUZZER2 = 5, 6, 13
ALERT_CONFIG = BASE_CONFIG.replace(
    "feedback_pin = 22\n", f"buzzer_pin = {BUZZER1}\nindicator_pin = {INDICATOR1}\n"
).replace("cooldown_s = 60\n", f"cooldown_s = 60\nbuzzer_pin = {BUZZER2}\n")


@pytest.fixture
def alert_ctl(tmp_path, factory, clock, usage_log):
    cfg = config_mod.load(write_config(tmp_path, ALERT_CONFIG, "alerts.toml"))
    bank = RelayBank(cfg.lamps, factory, estop_pin=cfg.safety.estop_pin)
    ctl = SessionController(cfg.lamps, bank, clock, usage_log)
    yield ctl
    bank.close()


def tones(factory, pin: int) -> int:
    return pin_history(factory, pin).count(True)


def settle(factory, pin: int, count: int) -> None:
    """Wait (on the condition, never a fixed delay) until the buzzer has sounded `count` tones and fallen silent."""
    wait_until(
        lambda: tones(factory, pin) == count and pin_history(factory, pin)[-1] is False,
        10,
        f"{count} tone(s) on GPIO{pin}",
    )


def test_alerts_indicator_lit_only_while_the_lamp_is_on(alert_ctl, factory, clock):
    alert_ctl.start("room1", 600, "ann")
    assert pin_history(factory, INDICATOR1) == [False, True]
    clock.advance(30)
    alert_ctl.stop("room1", "ann")
    assert pin_history(factory, INDICATOR1) == [False, True, False]
    assert pin_history(factory, BUZZER1) == [False]  # a Stop at the couch needs no call


def test_alerts_warning_one_minute_before_the_end_then_the_end_tone(alert_ctl, factory, clock):
    alert_ctl.start("room1", 600, "ann")
    assert alert_ctl.tick() == pytest.approx(clock.monotonic() + 540)  # the scheduler wakes for the warning
    clock.advance(539)
    alert_ctl.tick()
    assert pin_history(factory, BUZZER1) == [False]
    clock.advance(1)
    assert alert_ctl.tick() == pytest.approx(clock.monotonic() + 60)  # then for the deadline
    settle(factory, BUZZER1, 1)
    clock.advance(30)
    alert_ctl.tick()  # once per deadline
    assert tones(factory, BUZZER1) == 1
    clock.advance(30)
    alert_ctl.tick()
    settle(factory, BUZZER1, 2)
    assert pin_history(factory, 17) == [False, True, False]
    assert pin_history(factory, BUZZER2) == [False]  # only that lamp's buzzer


def test_alerts_an_extension_rearms_the_warning_and_short_sessions_get_none(alert_ctl, factory, clock):
    alert_ctl.start("room1", 120, "ann")
    clock.advance(60)
    alert_ctl.tick()
    settle(factory, BUZZER1, 1)
    alert_ctl.extend("room1", 300, "ann")
    clock.advance(299)
    alert_ctl.tick()
    assert tones(factory, BUZZER1) == 1
    clock.advance(1)
    alert_ctl.tick()
    settle(factory, BUZZER1, 2)
    alert_ctl.start("room2", 30, "ann")  # a 30 s session: no warning, only the end
    clock.advance(30)
    alert_ctl.tick()
    settle(factory, BUZZER2, 1)


def test_alerts_fault_sounds_the_latched_lamps_buzzer(alert_ctl, factory, clock):
    alert_ctl.start("room1", 600, "ann")
    alert_ctl.fault("firmware link lost: no reply", running_only=True)
    wait_until(lambda: tones(factory, BUZZER1) >= 2, 10, "repeated fault tones")
    assert pin_history(factory, 17) == [False, True, False]
    assert pin_history(factory, INDICATOR1) == [False, True, False]
    assert pin_history(factory, BUZZER2) == [False]  # room2 was off, so not latched


def test_s10_buzzer_sounds_outside_the_controller_lock(alert_ctl, factory, clock):
    """A buzzer whose write hangs must not hold the lock a Stop of another lamp needs."""
    import threading

    entered, release = threading.Event(), threading.Event()
    real_beep = alert_ctl._hw.beep

    def hanging_beep(index, pattern):
        entered.set()
        release.wait(10)
        real_beep(index, pattern)

    alert_ctl._hw.beep = hanging_beep
    alert_ctl.start("room1", 30, "ann")
    alert_ctl.start("room2", 600, "ann")
    clock.advance(30)
    ticker = threading.Thread(target=alert_ctl.tick)
    ticker.start()
    try:
        assert entered.wait(10)
        stopper = threading.Thread(target=alert_ctl.stop, args=("room2", "ann"))
        stopper.start()
        stopper.join(5)
        assert not stopper.is_alive(), "the Stop waited for the buzzer"
        assert pin_history(factory, 18)[-2:] == [False, True]  # room2 is active low: on, then off
    finally:
        release.set()
        ticker.join(10)
