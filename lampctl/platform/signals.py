"""S1/S15 process guards: every terminating signal, process exit and a crashed thread turn the relays OFF."""

from __future__ import annotations

import atexit
import logging
import signal
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("lampctl")

# Every signal whose default action ends the process (S15, man 7 signal), and that a handler
# can survive. SIGABRT is what systemd's watchdog sends (WatchdogSignal=); SIGHUP comes from a
# closed terminal or a reload request we do not support; SIGPWR from a UPS daemon; SIGIO,
# SIGSTKFLT, SIGSYS, SIGTRAP and the real-time signals from any stray `kill`. Left out:
# SIGPIPE, which Python ignores (a dropped client must not end the service); SIGKILL and
# SIGSTOP, which cannot be caught (the firmware's watchdog covers those, S7); SIGSEGV,
# SIGBUS, SIGFPE and SIGILL, which report a fault in the process itself: a Python handler
# runs only after the faulting instruction, which the kernel restarts, so the process spins
# instead of dying, and a dead service is restarted by systemd with its relays OFF (S1).
TERMINATING_SIGNALS = tuple(
    getattr(signal, name)
    for name in (
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
        "SIGIO",
        "SIGPWR",
        "SIGSTKFLT",
        "SIGSYS",
        "SIGTRAP",
    )
    if hasattr(signal, name)
) + (tuple(range(signal.SIGRTMIN, signal.SIGRTMAX + 1)) if hasattr(signal, "SIGRTMIN") else ())


def s1_install_guards(
    all_off: Callable[[str], None], thread_crashed: Callable[[str], None] | None = None
) -> threading.Event:
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
        name = _name(signum)
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


def _name(signum: int) -> str:
    """SIGTERM, or SIGRTMIN+3 for a real-time signal (which has no name of its own)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
