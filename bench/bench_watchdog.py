"""Measure how late the simulated firmware cuts a lamp after the host goes silent (prints figures, asserts nothing).

    .venv/bin/python bench/bench_watchdog.py [--trials 20] [--watchdog 1.0] [--mode thread|sigstop|both]

Each trial: a host says HELLO, arms lamp 0 for a minute, sends PINGs every
0.1 s for a random 0.2..0.6 s, then goes silent -- either its thread just
stops sending ("thread") or the whole host process is frozen with SIGSTOP
("sigstop").  The simulator's JSON line for the watchdog cut gives the cut
time; the figure is  cut - last heartbeat written - watchdog  in ms, i.e. how
long past its promise the firmware kept the lamp on.  The same run reports the
overshoot of a 200 ms ARM deadline while heartbeats continue.
"""

import argparse
import json
import queue
import random
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import serial  # noqa: E402

from firmware_bridge import protocol  # noqa: E402

# A host in its own process, so SIGSTOP freezes it the way a hung service would be frozen.
CHILD_HOST = textwrap.dedent("""
    import sys, time
    import serial
    from firmware_bridge import protocol
    port = serial.serial_for_url(sys.argv[1], timeout=0.5)
    seq = 0
    def send(word, *args):
        global seq
        seq = protocol.next_seq(seq)
        port.write(protocol.encode_command(seq, word, *args))
        return time.monotonic()
    port.write(b"\\n")
    send("HELLO")
    send("ARM", 0, 60000)
    while True:
        sent = send("PING")
        print("ping %.6f" % sent, flush=True)
        time.sleep(0.1)
""")


class Simulator:
    """The simulator process with its change lines queued as they arrive."""

    def __init__(self, watchdog_s):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "firmware_bridge.simulator",
                "--listen",
                "127.0.0.1:0",
                "--lamps",
                "1",
                "--watchdog",
                str(watchdog_s),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        line = self.proc.stderr.readline()
        if not line.startswith("listening "):
            raise SystemExit("the simulator did not start: %r" % line)
        self.url = "socket://" + line.split()[1]
        self.events = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="bench-sim-stdout", daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def wait_for(self, why, timeout=10.0):
        end = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.0, end - time.monotonic()))
            if event["why"] == why:
                return event

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        self._reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


def trial_thread(sim, rnd):
    """Host thread sends heartbeats, then simply stops; returns (last heartbeat, cut) times."""
    port = serial.serial_for_url(sim.url, timeout=0.5)
    try:
        seq = 0
        port.write(b"\n")
        for word, args in (("HELLO", ()), ("ARM", (0, 60000))):
            seq = protocol.next_seq(seq)
            port.write(protocol.encode_command(seq, word, *args))
        sim.wait_for("armed")
        end = time.monotonic() + rnd.uniform(0.2, 0.6)
        last = time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.1)
            seq = protocol.next_seq(seq)
            port.write(protocol.encode_command(seq, "PING"))
            last = time.monotonic()
        cut = sim.wait_for("watchdog")["t"]
    finally:
        port.close()
    return last, cut


def trial_sigstop(sim, rnd):
    """Host process sends heartbeats and is frozen with SIGSTOP; returns (last heartbeat, cut) times."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_HOST, sim.url], cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    pings = queue.Queue()

    def read():
        for line in child.stdout:
            pings.put(float(line.split()[1]))

    reader = threading.Thread(target=read, name="bench-host-stdout", daemon=True)
    reader.start()
    try:
        sim.wait_for("armed")
        time.sleep(rnd.uniform(0.2, 0.6))
        child.send_signal(signal.SIGSTOP)
        cut = sim.wait_for("watchdog")["t"]
        last = None
        while True:
            try:
                last = pings.get(timeout=0.05)
            except queue.Empty:
                break
    finally:
        child.kill()
        child.wait()
        reader.join(5)
        child.stdout.close()
    return last, cut


def deadline_overshoot(sim):
    """ms past a 200 ms ARM's deadline at which the lamp went off, heartbeats continuing."""
    port = serial.serial_for_url(sim.url, timeout=0.5)
    try:
        seq = 0
        port.write(b"\n")
        for word, args in (("HELLO", ()), ("ARM", (0, 200))):
            seq = protocol.next_seq(seq)
            port.write(protocol.encode_command(seq, word, *args))
        armed = sim.wait_for("armed")["t"]
        off = sim.wait_for("deadline")["t"]
    finally:
        port.close()
    return (off - armed - 0.2) * 1000


def report(name, figures):
    print(
        "%-28s n=%-3d median %7.2f ms   max %7.2f ms   min %7.2f ms"
        % (name, len(figures), statistics.median(figures), max(figures), min(figures))
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--watchdog", type=float, default=1.0, help="firmware watchdog in s (default 1.0)")
    parser.add_argument("--mode", choices=["thread", "sigstop", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    modes = ["thread", "sigstop"] if args.mode == "both" else [args.mode]
    sim = Simulator(args.watchdog)
    try:
        print(
            "watchdog %.3f s, %d trials per mode; figure = cut - last heartbeat - watchdog"
            % (args.watchdog, args.trials)
        )
        for mode in modes:
            trial = trial_thread if mode == "thread" else trial_sigstop
            figures = []
            for _ in range(args.trials):
                last, cut = trial(sim, rnd)
                figures.append((cut - last - args.watchdog) * 1000)
            report("watchdog reaction (%s)" % mode, figures)
        report("deadline overshoot (200 ms)", [deadline_overshoot(sim) for _ in range(args.trials)])
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
