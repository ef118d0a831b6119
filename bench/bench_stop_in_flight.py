"""Measure a Stop pressed while a start waits for a slow firmware's ARM reply (S11; prints figures, asserts nothing).

    .venv/bin/python bench/bench_stop_in_flight.py [--trials 20] [--slow 0.3]

Each trial: the controller (mock relays, real clock) starts lamp 0 through a real
FirmwareLink to the simulator process whose ARM frames take --slow seconds to get
through; a Stop is pressed halfway into that round trip. Figures: how long the Stop
took to be answered, whether the Pi's relay came on after the Stop was answered (a
start the Stop did not cancel runs its whole session), and Stop -> the firmware's own
OFF (the simulator's log; the OFF queues behind the ARM still on the wire).
"""

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import contextlib

import serial  # noqa: E402
from gpiozero.pins.mock import MockFactory  # noqa: E402

from bench.inproc import NullLog  # noqa: E402  (records go nowhere: this bench times relays)
from firmware_bridge.bridge import FirmwareLink  # noqa: E402
from lampctl import config as config_mod  # noqa: E402
from lampctl.core.clock import MonotonicClock  # noqa: E402
from lampctl.core.controller import Refused, SessionController  # noqa: E402
from lampctl.devices.backstop import FirmwareBackstop  # noqa: E402
from lampctl.devices.hardware import RelayBank  # noqa: E402


class SlowArmPort:
    def __init__(self, port, slow):
        object.__setattr__(self, "_port", port)
        object.__setattr__(self, "_slow", slow)

    def write(self, data):
        if b" ARM " in data:
            time.sleep(self._slow)
        return self._port.write(data)

    def __getattr__(self, name):
        return getattr(self._port, name)

    def __setattr__(self, name, value):
        setattr(self._port, name, value)


def simulator():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "firmware_bridge.simulator",
            "--listen",
            "127.0.0.1:0",
            "--lamps",
            "1",
            "--watchdog",
            "1.0",
        ],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    port = int(proc.stderr.readline().split(":")[-1])
    offs: list = []
    threading.Thread(target=lambda: [offs.append(json.loads(l)) for l in proc.stdout], daemon=True).start()
    return proc, port, offs


def trial(ctl, factory, offs, slow):
    t = threading.Thread(target=lambda: _start(ctl))
    t.start()
    time.sleep(slow / 2)  # halfway into the ARM round trip
    seen = len(offs)
    pressed = time.monotonic()
    with contextlib.suppress(Refused):  # a controller that does not see the start in flight answers "not running"
        ctl.stop("lamp0", "bench")
    answered = time.monotonic() - pressed
    t.join()
    time.sleep(slow)
    ctl.stop_all("bench")  # ends a session a blind controller let run, so the next trial can start
    states = factory.pin(17).states
    came_on = any(state.state for state in states)  # the relay closed after the Stop was answered
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(not l["on"] for l in offs[seen:]):
        time.sleep(0.002)
    off = next((l for l in offs[seen:] if not l["on"]), None)
    fw_off = off["t"] - pressed if off else float("nan")
    time.sleep(0.2)
    return answered * 1000, came_on, fw_off * 1000


def _start(ctl):
    with contextlib.suppress(Refused):
        ctl.start("lamp0", 600, "bench")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--slow", type=float, default=0.3)
    args = ap.parse_args()
    proc, port, offs = simulator()
    lamps = [config_mod.LampConfig(id="lamp0", name="Lamp 0", relay_pin=17, max_minutes=60)]
    factory = MockFactory()
    relays = RelayBank(lamps, factory)
    link = FirmwareLink(
        f"socket://127.0.0.1:{port}",
        1,
        watchdog_s=1.0,
        heartbeat_s=0.2,
        reply_timeout_s=1.0,
        serial_for_url=lambda url, **kw: SlowArmPort(serial.serial_for_url(url, **kw), args.slow),
    )
    backstop = FirmwareBackstop(link, grace_s=0.1)
    ctl = SessionController(lamps, relays, MonotonicClock(), NullLog(), backstop=backstop)
    backstop.attach(ctl)
    if not backstop.start(10):
        sys.exit(f"firmware link not up: {link.reason}")
    results = []
    for _ in range(args.trials):
        factory.pin(17).clear_states()
        results.append(trial(ctl, factory, offs, args.slow))
    backstop.close()
    relays.close()
    proc.terminate()
    proc.wait(5)
    answered, came_on, fw_off = zip(*results, strict=False)
    print(f"{args.trials} trials, ARM round trip {args.slow * 1000:.0f} ms, Stop pressed halfway into it")
    print(f"  Stop answered:          median {statistics.median(answered):7.1f} ms   max {max(answered):7.1f} ms")
    print(
        f"  Pi relay came on after the Stop was answered: {sum(came_on)} of {args.trials} trials"
        " (each then ran until another Stop)"
    )
    print(f"  Stop -> firmware OFF:   median {statistics.median(fw_off):7.1f} ms   max {max(fw_off):7.1f} ms")
    print(
        json.dumps(
            {
                "stop_in_flight_answer_ms_max": round(max(answered), 1),
                "stop_in_flight_relay_on_trials": sum(came_on),
                "stop_in_flight_fw_off_ms_max": round(max(fw_off), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
