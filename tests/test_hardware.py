"""The GPIO layer on gpiozero's mock pins: relays, active-low, indicators, buzzers, feedback, E-stop, close."""

from __future__ import annotations

import logging
import re
import threading
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import pytest
from gpiozero import DigitalOutputDevice
from gpiozero.exc import GPIOPinInUse
from gpiozero.pins.mock import MockFactory, MockPin
from packaging.specifiers import SpecifierSet

from lampctl.devices import hardware
from lampctl.devices.hardware import BEEP_PATTERNS, PinFactoryError, RelayBank, make_pin_factory
from tests.conftest import pin_history
from tests.procs import wait_until

ROOM1, ROOM2, FEEDBACK, ESTOP, INDICATOR = 17, 18, 22, 27, 23
LAMP_LED, LAMP_BUZZER = 5, 6


def lamp(relay_pin, *, active_high=True, feedback_pin=None, indicator_pin=None, buzzer_pin=None):
    """A lamp as RelayBank reads it; indicator_pin and buzzer_pin are the per-lamp outputs."""
    return SimpleNamespace(
        relay_pin=relay_pin,
        active_high=active_high,
        feedback_pin=feedback_pin,
        indicator_pin=indicator_pin,
        buzzer_pin=buzzer_pin,
    )


@pytest.fixture
def bank(factory):
    bank = RelayBank(
        [lamp(ROOM1, feedback_pin=FEEDBACK), lamp(ROOM2, active_high=False)],
        factory,
        estop_pin=ESTOP,
        indicator_pin=INDICATOR,
    )
    yield bank
    bank.close()


class BrokenOutputPin(MockPin):
    """An output whose driver fails on demand (a dead GPIO expander, a pin in the wrong mode)."""

    broken = False

    def _change_state(self, value):
        if self.broken:
            raise OSError("GPIO write failed")
        return super()._change_state(value)


class GatedPin(MockPin):
    """An output whose writes to ON wait for a gate: proves the writer is not the caller."""

    def __init__(self, factory, info):
        super().__init__(factory, info)
        self.gate = threading.Event()

    def _change_state(self, value):
        if value:
            assert self.gate.wait(30), "gate never opened"
        return super()._change_state(value)


def on_durations(factory, number) -> list[float]:
    """How long each ON of a mock pin lasted (a PinState's timestamp is the time since the last change)."""
    states = factory.pin(number).states
    return [
        after.timestamp for before, after in zip(states, states[1:], strict=False) if before.state and not after.state
    ]


# ---- relays -----------------------------------------------------------------------------
def test_hardware_relays_switch_by_index_and_read_back(bank, factory):
    assert len(bank) == 2
    bank.set(0, True)
    assert bank.is_on(0) and not bank.is_on(1)
    bank.set(0, False)
    assert pin_history(factory, ROOM1) == [False, True, False]
    assert pin_history(factory, ROOM2) == [False, True]  # claimed OFF (active-low), never touched


def test_hardware_active_low_relay_drives_its_pin_low_for_on(bank, factory):
    bank.set(1, True)
    assert bank.is_on(1) and factory.pin(ROOM2).state is False
    bank.set(1, False)
    # Claimed OFF (high), ON (low), OFF (high): the coil never saw a stray ON.
    assert pin_history(factory, ROOM2) == [False, True, False, True]
    assert pin_history(factory, ROOM1) == [False]


def test_s6_relay_read_back_is_the_pin_even_when_driven_outside_the_bank(bank, factory):
    bank._relays[0].on()  # switched behind the bank's back
    assert bank.is_on(0)
    bank._relays[1].on()  # active-low: its pin goes low
    assert bank.is_on(1) and factory.pin(ROOM2).state is False
    bank._relays[0].off()
    assert not bank.is_on(0)


