"""S1/S15 process guards: every terminating signal, process exit and a crashed thread turn the relays OFF."""
from __future__ import annotations

import atexit
import logging
import signal
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("lampctl")

# Every signal whose default action ends the process (S15). SIGABRT is what systemd's
# watchdog sends (WatchdogSignal=); SIGHUP comes from a closed terminal or a reload
# request we do not support; SIGPIPE stays ignored as Python sets it (a dropped client
# must not end the service); SIGKILL and SIGSTOP cannot be caught: the firmware's own
# watchdog covers those (S7).
TERMINATING_SIGNALS = tuple(
    getattr(signal, name) for name in (
        "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGABRT", "SIGUSR1", "SIGUSR2",
        "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGXCPU", "SIGXFSZ",
    ) if hasattr(signal, name))


def s1_install_guards(all_off: Callable[[str], None],
                      thread_crashed: Callable[[str], None] | None = None) -> threading.Event:
    """S1, S15: relays OFF on exit, on any terminating signal and on an unhandled exception in any thread.

    all_off(reason) must be idempotent, safe from any thread, and touch nothing but
    the GPIO (no disk, no lock held across I/O). The first signal leaves through
    SystemExit(0) so the service's close steps (sessions `interrupted`, log flushed)
    run; a requested stop is a clean exit for systemd. Later signals turn the relays
    off again but do not interrupt those close steps. A crashed thread calls
    thread_crashed(reason) instead when given (the service latches a fault there).
    Returns the "leaving" event: set it when the close steps begin by another path,
    so that a signal then cannot cut them short either.
    """
    leaving = threading.Event()

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        all_off(f"{name} received")
        if leaving.is_set():
            log.warning("%s received while stopping; relays are off, finishing the close steps", name)
            return
        leaving.set()
        log.warning("%s received: relays off, stopping", name)
        raise SystemExit(0)

    for signum in TERMINATING_SIGNALS:
        signal.signal(signum, on_signal)
    atexit.register(all_off, "process exit")

    previous_thread_hook = threading.excepthook

    def thread_hook(args):
        thread = args.thread.name if args.thread else "?"
        (thread_crashed or all_off)(f"unhandled {args.exc_type.__name__} in thread {thread}: {args.exc_value}")
        previous_thread_hook(args)

    threading.excepthook = thread_hook
    previous_hook = sys.excepthook

    def main_hook(exc_type, exc, tb):
        all_off(f"unhandled {exc_type.__name__}: {exc}")
        previous_hook(exc_type, exc, tb)

    sys.excepthook = main_hook
    return leaving
