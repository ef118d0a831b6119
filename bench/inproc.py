"""In-process figures on mock pins and the real clock: cutoff overshoot and E-stop press to relays off.

Times come from the mock pins themselves (gpiozero's MockPin stamps each change with
time.monotonic), not from what the controller believes it did. Each figure has its
baseline measured in the same run under the same load: a bare Condition.wait for the
cutoff, bare gpiozero outputs switched off for the E-stop.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from pathlib import Path

from gpiozero import OutputDevice
from gpiozero.pins.mock import MockFactory

from bench.stats import pct

LAMPS = 8
FIRST_PIN = 4
ESTOP_PIN = 27


class NullLog:
    """Records go nowhere: these figures time relays, not the disk."""

    _next = 0

    def new_session_id(self):
        self._next += 1
        return self._next

    def __getattr__(self, name):
        return lambda *args, **kwargs: True


def _config(tmp: Path):
    from lampctl import config as config_mod

    lamps = "".join(
        f'[[lamps]]\nid = "room{n}"\nname = "Room {n}"\nrelay_pin = {FIRST_PIN + n}\nmax_minutes = 60\n'
        f"presets = [10]\nrest_window_s = 0\n\n"
        for n in range(LAMPS)
    )
    path = tmp / "config.toml"
    path.write_text(
        f'[service]\nbind = "127.0.0.1:0"\ndatabase = "x.db"\npin_factory = "mock"\n\n'
        f"[safety]\nestop_pin = {ESTOP_PIN}\n\n{lamps}"
    )
    return config_mod.load(path)


class Rig:
    """A controller on 8 mock relays with the real clock, its scheduler running, and an E-stop."""

    def __init__(self):
        from lampctl.core.clock import MonotonicClock
        from lampctl.core.controller import SessionController
        from lampctl.devices.hardware import RelayBank

        with tempfile.TemporaryDirectory() as tmp:
            self.cfg = _config(Path(tmp))
        self.factory = MockFactory()
        self.relays = RelayBank(self.cfg.lamps, self.factory, estop_pin=ESTOP_PIN)
        self.ctl = SessionController(self.cfg.lamps, self.relays, MonotonicClock(), NullLog())
        self.relays.on_estop(self.ctl.estop)
        self.ctl.start_scheduler()

    def pin(self, index: int):
        return self.factory.pin(FIRST_PIN + index)

    def close(self):
        self.ctl.shutdown("bench over")
        self.ctl.stop_scheduler()
        self.relays.close()
        self.factory.reset()


class Load:
    """Threads reading the controller as panels do: `pollers` every 50 ms, `flood` without pause."""

    def __init__(self, ctl, pollers: int = 0, flood: int = 0):
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, args=(ctl, 0.05), daemon=True) for _ in range(pollers)]
        self._threads += [threading.Thread(target=self._read, args=(ctl, 0), daemon=True) for _ in range(flood)]

    def _read(self, ctl, pause: float):
        while not self._stop.is_set():
            ctl.lamps()
            if pause:
                self._stop.wait(pause)
            else:
                time.sleep(0)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(5)


def _lamp_sessions(rig, index: int, durations: list[float], out: list[float]):
    """Run sessions one after another on one lamp; overshoot = the pin's own on-time minus planned."""
    pin = rig.pin(index)
    for planned in durations:
        before = len(pin.states)
        rig.ctl.start(f"room{index}", planned, "bench")
        deadline = time.monotonic() + planned + 5
        while len(pin.states) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        on, off = pin.states[before], pin.states[before + 1]
        assert on.state and not off.state, "the relay did not go on then off"
        out.append((off.timestamp - planned) * 1000)  # MockPin stamps: seconds since the previous change


def _bare_waits(durations: list[float], out: list[float]):
    cond = threading.Condition()
    for planned in durations:
        with cond:
            t0 = time.monotonic()
            cond.wait(planned)
            out.append((time.monotonic() - t0 - planned) * 1000)


