"""`python -m bench.valgrind_shim ARGS...`: `python -m lampctl ARGS...` under valgrind, which keeps a real-time signal.

Valgrind reserves the highest real-time signal for itself, so installing a handler for it
fails with EINVAL; the service's S1 guard installs one for every terminating signal. Here
that one refusal is let pass (the benchmark never sends it), and nothing else changes.
"""

from __future__ import annotations

import runpy
import signal
import sys

_install = signal.signal


def _signal(signum, handler):
    try:
        return _install(signum, handler)
    except OSError:
        if hasattr(signal, "SIGRTMIN") and signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
            return signal.SIG_DFL
        raise


if __name__ == "__main__":
    signal.signal = _signal
    sys.argv = ["lampctl", *sys.argv[1:]]
    runpy.run_module("lampctl", run_name="__main__", alter_sys=True)
