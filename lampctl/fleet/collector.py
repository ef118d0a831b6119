"""`lampctl collect`: subscribes to every node's sessions, events and states and keeps the central log."""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lampctl import config as config_mod
from lampctl.config.mqtt import MqttConfig, parse_mqtt
from lampctl.fleet import discovery
from lampctl.fleet.central_log import BadRecord, CentralLog, check_record

log = logging.getLogger(__name__)

BATCH = 500
_KEYS = {"database": (str,), "bind": (str,)}


@dataclass(frozen=True)
class CollectorConfig:
    path: Path
    database: Path
    host: str
    port: int
    mqtt: MqttConfig


def load_collector_config(path: str | Path) -> CollectorConfig:
    """central.toml: [collector] database and bind, [mqtt] url, username, password_file (node = client name)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise config_mod.ConfigError(f"{path}: file not found (pass --config PATH)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise config_mod.ConfigError(f"{path}: cannot read the collector config: {exc}") from None
    r = config_mod.reader(path)
    for key in data:
        if key not in ("collector", "mqtt"):
            raise r.fail(key, "unknown key (allowed: collector, mqtt)")
    if "mqtt" not in data:
        raise r.fail("mqtt", 'missing: the collector needs the broker ([mqtt] url = "mqtt://...")')
    col = r.table(data.get("collector", {}), "collector", _KEYS)
    database = Path(r.text("collector.database", col.get("database", "var/central.db"), "a file path"))
    if not database.is_absolute():
        database = (path.parent / database).resolve()
    host, port = _parse_bind(r, col.get("bind", "127.0.0.1:8090"))
    mqtt = parse_mqtt(r, data["mqtt"], path.parent)
    return CollectorConfig(path=path, database=database, host=host, port=port, mqtt=mqtt)


def _parse_bind(r, bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not host.isprintable() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise r.fail("collector.bind", f"must be host:port such as 127.0.0.1:8090, got {bind[:80]!r}")
    return host, int(port)


class Collector:
    """paho's thread hands each message to a queue; one writer commits batches, then acknowledges them.

    Acknowledgement is manual (paho's manual_ack): a record the broker delivered is PUBACKed
    only once it is committed, so a collector that dies loses nothing the broker still holds
    for its persistent session. Lamp states and node status are kept in memory for the fleet page.
    """

    def __init__(self, cfg: MqttConfig, central: CentralLog):
        import paho.mqtt.client as mqtt

        self.cfg = cfg
        self.central = central
        self.stored = 0
        self.duplicates = 0
        self.rejected = 0
        self.states: dict[tuple[str, str], dict] = {}
        self.status: dict[str, str] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self.subscribed = threading.Event()  # set once the broker confirmed the subscriptions
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"lampctl-collect-{cfg.node}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
            manual_ack=True,
        )
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password())
        if cfg.tls:
            self.client.tls_set()
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self._writer = threading.Thread(target=self._run_writer, name="collector-writer", daemon=True)

    def start(self) -> None:
        self._writer.start()
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._stop.set()
        self._queue.put(None)
        self._writer.join(10)
        self.central.close()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("the broker %s refused the collector: %s", self.cfg.url, reason_code)
            return
        client.subscribe(
            [
                (discovery.records_topic("+", "sessions"), 1),
                (discovery.records_topic("+", "events"), 1),
                (discovery.status_topic("+"), 1),
                (discovery.state_topic("+", "+"), 1),
            ]
        )
        log.info("collector connected to %s", self.cfg.url)

    def _on_message(self, client, userdata, message) -> None:
        parts = message.topic.split("/")
        if len(parts) == 3 and parts[2] in ("sessions", "events"):
            self._queue.put(message)  # acknowledged by the writer once committed
            return
        try:
            if len(parts) == 3 and parts[2] == "status":
                with self._lock:
                    self.status[parts[1]] = message.payload.decode("utf-8", "replace")[:16]
            elif len(parts) == 5 and parts[2] == "lamp" and message.payload:
                view = json.loads(message.payload)
                if isinstance(view, dict):
                    with self._lock:
                        self.states[(parts[1], parts[3])] = view
        except ValueError:
            log.warning("unreadable lamp state on %s ignored", message.topic)
        client.ack(message.mid, message.qos)

    def fleet(self) -> list[dict]:
        """Every lamp's latest state, with its node's status."""
        with self._lock:
            return [
                {**view, "node": node, "lamp_id": lamp_id, "node_status": self.status.get(node, "unknown")}
                for (node, lamp_id), view in sorted(self.states.items())
            ]

    def _run_writer(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list) -> None:
        rows = []
        for message in batch:
            node, kind = message.topic.split("/")[1], message.topic.split("/")[2][:-1]
            try:
                rows.append((kind, check_record(kind, node, json.loads(message.payload))))
            except (BadRecord, ValueError) as exc:
                self.rejected += 1
                log.warning("record on %s refused: %s", message.topic, exc)
        while not self._stop.is_set():
            try:
                new = self.central.write(rows)
                break
            except sqlite3.Error as exc:  # keep the batch unacknowledged and retry: the broker still holds it
                log.error("central log write failed (%s); retrying", exc)
                self._stop.wait(1.0)
        else:
            return
        self.stored += new
        self.duplicates += len(rows) - new
        for message in batch:
            self.client.ack(message.mid, message.qos)
