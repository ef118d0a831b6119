"""The only module that touches GPIO: relays, E-stop button, indicators, buzzers, feedback inputs,
the patients' stop buttons and the stands' tilt switches."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from gpiozero import LED, Button, Buzzer, Device, DigitalInputDevice, DigitalOutputDevice
from gpiozero.pins.mock import MockFactory, MockPin

from lampctl.config import LampConfig

log = logging.getLogger(__name__)

# What each buzzer pattern sounds like: (seconds on, seconds off, times).
BEEP_PATTERNS = {
    "end": (1.0, 0.0, 1),  # one long: the session is over
    "warn": (0.15, 0.0, 1),  # one short: the session ends soon
    "fault": (0.25, 0.25, 12),  # repeated for 6 s: a latched fault wants a person at the couch
}


class PinFactoryError(RuntimeError):
    """The configured pin factory cannot be used; str() is one sentence."""


def make_pin_factory(name: str):
    """A gpiozero pin factory by its entry-point name ("mock" off a Pi)."""
    if name == "mock":
        return MockFactory()
    found = {ep.name: ep for ep in entry_points(group="gpiozero_pin_factories")}
    if name not in found:
        raise PinFactoryError(
            f"gpiozero has no pin factory named {name!r} (installed: {', '.join(sorted(found)) or 'none'})."
        )
    try:
        return found[name].load()()
    except ImportError as exc:
        missing = (exc.name or name).split(".")[0]
        raise PinFactoryError(
            f"pin factory {name!r} needs the {missing} package, which is not installed "
            f"(pip install 'lampctl[pi]', or on Raspberry Pi OS: apt install "
            f"python3-{missing.lower()})."
        ) from None
    except Exception as exc:  # e.g. no /dev/gpiochip*: not a Pi, or no permission
        detail = str(exc).strip().rstrip(".") or type(exc).__name__
        raise PinFactoryError(
            f"pin factory {name!r} could not start ({detail}); "
            f"is this a Raspberry Pi and is the service's user in the gpio group?"
        ) from None


class _WiredMockPin(MockPin):
    """A simulated relay output whose contact drives a feedback input, as real wiring would."""

    def __init__(self, factory, info, feedback_pin=None, active_high=True):
        super().__init__(factory, info)
        self.feedback_pin = feedback_pin
        self.active_high = active_high

    def _change_state(self, value):
        if self.feedback_pin is not None:
            powered = bool(value) == self.active_high
            (self.feedback_pin.drive_high if powered else self.feedback_pin.drive_low)()
        return super()._change_state(value)


def _wire_mock_feedback(factory: MockFactory, lamps: Sequence[LampConfig]) -> None:
    """Simulation: let each feedback input follow its relay like a real contact."""
    for lamp in lamps:
        if lamp.feedback_pin is not None:
            fb = factory.pin(lamp.feedback_pin)
            factory.pin(lamp.relay_pin, pin_class=_WiredMockPin, feedback_pin=fb, active_high=lamp.active_high)


def _release(devices: list) -> None:
    """Close devices newest first; one that fails to close does not keep the others claimed."""
    for dev in reversed(devices):
        try:
            dev.close()
        except Exception:
            log.exception("could not release %r", dev)


class RelayBank:
    """One relay output per lamp, by index, plus the optional E-stop, indicators, buzzers and feedback.

    Per lamp (read with getattr so older configs without the keys still work): `indicator_pin`,
    lit while that lamp's relay is on, and `buzzer_pin`, sounded by beep(). The bank-wide
    indicator is lit while any relay is on.
    """

    def __init__(
        self,
        lamps: Sequence[LampConfig],
        pin_factory=None,
        *,
        estop_pin: int | None = None,
        indicator_pin: int | None = None,
        wire_feedback: bool = False,
    ):
        self._lock = threading.Lock()
        # Serialises beep() with close() without ever making set() or all_off() wait.
        self._beep_lock = threading.Lock()
        self._closed = False
        self._factory = pin_factory or Device.pin_factory
        if wire_feedback and isinstance(self._factory, MockFactory):
            _wire_mock_feedback(self._factory, lamps)
        self._devices: list = []
        try:
            self._claim_all(lamps, estop_pin, indicator_pin)
        except BaseException:
            # gpiozero's own habit: a constructor that fails half-way releases what it claimed.
            _release(self._devices)
            raise
        if wire_feedback and isinstance(self._factory, MockFactory):
            for switch in self._tilt:  # simulation: every stand stands upright (its switch closed)
                if switch is not None:
                    switch.pin.drive_low()

    def _claim(self, device_class, pin: int | None, **kwargs):
        if pin is None:
            return None
        device = device_class(pin, pin_factory=self._factory, **kwargs)
        self._devices.append(device)
        return device

    def _claim_all(self, lamps: Sequence[LampConfig], estop_pin, indicator_pin) -> None:
        # Relays first, initial_value=False: each is driven OFF the instant its pin is claimed (S1).
        self._relay_pins = [lamp.relay_pin for lamp in lamps]
        self._active_high = [bool(lamp.active_high) for lamp in lamps]
        self._relays = [
            self._claim(DigitalOutputDevice, lamp.relay_pin, active_high=lamp.active_high, initial_value=False)
            for lamp in lamps
        ]
        self._lamp_indicators = [
            self._claim(LED, getattr(lamp, "indicator_pin", None), initial_value=False) for lamp in lamps
        ]
        self._buzzers = [self._claim(Buzzer, getattr(lamp, "buzzer_pin", None), initial_value=False) for lamp in lamps]
        self._feedback = [self._claim(DigitalInputDevice, lamp.feedback_pin, pull_up=False) for lamp in lamps]
        # S24: a push button or pull cord to ground at the couch; pressed reads low.
        self._patient = [self._claim(Button, getattr(lamp, "stop_pin", None), pull_up=True) for lamp in lamps]
        # S25: a tilt switch closed to ground while the stand is upright, so "pressed" is upright
        # and an open switch reads tilted whether the stand fell or a wire broke.
        self._tilt = [self._claim(Button, getattr(lamp, "tilt_pin", None), pull_up=True) for lamp in lamps]
        self._estop = self._claim(Button, estop_pin, pull_up=True)
        self._indicator = self._claim(LED, indicator_pin, initial_value=False)

    def __len__(self) -> int:
        return len(self._relays)

    def set(self, index: int, on: bool) -> None:
        """Drive one relay, then its indicator and the bank-wide one; raises only if the relay fails."""
        with self._lock:
            if self._closed:
                if on:
                    raise RuntimeError("relay bank is closed")
                return
            self._relays[index].value = bool(on)
            errors = self._show_indicators([index])
        _log_errors(errors)

    def _show_indicators(self, indexes: list[int]) -> list:
        """Indicators follow what the relays drive; a broken LED never fails a relay action."""
        errors = []
        for i in indexes:
            if self._lamp_indicators[i] is not None:
                errors += _attempt(f"indicator of lamp {i}", _follow, self._lamp_indicators[i], [self._relays[i]])
        if self._indicator is not None:
            errors += _attempt("indicator", _follow, self._indicator, self._relays)
        return errors

    def all_off(self) -> None:
        """Every relay OFF; safe to call repeatedly, from any thread, after close.

        One output that fails does not keep the others on: each is tried and each failure
        is logged (after the lock is released, so a slow log never delays a relay).
        """
        with self._lock:
            if self._closed:
                return
            errors = self._all_off_locked()
        _log_errors(errors)

    def _all_off_locked(self) -> list:
        errors = []
        for i, relay in enumerate(self._relays):
            errors += _attempt(f"relay of lamp {i} (pin {self._relay_pins[i]})", relay.off)
        return errors + self._show_indicators(list(range(len(self._relays))))

    def is_on(self, index: int) -> bool:
        """What the output device is driving now (not what the state machine believes), from its pin (S6).

        Read without the bank's lock, so the polls that read every relay back never make a Stop's
        set() or all_off() wait for them (S10), and from the pin's state as gpiozero's `value`
        reads it, without that property's chain of checks (a third of the cost, every relay of
        every poll). False once the bank is closed, also when it closes during the read.
        """
        if self._closed:
            return False
        try:
            return bool(self._relays[index].pin.state) == self._active_high[index]
        except Exception:
            if self._closed:  # closed during the read: its pin is gone (None) or released
                return False
            raise

    def feedback_on(self, index: int) -> bool | None:
        """Whether the lamp's feedback input reads powered; None without a feedback input."""
        fb = self._feedback[index]
        if fb is None or self._closed:
            return None
        return bool(fb.value)

    @property
    def estop_pressed(self) -> bool:
        return bool(self._estop is not None and not self._closed and self._estop.is_pressed)

    def patient_pressed(self, index: int) -> bool:
        """S24: lamp `index`'s patient stop button reads pressed now (False without one)."""
        button = self._patient[index]
        return bool(button is not None and not self._closed and button.is_pressed)

    def tilted(self, index: int) -> bool:
        """S25: lamp `index`'s tilt switch reads open now (False without one, or after close)."""
        switch = self._tilt[index]
        return bool(switch is not None and not self._closed and not switch.is_pressed)

    def has_tilt_switch(self, index: int) -> bool:
        return self._tilt[index] is not None

    def has_patient_button(self, index: int) -> bool:
        return self._patient[index] is not None

    def on_patient_stop(self, callback: Callable[[int], object]) -> None:
        """callback(index) on gpiozero's thread the moment a patient's button is pressed."""
        for index, button in enumerate(self._patient):
            if button is not None:
                button.when_pressed = _calls(callback, index)

    def on_tilt(self, callback: Callable[[int], object]) -> None:
        """callback(index) on gpiozero's thread the moment a stand's tilt switch opens."""
        for index, switch in enumerate(self._tilt):
            if switch is not None:
                switch.when_released = _calls(callback, index)

    def on_estop(self, callback: Callable[[], object]) -> None:
        if self._estop is not None:
            # gpiozero wants a real function (it inspects the signature), not a Mock.
            def pressed():
                callback()

            self._estop.when_pressed = pressed

    def beep(self, index: int, pattern: str) -> None:
        """Sound lamp `index`'s buzzer ("end", "warn" or "fault") in the background; never blocks.

        A new pattern replaces one still sounding. Without a buzzer_pin, or after close, nothing.
        """
        if pattern not in BEEP_PATTERNS:
            raise ValueError(f"unknown beep pattern {pattern!r} (one of: {', '.join(BEEP_PATTERNS)})")
        buzzer = self._buzzers[index]
        if buzzer is None:
            return
        on_time, off_time, times = BEEP_PATTERNS[pattern]
        with self._beep_lock:
            if self._closed:
                return
            errors = _attempt(f"buzzer of lamp {index}", buzzer.beep, on_time, off_time, times, background=True)
        _log_errors(errors)

    def close(self) -> None:
        """Relays OFF, buzzers silent, then release every pin. Idempotent."""
        with self._lock:
            if self._closed:
                return
            errors = self._all_off_locked()
            self._closed = True
        with self._beep_lock:
            for i, buzzer in enumerate(self._buzzers):
                if buzzer is not None:
                    errors += _attempt(f"buzzer of lamp {i}", buzzer.off)
        _log_errors(errors)
        _release(self._devices)


def _attempt(what: str, action: Callable[..., object], *args, **kwargs) -> list[tuple[str, Exception]]:
    """Run one output action; return [(what, error)] instead of raising."""
    try:
        action(*args, **kwargs)
    except Exception as exc:
        return [(what, exc)]
    return []


def _calls(callback: Callable[[int], object], index: int) -> Callable[[], None]:
    # gpiozero wants a real function of no arguments (it inspects the signature), not a partial or a Mock.
    def fire() -> None:
        callback(index)

    return fire


def _follow(led, relays) -> None:
    led.value = any(relay.value for relay in relays)


def _log_errors(errors: list[tuple[str, Exception]]) -> None:
    for what, exc in errors:
        log.error("%s failed: %s: %s", what, type(exc).__name__, exc, exc_info=exc)