def test_s10_reading_a_relay_back_never_waits_for_the_bank_lock(bank):
    """A poll reads every relay back; while a Stop's all_off() holds the bank's lock it must not
    queue behind it, nor make the Stop queue behind the poll."""
    bank.set(0, True)
    got = []
    with bank._lock:  # as set() and all_off() hold it while they drive the outputs
        reader = threading.Thread(target=lambda: got.append(bank.is_on(0)))
        reader.start()
        reader.join(10)
        alive = reader.is_alive()
    assert not alive and got == [True], "is_on waited for the bank's lock"


def test_hardware_a_relay_read_while_the_bank_closes_reads_off(bank, monkeypatch):
    bank.set(0, True)

    class ClosingUnderTheRead:
        """A relay whose bank closes between is_on's look at the flag and its read of the pin."""

        @property
        def pin(self):
            bank._closed = True  # what close() marks first, before it releases the pins
            return None

    monkeypatch.setattr(bank, "_relays", [ClosingUnderTheRead(), bank._relays[1]])
    assert bank.is_on(0) is False
    assert not bank.is_on(1)  # and after close


def test_hardware_a_relay_that_cannot_be_read_raises_while_the_bank_is_open(bank, monkeypatch):
    class Broken:
        pin = None  # as a released pin: reading it fails, and that is not an OFF

    monkeypatch.setattr(bank, "_relays", [Broken(), bank._relays[1]])
    with pytest.raises(AttributeError):
        bank.is_on(0)


def test_s1_relays_are_off_the_instant_they_are_claimed(factory):
    bank = RelayBank([lamp(ROOM1), lamp(ROOM2, active_high=False)], factory)
    bank.on_estop(lambda: None)  # without an estop_pin: nothing wired, nothing pressed
    assert bank.estop_pressed is False
    bank.close()
    assert pin_history(factory, ROOM1) == [False]
    assert pin_history(factory, ROOM2) == [False, True]  # driven high (OFF), then released


def test_hardware_all_off_turns_every_relay_and_indicator_off(bank, factory):
    bank.set(0, True)
    bank.set(1, True)
    bank.all_off()
    bank.all_off()  # twice is harmless
    assert pin_history(factory, ROOM1) == [False, True, False]
    assert pin_history(factory, ROOM2) == [False, True, False, True]
    assert pin_history(factory, INDICATOR) == [False, True, False]


def test_hardware_all_off_tries_every_relay_and_logs_the_one_that_failed(factory, caplog):
    broken = factory.pin(ROOM1, pin_class=BrokenOutputPin)
    bank = RelayBank([lamp(ROOM1), lamp(ROOM2), lamp(24)], factory)
    for i in range(3):
        bank.set(i, True)
    broken.broken = True
    with caplog.at_level(logging.ERROR, logger="lampctl.devices.hardware"):
        bank.all_off()
    assert pin_history(factory, ROOM2) == [False, True, False]
    assert pin_history(factory, 24) == [False, True, False]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["relay of lamp 0 (pin 17) failed: OSError: GPIO write failed"]
    broken.broken = False
    bank.close()
    assert pin_history(factory, ROOM1) == [False, True, False]


def test_hardware_a_relay_that_fails_to_switch_raises_to_the_controller(factory):
    broken = factory.pin(ROOM1, pin_class=BrokenOutputPin)
    bank = RelayBank([lamp(ROOM1)], factory)
    broken.broken = True
    with pytest.raises(OSError):
        bank.set(0, True)
    broken.broken = False
    bank.close()
    assert pin_history(factory, ROOM1) == [False]


# ---- indicators -------------------------------------------------------------------------
def test_hardware_bank_indicator_lit_while_any_relay_is_on(bank, factory):
    bank.set(0, True)
    bank.set(1, True)
    bank.set(0, False)
    assert pin_history(factory, INDICATOR) == [False, True]
    bank.set(1, False)
    assert pin_history(factory, INDICATOR) == [False, True, False]


