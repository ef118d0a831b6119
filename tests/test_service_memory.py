"""The service's memory: two malloc arenas (start-up and the unit), and its resident size after a day's kind of traffic."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lampctl.service import memory
from tests.test_deploy import unit_entries

ROOT = Path(__file__).resolve().parent.parent

# Eight threads alive together each allocate, then glibc's malloc_stats() lists one "Arena N:" per arena.
COUNT_ARENAS = textwrap.dedent("""
    import ctypes, sys, threading
    from lampctl.service import memory
    print(memory.limit_arenas() if sys.argv[1] == "limit" else "-", file=sys.stderr)
    together = threading.Barrier(8)
    def work():
        blocks = [bytearray(4096) for _ in range(64)]
        together.wait(30)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctypes.CDLL(None).malloc_stats()
""")


def _arenas(how: str, env: dict | None = None) -> tuple[int, str]:
    run_env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {}) | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", COUNT_ARENAS, how], capture_output=True, text=True, env=run_env, timeout=60, check=True
    )
    lines = proc.stderr.splitlines()
    return sum(line.startswith("Arena ") for line in lines), lines[0]


glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc's malloc only"
)


@glibc
def test_service_start_up_limits_malloc_to_two_arenas():
    unlimited, _ = _arenas("none")
    limited, said = _arenas("limit")
    assert said == "True"
    assert limited == memory.ARENAS == 2 < unlimited


@glibc
def test_service_leaves_an_operators_malloc_arena_max_alone():
    arenas, said = _arenas("limit", {"MALLOC_ARENA_MAX": "3"})
    assert said == "False" and arenas == 3


def test_service_unit_sets_two_malloc_arenas_before_exec():
    unit = unit_entries(ROOT / "deploy/lampctl.service")
    assert "MALLOC_ARENA_MAX=2" in unit["Service.Environment"]


# Measured 44.5 MiB on x86-64 (CPython 3.11, 2 cores); with Babel's locale data loaded by the
# first page and a malloc arena per thread, as before, 48.5 MiB. The minimal Flask+waitress app is 31.6 MiB.
RSS_BOUND_MIB = 47


def _poll(port: int, token: str, times: int, failures: list) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(times):
            conn.request("GET", "/api/lamps", headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                failures.append(resp.status)
    finally:
        conn.close()


@pytest.mark.integration
def test_service_resident_size_after_pages_and_polling_stays_bounded(tmp_path):
    import threading

    from bench.client import Browser
    from lampctl.testing import ServiceProcess, add_users, service_config

    lamps = "".join(
        f'\n[[lamps]]\nid = "room{n}"\nname = "Room {n}"\nrelay_pin = {5 + n}\nmax_minutes = 60\npresets = [10, 20]\n'
        for n in range(8)
    )
    config = service_config(tmp_path, lamps)
    tokens = add_users(config)
    svc = ServiceProcess(config).start()  # the arena limit from start-up, not from this environment
    try:
        browser = Browser(svc.url, "admin", "1234")
        for path in ("/", "/admin/log", "/admin/bulbs", "/admin/log.csv"):
            browser.timed_get(path)
        failures: list[int] = []
        pollers = [threading.Thread(target=_poll, args=(svc.port, tokens["ann"], 100, failures)) for _ in range(20)]
        for t in pollers:
            t.start()
        for t in pollers:
            t.join(120)
        rss = next(
            int(line.split()[1]) / 1024
            for line in Path(f"/proc/{svc.proc.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
    finally:
        svc.stop()
    assert failures == []
    assert rss <= RSS_BOUND_MIB, f"the service holds {rss:.1f} MiB after pages and polling (bound {RSS_BOUND_MIB} MiB)"
