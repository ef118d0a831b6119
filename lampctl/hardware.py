"""The only module that touches GPIO: relays, E-stop button, indicator, feedback inputs."""
from __future__ import annotations

import threading
from typing import Callable, Sequence

from gpiozero import Button, DigitalInputDevice, DigitalOutputDevice, Device
from gpiozero.pins.mock import MockFactory, MockPin

from lampctl.config import LampConfig


def make_pin_factory(name: str):
    """A gpiozero pin factory by its entry-point name ("mock" off a Pi)."""
    if name == "mock":
        return MockFactory()
    from importlib.metadata import entry_points

    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name == name:
            try:
                return ep.load()()
            except ImportError as exc:
                raise RuntimeError(f"pin factory {name!r} needs the {exc.name} package "
                                   f"(on Raspberry Pi OS: apt install python3-{exc.name})") from None
    raise RuntimeError(f"gpiozero has no pin factory named {name!r}")


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


class RelayBank:
    """One relay output per lamp, by index, plus the optional E-stop, indicator and feedback."""

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
        self._closed = False
        factory = pin_factory or Device.pin_factory
        if wire_feedback and isinstance(factory, MockFactory):
            # Simulation: let each feedback input follow its relay like a real contact.
            for lamp in lamps:
                if lamp.feedback_pin is not None:
                    fb = factory.pin(lamp.feedback_pin)
                    factory.pin(lamp.relay_pin, pin_class=_WiredMockPin, feedback_pin=fb,
                                active_high=lamp.active_high)
        # initial_value=False: the relay is driven OFF the instant the pin is claimed (S1).
        self._relays = [
            DigitalOutputDevice(lamp.relay_pin, active_high=lamp.active_high, initial_value=False,
                                pin_factory=factory)
            for lamp in lamps
        ]
        self._feedback = [
            DigitalInputDevice(lamp.feedback_pin, pull_up=False, pin_factory=factory)
            if lamp.feedback_pin is not None else None
            for lamp in lamps
        ]
        self._estop = (Button(estop_pin, pull_up=True, pin_factory=factory)
                       if estop_pin is not None else None)
        self._indicator = (DigitalOutputDevice(indicator_pin, initial_value=False, pin_factory=factory)
                           if indicator_pin is not None else None)

    def __len__(self) -> int:
        return len(self._relays)

    def set(self, index: int, on: bool) -> None:
        with self._lock:
            if self._closed:
                if on:
                    raise RuntimeError("relay bank is closed")
                return
            self._relays[index].value = bool(on)
            if self._indicator is not None:
                self._indicator.value = any(r.value for r in self._relays)

    def all_off(self) -> None:
        """Every relay OFF; safe to call repeatedly, from any thread, after close."""
        with self._lock:
            if self._closed:
                return
            for relay in self._relays:
                try:
                    relay.off()
                except Exception:  # one broken output must not keep the others on
                    pass
            if self._indicator is not None:
                self._indicator.off()

    def is_on(self, index: int) -> bool:
        """What the output device is driving now (not what the state machine believes)."""
        with self._lock:
            if self._closed:
                return False
            return bool(self._relays[index].value)

    def has_feedback(self, index: int) -> bool:
        return self._feedback[index] is not None

    def feedback_on(self, index: int) -> bool | None:
        """Whether the lamp's feedback input reads powered; None without a feedback input."""
        fb = self._feedback[index]
        if fb is None or self._closed:
            return None
        return bool(fb.value)

    @property
    def estop_pressed(self) -> bool:
        return bool(self._estop is not None and not self._closed and self._estop.is_pressed)

    def on_estop(self, callback: Callable[[], None]) -> None:
        if self._estop is not None:
            # gpiozero wants a real function (it inspects the signature), not a Mock.
            def pressed():
                callback()

            self._estop.when_pressed = pressed

    def close(self) -> None:
        """Relays OFF, then release every pin. Idempotent."""
        self.all_off()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            devices = [*self._relays, *[f for f in self._feedback if f], self._estop, self._indicator]
            for dev in devices:
                if dev is not None:
                    dev.close()