def test_hardware_lamp_indicator_follows_only_its_own_relay(factory):
    bank = RelayBank([lamp(ROOM1, indicator_pin=LAMP_LED), lamp(ROOM2, active_high=False, indicator_pin=24)], factory)
    bank.set(1, True)
    assert pin_history(factory, 24) == [False, True]
    assert pin_history(factory, LAMP_LED) == [False]
    bank.set(0, True)
    bank.set(0, False)
    bank.all_off()
    assert pin_history(factory, LAMP_LED) == [False, True, False]
    assert pin_history(factory, 24) == [False, True, False]  # active-low relay, active-high LED
    bank.close()


def test_hardware_a_broken_indicator_never_fails_a_relay_action(factory, caplog):
    led = factory.pin(LAMP_LED, pin_class=BrokenOutputPin)
    bank = RelayBank([lamp(ROOM1, indicator_pin=LAMP_LED)], factory)
    led.broken = True
    with caplog.at_level(logging.ERROR, logger="lampctl.devices.hardware"):
        bank.set(0, True)
        bank.set(0, False)
    assert pin_history(factory, ROOM1) == [False, True, False]
    assert [r.getMessage() for r in caplog.records] == ["indicator of lamp 0 failed: OSError: GPIO write failed"] * 2
    led.broken = False
    bank.close()


def test_hardware_config_without_per_lamp_outputs_still_works(cfg, factory):
    # LampConfig may predate indicator_pin/buzzer_pin: read with getattr, default none.
    bank = RelayBank(cfg.lamps, factory)
    bank.set(0, True)
    bank.beep(0, "end")
    bank.close()
    assert pin_history(factory, cfg.lamps[0].relay_pin) == [False, True, False]


# ---- feedback and E-stop ----------------------------------------------------------------
def test_hardware_feedback_input_reads_the_contact(bank, factory):
    assert bank.feedback_on(0) is False
    factory.pin(FEEDBACK).drive_high()
    assert bank.feedback_on(0) is True
    assert bank.feedback_on(1) is None  # no feedback_pin


def test_hardware_simulated_feedback_follows_its_relay(factory):
    bank = RelayBank(
        [lamp(ROOM1, feedback_pin=FEEDBACK), lamp(ROOM2, active_high=False, feedback_pin=24)],
        factory,
        wire_feedback=True,
    )
    assert [bank.feedback_on(0), bank.feedback_on(1)] == [False, False]
    bank.set(1, True)
    assert [bank.feedback_on(0), bank.feedback_on(1)] == [False, True]
    bank.close()
    assert pin_history(factory, 24)[-1] is False


def test_s5_estop_button_calls_back_in_the_pressing_thread(bank, factory):
    calls = []
    bank.on_estop(lambda: calls.append(threading.current_thread()))
    assert bank.estop_pressed is False
    factory.pin(ESTOP).drive_low()  # button to ground, pull-up: pressed is low
    assert calls == [threading.current_thread()]
    assert bank.estop_pressed is True
    factory.pin(ESTOP).drive_high()
    factory.pin(ESTOP).drive_low()
    assert len(calls) == 2


# ---- close and construction -------------------------------------------------------------
def test_s1_close_turns_relays_off_releases_pins_and_is_idempotent(factory):
    bank = RelayBank(
        [lamp(ROOM1, indicator_pin=LAMP_LED, buzzer_pin=LAMP_BUZZER), lamp(ROOM2, active_high=False)],
        factory,
        estop_pin=ESTOP,
        indicator_pin=INDICATOR,
    )
    bank.set(0, True)
    bank.set(1, True)
    bank.close()
    bank.close()
    assert pin_history(factory, ROOM1) == [False, True, False]
    assert pin_history(factory, ROOM2) == [False, True, False, True]
    assert pin_history(factory, LAMP_LED) == [False, True, False]
    assert pin_history(factory, INDICATOR) == [False, True, False]
    assert not bank.is_on(0) and bank.feedback_on(0) is None and not bank.estop_pressed
    bank.all_off()  # after close: a no-op, not an error
    bank.set(0, False)
    with pytest.raises(RuntimeError, match="closed"):
        bank.set(0, True)
    # Every pin is free again: a new bank claims the same ones.
    RelayBank(
        [lamp(ROOM1, indicator_pin=LAMP_LED, buzzer_pin=LAMP_BUZZER), lamp(ROOM2, active_high=False)],
        factory,
        estop_pin=ESTOP,
        indicator_pin=INDICATOR,
    ).close()


