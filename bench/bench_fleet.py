"""Fleet load: N simulated nodes publish sessions, events and lamp states to one mosquitto for a while;
does one `lampctl collect` keep up? Prints figures; asserts nothing.

Run: .venv/bin/python bench/bench_fleet.py [--nodes 200] [--seconds 60] [--sessions 1] [--events 3]
Each simulated node is a paho client (MQTT 3.1.1, QoS 1, as lampctl's) that publishes, every
second, `--sessions` session records, `--events` audit rows and one retained lamp state.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lampctl.testing import free_port, wait_until  # noqa: E402
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
                    "ended_at": "2026-11-25T10:20:00.000Z",
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


def fleet_api(port: int) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/api/fleet", timeout=30) as resp:
        return json.load(resp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--sessions", type=int, default=1, help="session records per node per second")
    ap.add_argument("--events", type=int, default=3, help="audit rows per session record")
    ap.add_argument("--procs", type=int, default=4, help="processes driving the simulated nodes")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker = Broker(tmp).start()
        port = free_port()
        (tmp / "central.toml").write_text(
            f'[collector]\ndatabase = "central.db"\nbind = "127.0.0.1:{port}"\n'
            f'[mqtt]\nurl = "{broker.url}"\nnode = "bench"\n'
        )
        with open(tmp / "collect.err", "wb") as err:
            collect = subprocess.Popen(
                [sys.executable, "-m", "lampctl", "collect", "--config", str(tmp / "central.toml")],
                cwd=ROOT,
                stdout=err,
                stderr=err,
            )
        try:
            wait_until(lambda: _subscribed(port), 30, "collector subscribed")
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
            t_sent = t0 + args.seconds  # the simulated nodes stop publishing here
            stored = wait_until(
                lambda: (f := fleet_api(port)) and f["stored"] + f["duplicates"] >= published and f,
                args.seconds + 300,
                "collector caught up",
                step=0.2,
            )
            t_done = time.monotonic()
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
            }
            for p in procs:
                p.join(10)
        finally:
            collect.terminate()
            collect.wait(30)
            broker.kill()
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(figures))
    return 0


def _subscribed(port: int) -> bool:
    try:
        return fleet_api(port)["subscribed"]
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
