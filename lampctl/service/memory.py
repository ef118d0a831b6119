"""The service's heap: glibc's malloc held to two arenas, set at start-up before the service's threads run.

glibc gives each thread that finds the arenas busy an arena of its own (up to 8 per core), and
free memory stays inside each one: with the web server's 8 workers, the Stop lane and the
log's writer, 3-4 MiB of a 52 MiB service were free memory kept by arenas
(docs/performance.md). Two arenas on a two- or four-core Pi cost no measurable speed.
The unit sets MALLOC_ARENA_MAX=2 in the environment, which glibc reads at exec; this does the
same when the service is started by other means (a terminal, the demo, the tests).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("lampctl")

ARENAS = 2
M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas(count: int = ARENAS) -> bool:
    """mallopt(M_ARENA_MAX, count) on glibc; False, and nothing done, off glibc or when MALLOC_ARENA_MAX is set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False  # the operator's (or the unit's) choice, already applied by glibc at exec
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt, and arenas of their own kind
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(M_ARENA_MAX, count) == 1
    if not done:
        log.warning("malloc arenas not limited to %d (mallopt refused); memory use may be higher", count)
    return done