def test_hardware_failed_constructor_releases_every_pin_it_claimed(factory):
    holder = DigitalOutputDevice(ESTOP, pin_factory=factory)  # another device holds the E-stop pin
    lamps = [lamp(ROOM1, indicator_pin=LAMP_LED, buzzer_pin=LAMP_BUZZER), lamp(ROOM2, feedback_pin=FEEDBACK)]
    with pytest.raises(GPIOPinInUse) as err:
        RelayBank(lamps, factory, estop_pin=ESTOP, indicator_pin=INDICATOR)
    holder.close()
    # err's traceback keeps the half-built bank alive, as a caller that logs the error would:
    # gpiozero's __del__ cannot be what frees the pins here.
    assert any(isinstance(entry.frame.f_locals.get("self"), RelayBank) for entry in err.traceback)
    # The relays were claimed OFF and never switched; now every pin can be claimed again.
    assert pin_history(factory, ROOM1) == [False]
    assert pin_history(factory, ROOM2) == [False]
    bank = RelayBank(lamps, factory, estop_pin=ESTOP, indicator_pin=INDICATOR)
    bank.close()


def test_hardware_a_later_invalid_pin_releases_the_relays_already_claimed(factory):
    with pytest.raises(Exception, match="99") as err:
        RelayBank([lamp(ROOM1), lamp(99)], factory)
    DigitalOutputDevice(ROOM1, pin_factory=factory).close()  # would raise GPIOPinInUse if leaked
    assert any(isinstance(entry.frame.f_locals.get("self"), RelayBank) for entry in err.traceback)


# ---- buzzer -----------------------------------------------------------------------------
def test_hardware_beep_end_is_one_long_tone_and_never_blocks(factory):
    gated = factory.pin(LAMP_BUZZER, pin_class=GatedPin)
    bank = RelayBank([lamp(ROOM1, buzzer_pin=LAMP_BUZZER)], factory)
    bank.beep(0, "end")  # returns although the buzzer's first write is still held at the gate
    assert pin_history(factory, LAMP_BUZZER) == [False]
    gated.gate.set()
    wait_until(lambda: len(pin_history(factory, LAMP_BUZZER)) == 3, 10, "the end tone")
    assert pin_history(factory, LAMP_BUZZER) == [False, True, False]
    assert on_durations(factory, LAMP_BUZZER)[0] >= BEEP_PATTERNS["end"][0] * 0.99
    bank.close()


def test_hardware_beep_warn_is_one_short_tone(factory):
    bank = RelayBank([lamp(ROOM1), lamp(ROOM2, buzzer_pin=LAMP_BUZZER)], factory)
    bank.beep(1, "warn")
    wait_until(lambda: len(pin_history(factory, LAMP_BUZZER)) == 3, 10, "the warning tone")
    assert pin_history(factory, LAMP_BUZZER) == [False, True, False]
    assert BEEP_PATTERNS["warn"][0] < BEEP_PATTERNS["end"][0] / 2
    bank.close()


def test_hardware_beep_fault_repeats_until_close_silences_it(factory):
    bank = RelayBank([lamp(ROOM1, buzzer_pin=LAMP_BUZZER)], factory)
    bank.set(0, True)
    bank.beep(0, "fault")
    wait_until(
        lambda: pin_history(factory, LAMP_BUZZER)[:6] == [False, True, False, True, False, True],
        10,
        "three fault tones",
    )
    bank.close()
    history = pin_history(factory, LAMP_BUZZER)
    assert history[-1] is False and len(history) < 2 * BEEP_PATTERNS["fault"][2] + 1
    assert pin_history(factory, ROOM1) == [False, True, False]
    bank.beep(0, "fault")  # after close: nothing
    assert pin_history(factory, LAMP_BUZZER) == history