def cutoff(sessions: int, load: dict) -> tuple[list[float], list[float]]:
    """(overshoot ms per session, bare Condition.wait overshoot ms), 8 lamps, sessions of 50-500 ms."""
    rng = random.Random(7)
    per_lamp = max(1, sessions // LAMPS)
    plans = [[rng.uniform(0.05, 0.5) for _ in range(per_lamp)] for _ in range(LAMPS)]
    rig = Rig()
    lamp_out: list[float] = []
    bare_out: list[float] = []
    try:
        with Load(rig.ctl, **load):
            threads = [threading.Thread(target=_lamp_sessions, args=(rig, i, plans[i], lamp_out)) for i in range(LAMPS)]
            threads += [threading.Thread(target=_bare_waits, args=(plans[i], bare_out)) for i in range(LAMPS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        rig.close()
    return lamp_out, bare_out


def _press(rig) -> float:
    """E-stop press -> the last relay pin off, ms, by the pins' own clock; then release and reset."""
    pins = [rig.pin(i) for i in range(LAMPS)]
    t0 = time.monotonic()
    rig.factory.pin(ESTOP_PIN).drive_low()  # when_pressed runs in this thread (MockPin)
    took = (max(p._last_change for p in pins) - t0) * 1000  # MockPin's monotonic stamp of its last change
    assert not any(p.state for p in pins)
    rig.factory.pin(ESTOP_PIN).drive_high()
    for i in range(LAMPS):
        rig.ctl.reset_fault(f"room{i}", "bench")
    return took


def _bare_off(devices) -> float:
    for d in devices:
        d.on()
    t0 = time.monotonic()
    for d in devices:
        d.off()
    return (max(d.pin._last_change for d in devices) - t0) * 1000


def estop(presses: int, flood: int = 4) -> tuple[list[float], list[float]]:
    """(E-stop press -> all 8 relays off, ms; 8 bare outputs off, ms) with `flood` threads reading the controller."""
    rig = Rig()
    bare = [OutputDevice(16 + i, pin_factory=rig.factory) for i in range(LAMPS)]
    figures, baseline = [], []
    try:
        with Load(rig.ctl, flood=flood):
            for _ in range(presses):
                for i in range(LAMPS):
                    rig.ctl.start(f"room{i}", 60, "bench")
                figures.append(_press(rig))
                baseline.append(_bare_off(bare))
    finally:
        for d in bare:
            d.close()
        rig.close()
    return figures, baseline


def run(quick: bool) -> list[dict]:
    rows = []
    sessions = 40 if quick else 400
    for name, load in (("pollers", {"pollers": 20}), ("flood", {"flood": 4})):
        got, bare = cutoff(sessions, load)
        rows.append(
            dict(
                figure=f"cutoff overshoot, 8 lamps, {len(got)} sessions 50-500 ms, {name}",
                value=f"p99 {pct(got, 99):.2f} ms, max {max(got):.2f} ms",
                baseline=f"bare Condition.wait p99 {pct(bare, 99):.2f} ms",
                goal="p99 <= 1.25x bare",
                json={}
                if name != "flood"
                else {"cutoff_p99_ms": [pct(got, 99), pct(bare, 99)], "cutoff_max_ms": [max(got), max(bare)]},
            )
        )
    presses = 30 if quick else 600
    got, bare = estop(presses)
    rows.append(
        dict(
            figure=f"E-stop press to all relays off, {presses} presses, 4 readers flooding",
            value=f"p50 {pct(got, 50):.2f} ms, p99 {pct(got, 99):.2f} ms, max {max(got):.2f} ms",
            baseline=f"8 bare outputs off: p99 {pct(bare, 99):.2f} ms, max {max(bare):.2f} ms, load {os.getloadavg()[0]:.1f}",
            goal="max <= 2 ms",
            json={"estop_p99_ms": [pct(got, 99), pct(bare, 99)], "estop_max_ms": [max(got), max(bare)]},
        )
    )
    return rows
