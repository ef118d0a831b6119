"""Runs `lampctl serve` as a child process and, at exit, dumps every mock relay pin's history.

Used by the S1 tests: a process's mock pins are invisible from outside, so this
wrapper captures the pin factory serve() makes and writes its pins' state
histories to $S1_PIN_DUMP after serve's own exit handlers have run. Faults to inject:
$S1_CRASH_WHEN (a path): a thread raises once that file exists (the test creates it
when it is ready, so a slow start-up cannot fire the crash early);
$S1_FAIL_CLOSE (a close step's name): that step raises instead of closing;
$S1_HOLD_CLOSE (a close step's name) waits for the file $S1_HOLD_UNTIL before closing;
$S1_FIRST_ANSWER (a path): the monotonic time of the panel's first answer is written there;
$S1_NOTIFY_LOG (a path): each systemd notification is logged there with its monotonic time.
The dump also holds the modules imported when the relays were claimed and each signal's
disposition at exit.
"""

import atexit
import json
import os
import signal
import sys
import threading

import lampctl.devices.hardware as hardware

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
    # How each signal would be received at the end (after serve's close steps, which keep
    # the handlers): "handler" (a Python function), "default" or "ignore".
    dispositions = {}
    for signum in range(1, signal.NSIG):
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        dispositions[signum] = (
            "default" if handler == signal.SIG_DFL else "ignore" if handler == signal.SIG_IGN else "handler"
        )
    with open(os.environ["S1_PIN_DUMP"], "w") as fh:
        json.dump({"pins": pins, "modules_at_claim": MODULES_AT_CLAIM, "signals": dispositions}, fh)


MODULES_AT_CLAIM = []  # per RelayBank made: every module imported when its relays were claimed
_init = hardware.RelayBank.__init__


def init(self, *args, **kwargs):
    MODULES_AT_CLAIM.append(sorted(sys.modules))
    _init(self, *args, **kwargs)


hardware.RelayBank.__init__ = init
# Registered first, so it runs last: after serve's own exit handlers.
atexit.register(dump)

if os.environ.get("S1_CRASH_WHEN"):

    def crash():
        trigger = os.environ["S1_CRASH_WHEN"]
        while not os.path.exists(trigger):
            threading.Event().wait(0.01)
        raise RuntimeError("injected crash")

    threading.Thread(target=crash, name="crashing-worker", daemon=True).start()


def held(name, fn):
    def hold(*args):
        print(f"holding close step {name}", file=sys.stderr, flush=True)
        while not os.path.exists(os.environ["S1_HOLD_UNTIL"]):
            threading.Event().wait(0.01)
        fn(*args)

    return hold


if os.environ.get("S1_FAIL_CLOSE") or os.environ.get("S1_HOLD_CLOSE"):
    import lampctl.service as service

    _on_close = service.Service.on_close

    def on_close(self, stack, name, fn, *args):
        if name == os.environ.get("S1_FAIL_CLOSE"):

            def fail(*_args):
                raise RuntimeError(f"injected failure closing {name}")

            fn = fail
        if name == os.environ.get("S1_HOLD_CLOSE"):
            fn = held(name, fn)
        _on_close(self, stack, name, fn, *args)

    service.Service.on_close = on_close

if os.environ.get("S1_FIRST_ANSWER"):
    import time

    import web

    _create_app = web.create_app

    def create_app(*args, **kwargs):
        app = _create_app(*args, **kwargs)

        @app.after_request
        def first_answer(response):
            path = os.environ["S1_FIRST_ANSWER"]
            if not os.path.exists(path):
                with open(path, "w") as fh:
                    fh.write(repr(time.monotonic()))
            return response

        return app

    web.create_app = create_app

if os.environ.get("S1_NOTIFY_LOG"):
    import time

    import lampctl.service as service

    _sd_notify = service.sd_notify

    def sd_notify(message):
        with open(os.environ["S1_NOTIFY_LOG"], "a") as fh:
            fh.write(f"{time.monotonic()!r} {message}\n")
        _sd_notify(message)

    service.sd_notify = sd_notify

from lampctl.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
