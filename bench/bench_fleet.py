"""Fleet load: N simulated nodes publish sessions, events and lamp states to one mosquitto for a while;
does one `lampctl collect` keep up? Prints figures; asserts nothing.

Run: .venv/bin/python bench/bench_fleet.py [--nodes 200] [--seconds 60] [--sessions 1] [--events 3]
    [--real-nodes 2]
Each simulated node is a paho client (MQTT 3.1.1, QoS 1, as lampctl's) that publishes, every
second, `--sessions` session records, `--events` audit rows and one retained lamp state; a
record's `ended_at` is when it was published (a simulated node has no database of its own).
Beside them, `--real-nodes` `lampctl serve --simulate` nodes run short sessions one after
another through their API, so their records go the whole way: committed on the node, queued
in its outbox, published, committed by the collector. Commit to commit is the collector's
`received_at` less the record's `ended_at` (one machine, one wall clock).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.client import Browser  # noqa: E402
from lampctl.storage.db import iso  # noqa: E402
from lampctl.testing import TWO_LAMPS, ServiceProcess, add_users, free_port, lampctl, service_config, wait_until  # noqa: E402
from lampctl.testing.mqtt import Broker  # noqa: E402


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 10 ms


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_nodes(port: int, names: list[str], seconds: float, sessions: int, events: int, out) -> None:
    """One process driving several simulated nodes; sends back how many records each published."""
    import paho.mqtt.client as mqtt

    clients = []
    for name in names:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{name}")
        c.max_inflight_messages_set(100)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append((name, c))
    sent, next_id, t0 = 0, 1, time.monotonic()
    tick = 0
    while time.monotonic() - t0 < seconds:
        for name, c in clients:
            for _ in range(sessions):
                rec = {
                    "id": next_id,
                    "lamp_id": "room1",
                    "user": "ann",
                    "started_at": "2026-11-25T10:00:00.000Z",
                    "ended_at": iso(datetime.now(UTC)),
                    "planned_s": 1200.0,
                    "actual_s": 1200.0,
                    "end_reason": "completed",
                    "continues": None,
                    "node": name,
                }
                c.publish(f"lampctl/{name}/sessions", json.dumps(rec), qos=1)
                sent += 1
                for e in range(events):
                    ev = {
                        "id": next_id * 10 + e,
                        "at": "2026-11-25T10:00:00.000Z",
                        "lamp_id": "room1",
                        "from_state": "off",
                        "to_state": "on",
                        "who": "ann",
                        "why": "started for 20 min",
                        "node": name,
                    }
                    c.publish(f"lampctl/{name}/events", json.dumps(ev), qos=1)
                    sent += 1
                next_id += 1
            state = {"id": "room1", "state": "on", "remaining_s": 600 - tick, "node": name}
            c.publish(f"lampctl/{name}/lamp/room1/state", json.dumps(state), qos=1, retain=True)
        tick += 1
        time.sleep(max(0.0, t0 + tick - time.monotonic()))
    for _, c in clients:
        while c.want_write():
            time.sleep(0.05)
    time.sleep(2)
    for _, c in clients:
        c.disconnect()
        c.loop_stop()
    out.put(sent)


class RealNodes:
    """`lampctl serve --simulate` nodes with [mqtt], each running 0.2 s sessions one after another."""

    def __init__(self, tmp: Path, count: int, broker_url: str):
        self.nodes = []
        for i in range(count):
            work = tmp / f"real{i}"
            work.mkdir()
            config = service_config(work, TWO_LAMPS, extra=f'\n[mqtt]\nurl = "{broker_url}"\nnode = "real{i}"\n')
            self.nodes.append((ServiceProcess(config).start(), add_users(config)["ann"]))
        self.sessions = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=node, daemon=True) for node in self.nodes]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _run(self, svc, token) -> None:
        while not self._stop.is_set():
            status, _ = svc.post("/api/lamps/room1/start", {"seconds": 0.2, "new_patient": True}, token=token)
            if status == 201:
                self.sessions += 1
            wait_until(lambda: svc.get("/api/lamps/room1", token=token)[1]["state"] == "off", 30, "off")
            self._stop.wait(0.3)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(40)

    def close(self) -> None:
        for svc, _ in self.nodes:
            svc.stop(timeout=30)


def commit_to_commit(central: Path, real: bool) -> dict:
    """Seconds from a session's ended_at to the collector's received_at: count, p50, p99, max."""
    conn = sqlite3.connect(f"file:{central}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT (julianday(received_at) - julianday(ended_at)) * 86400 FROM sessions "
            f"WHERE node {'' if real else 'NOT '}LIKE 'real%'"
        ).fetchall()
    finally:
        conn.close()
    lat = sorted(r[0] for r in rows)
    if not lat:
        return {"n": 0}
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)  # noqa: E731
    return {"n": len(lat), "p50_s": pick(0.5), "p99_s": pick(0.99), "max_s": round(lat[-1], 3)}


def simulated_rows(central: Path) -> int:
    conn = sqlite3.connect(f"file:{central}?mode=ro", uri=True)
    try:
        return sum(
            conn.execute(f"SELECT count(*) FROM {t} WHERE node NOT LIKE 'real%'").fetchone()[0]
            for t in ("sessions", "events")
        )
    finally:
        conn.close()


def fleet_api(browser) -> dict:
    """/api/fleet, as the collector's admin (logged in through its PIN form)."""
    with browser.opener.open(f"{browser.base}/api/fleet", timeout=30) as resp:
        return json.load(resp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--sessions", type=int, default=1, help="session records per node per second")
    ap.add_argument("--events", type=int, default=3, help="audit rows per session record")
    ap.add_argument("--procs", type=int, default=4, help="processes driving the simulated nodes")
    ap.add_argument("--real-nodes", type=int, default=2, help="lampctl serve nodes running sessions beside them")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker = Broker(tmp).start()
        port = free_port()
        (tmp / "central.toml").write_text(
            f'[collector]\ndatabase = "central.db"\nbind = "127.0.0.1:{port}"\n'
            f'[mqtt]\nurl = "{broker.url}"\nnode = "bench"\n'
        )
        lampctl("user", "add", "bench", "--role", "admin", "--pin", "1357", config=tmp / "central.toml")
        with open(tmp / "collect.err", "wb") as err:
            collect = subprocess.Popen(
                [sys.executable, "-m", "lampctl", "collect", "--config", str(tmp / "central.toml")],
                cwd=ROOT,
                stdout=err,
                stderr=err,
            )
        real = None
        try:
            browser = wait_until(lambda: _logged_in(f"http://127.0.0.1:{port}"), 30, "collector's login")
            wait_until(lambda: fleet_api(browser)["subscribed"], 30, "collector subscribed")
            real = RealNodes(tmp, args.real_nodes, broker.url)
            real.start()
            names = [f"node{i:03d}" for i in range(args.nodes)]
            out = multiprocessing.Queue()
            c0, b0 = cpu_s(collect.pid), cpu_s(broker.proc.pid)
            t0 = time.monotonic()
            procs = [
                multiprocessing.Process(
                    target=run_nodes,
                    args=(broker.port, names[i :: args.procs], args.seconds, args.sessions, args.events, out),
                )
                for i in range(args.procs)
            ]
            for p in procs:
                p.start()
            published = sum(out.get(timeout=args.seconds + 120) for _ in procs)
            real.stop()
            t_sent = t0 + args.seconds  # the simulated nodes stop publishing here
            stored = wait_until(
                lambda: (f := fleet_api(browser)) and f["stored"] + f["duplicates"] >= published and f,
                args.seconds + 300,
                "collector caught up",
                step=0.2,
            )
            t_done = time.monotonic()
            # The real nodes' last sessions: at the collector within seconds, or counted as not arrived.
            real_ended = real.sessions
            with contextlib.suppress(AssertionError):
                wait_until(lambda: commit_to_commit(tmp / "central.db", True)["n"] >= real_ended, 10, "real sessions")
            figures = {
                "nodes": args.nodes,
                "seconds": args.seconds,
                "published": published,
                "stored": stored["stored"],
                "duplicates": stored["duplicates"],
                "rejected": stored["rejected"],
                "records_per_s": round(published / args.seconds, 1),
                "states_per_s": args.nodes,
                "drain_after_last_publish_s": round(t_done - t_sent, 2),
                "collector_cpu_s": round(cpu_s(collect.pid) - c0, 1),
                "broker_cpu_s": round(cpu_s(broker.proc.pid) - b0, 1),
                "collector_rss_mb": round(rss_mb(collect.pid), 1),
                "fleet_lamps": len(stored["lamps"]),
                "central_db_mb": round((tmp / "central.db").stat().st_size / 1e6, 1),
                "simulated_stored": simulated_rows(tmp / "central.db"),
                "simulated_publish_to_collector_commit": commit_to_commit(tmp / "central.db", False),
                "real_node_sessions_ended": real_ended,
                "real_node_commit_to_collector_commit": commit_to_commit(tmp / "central.db", True),
                "load1_after": round(os.getloadavg()[0], 2),
            }
            for p in procs:
                p.join(10)
        finally:
            if real is not None:
                real.close()
            collect.terminate()
            collect.wait(30)
            broker.kill()
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(figures))
    return 0


def _logged_in(base: str) -> Browser | None:
    try:
        return Browser(base, "bench", "1357")
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
