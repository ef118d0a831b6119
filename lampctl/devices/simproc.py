"""`serve --simulate` with [firmware]: the simulated microcontroller as a child process of the service."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence


def start_simulator(cfg, guards: Sequence[tuple[int, int, int, int]] = ()) -> tuple:
    """Start the simulator for cfg's lamps and watchdog; returns (process, pyserial URL).

    ``guards`` are the analog guard channels (lamp, adc, low, high) it is to be flashed with:
    the same table the service hands its FirmwareLink, or the link refuses the board.
    Its JSON lines go to simulator.log beside the database.
    """
    logdir = cfg.service.database.parent
    logdir.mkdir(parents=True, exist_ok=True)
    out = open(logdir / "simulator.log", "ab")
    err_path = logdir / "simulator.err"
    err = open(err_path, "wb")
    cmd = [
        sys.executable,
        "-m",
        "firmware_bridge.simulator",
        "--listen",
        "127.0.0.1:0",
        "--lamps",
        str(len(cfg.lamps)),
        "--watchdog",
        str(cfg.firmware.watchdog_s),
    ]
    for lamp, adc, low, high in guards:
        cmd += ["--guard", f"{lamp}:{adc}:{low}:{high}"]
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    out.close()
    err.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = err_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("listening 127.0.0.1:"):
                return proc, "socket://" + line.split(" ", 1)[1].strip()
        if proc.poll() is not None:
            raise RuntimeError(f"the firmware simulator exited {proc.returncode}: {text.strip()}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("the firmware simulator did not start listening within 10 s")


def _die_with_parent() -> None:
    # A simulated microcontroller should not outlive the demo that started it.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except OSError:
        pass


def stop_simulator(proc) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