def test_hardware_beep_without_buzzer_is_silent_and_unknown_pattern_refused(bank):
    bank.beep(0, "end")
    with pytest.raises(ValueError, match="unknown beep pattern 'chime'"):
        bank.beep(0, "chime")


# ---- pin factories ----------------------------------------------------------------------
def _fail_to_start():
    raise OSError("can not open gpiochip")


def _with_entry_point(mocker, name, value):
    ep = EntryPoint(name=name, value=value, group="gpiozero_pin_factories")
    mocker.patch.object(hardware, "entry_points", return_value=[ep])


def test_hardware_mock_pin_factory_off_a_pi():
    assert isinstance(make_pin_factory("mock"), MockFactory)


def test_hardware_unknown_pin_factory_is_one_sentence():
    with pytest.raises(PinFactoryError) as err:
        make_pin_factory("gpio-of-dreams")
    text = str(err.value)
    assert text.startswith("gpiozero has no pin factory named 'gpio-of-dreams' (installed: ")
    assert "lgpio" in text and "\n" not in text and text.endswith(").")


def test_hardware_pin_factory_missing_its_package_is_one_sentence(mocker):
    _with_entry_point(mocker, "lgpio", "lampctl_no_such_gpio_module:Factory")
    with pytest.raises(PinFactoryError) as err:
        make_pin_factory("lgpio")
    assert str(err.value) == (
        "pin factory 'lgpio' needs the lampctl_no_such_gpio_module package, which is not "
        "installed (pip install 'lampctl[pi]', or on Raspberry Pi OS: apt install "
        "python3-lampctl_no_such_gpio_module)."
    )
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_hardware_pin_factory_that_cannot_start_is_one_sentence(mocker):
    _with_entry_point(mocker, "lgpio", "tests.test_hardware:_fail_to_start")
    with pytest.raises(PinFactoryError) as err:
        make_pin_factory("lgpio")
    assert str(err.value) == (
        "pin factory 'lgpio' could not start (can not open gpiochip); is this a Raspberry "
        "Pi and is the service's user in the gpio group?"
    )


# ---- the Pi install: gpiozero's lgpio factory and everything else, locked with hashes -----
LOCK = Path(__file__).resolve().parent.parent / "deploy" / "requirements-pi.txt"
LOCK_COMMAND = (
    "uv pip compile pyproject.toml --extra pi --extra pico --python-version 3.11 "
    "--python-platform aarch64-unknown-linux-gnu --generate-hashes -o deploy/requirements-pi.txt"
)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_hardware_pi_lock_pins_every_runtime_dependency_with_a_hash():
    project = tomllib.loads((LOCK.parent.parent / "pyproject.toml").read_text())["project"]
    # Everything deploy/install.sh installs: the runtime, lgpio and mpremote for the Pico.
    wanted = project["dependencies"] + project["optional-dependencies"]["pi"] + project["optional-dependencies"]["pico"]
    lock = LOCK.read_text()
    assert LOCK_COMMAND in lock, f"regenerate the lock with: {LOCK_COMMAND}"
    pin_re = r"^([A-Za-z0-9_.-]+)==(\S+)((?: \\\n    --hash=sha256:[0-9a-f]{64})+)$"
    pinned = {_canonical(m[1]): (m[2], m[3].count("--hash=")) for m in re.finditer(pin_re, lock, re.M)}
    assert len(pinned) == len(re.findall(r"^\S+==", lock, re.M)), "every pinned line carries its hashes"
    assert {"lgpio", "mpremote"} <= set(pinned) and len(pinned) > len(wanted)  # the extras and the transitive ones
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group()
        assert _canonical(name) in pinned, f"{name} is not in {LOCK.name}; regenerate it: {LOCK_COMMAND}"
        version, hashes = pinned[_canonical(name)]
        allowed = SpecifierSet(requirement[len(name) :].split(";")[0].strip())
        assert hashes and allowed.contains(version, prereleases=True), f"the lock's {version} is outside {requirement}"
