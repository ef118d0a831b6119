"""Runs `lampctl serve` as a child process and, at exit, dumps every mock relay pin's history.

Used by the S1 tests: a process's mock pins are invisible from outside, so this
wrapper captures the pin factory serve() makes and writes its pins' state
histories to $S1_PIN_DUMP after serve's own exit handlers have run. With
$S1_CRASH_AFTER set it also starts a thread that raises after that many seconds.
"""
import atexit
import json
import os
import sys
import threading

import lampctl.hardware as hardware

captured = []
_make = hardware.make_pin_factory


def capture(name):
    factory = _make(name)
    captured.append(factory)
    return factory


hardware.make_pin_factory = capture


def dump():
    pins = {}
    for factory in captured:
        for info, pin in factory.pins.items():
            pins[str(info.name)] = [s.state for s in pin.states]
    with open(os.environ["S1_PIN_DUMP"], "w") as fh:
        json.dump({"pins": pins, "flask_loaded_at_claim": FLASK_AT_CLAIM}, fh)


FLASK_AT_CLAIM = []
_init = hardware.RelayBank.__init__


def init(self, *args, **kwargs):
    FLASK_AT_CLAIM.append("flask" in sys.modules)
    _init(self, *args, **kwargs)


hardware.RelayBank.__init__ = init
# Registered first, so it runs last: after serve's own exit handlers.
atexit.register(dump)

if os.environ.get("S1_CRASH_AFTER"):
    def crash():
        threading.Event().wait(float(os.environ["S1_CRASH_AFTER"]))
        raise RuntimeError("injected crash")

    threading.Thread(target=crash, name="crashing-worker", daemon=True).start()

from lampctl.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
