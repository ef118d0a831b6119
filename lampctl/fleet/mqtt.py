"""The node's MQTT client: status with a last will, retained lamp states, Home Assistant discovery,
the outbox published at QoS 1 in order, and commands. Its own threads; the controller never waits for it."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from lampctl.fleet import broker, discovery
from lampctl.fleet.commands import Commands
from lampctl.fleet.outbox import Outbox
from lampctl.storage.db import iso

log = logging.getLogger(__name__)

# Outbox records sent and not yet acknowledged (paho's inflight window is set to the same).
WINDOW = 100
POLL_S = 0.2  # how often an idle publisher looks at the outbox
REFRESH_S = 10.0  # a lamp that is on has its state re-published this often (the countdown)
KEEPALIVE_S = 30
RECONNECT_MAX_S = 2
ENDS_AT_SLACK_S = 1.0  # a session's published end is kept while the fresh one is within this
SPAN_EVERY_S = 1.0  # how often the backlog's size and age are read for /api/health
STALE_BACKLOG_S = 300  # a record waiting longer than this makes /api/health degraded


def _dump(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


class Backlog:
    """How many records wait in the outbox and since when, on the monotonic clock (for /api/health).

    Outbox ids only grow, so marks of (highest id seen, when first seen) date every row: the
    oldest waiting row was first seen at the first mark at or above it. A mark is added at
    most every second, and less often the older the backlog is (0.1 % of its age), so a
    backlog months old keeps a few thousand marks. Rows queued before the service started
    count from its start.
    """

    def __init__(self) -> None:
        self.rows = 0
        self._marks: deque[tuple[int, float]] = deque()

    def update(self, rows: int, low: int, high: int, now: float) -> None:
        self.rows = rows
        if rows == 0:
            self._marks.clear()
            return
        while self._marks and self._marks[0][0] < low:
            self._marks.popleft()
        if not self._marks:
            self._marks.append((high, now))
        elif high > self._marks[-1][0]:
            _, last_at = self._marks[-1]
            if now - last_at >= 1.0 + (now - self._marks[0][1]) / 1000:
                self._marks.append((high, now))
            else:  # dated by the last mark: older than they are by less than its spacing
                self._marks[-1] = (high, last_at)

    def oldest_s(self, now: float) -> float | None:
        return round(max(0.0, now - self._marks[0][1]), 1) if self.rows and self._marks else None


class MqttLink:
    """Everything the node says to and hears from the broker.

    paho's network thread (loop_start) connects, reconnects and runs the callbacks; one
    publisher thread owns the outbox and sends states and records. A dead broker only
    makes the outbox wait: nothing here is on the path of a start, a Stop or a deadline.
    """

    def __init__(
        self,
        cfg,
        database: Path,
        controller,
        accounts,
        lamps,
        *,
        builtin_users: tuple[str, ...] = (),
        usage_log=None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.cfg = cfg
        self.node = cfg.node
        self.lamps = lamps
        self._controller = controller
        self._outbox = Outbox(database)
        self.commands = Commands(
            cfg.node,
            cfg.commands,
            controller,
            accounts,
            self._reply,
            builtin_users,
            clear=self._clear,
            usage_log=usage_log,
        )
        self._cond = threading.Condition()
        self._views: dict[str, dict] = {}
        self._wall = wall  # the wall clock a session's ends_at is reckoned on (the controller's in tests)
        self._ends: dict[str, tuple[tuple, float]] = {}  # lamp id -> (session, planned), its end (wall clock)
        self._acked: set[int] = set()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        self.backlog = Backlog()
        self._spanned_at = float("-inf")
        self._connects = 0
        self._handled_connects = 0
        self._connected = False
        self._wake = False
        self._stop = False
        self.sent = 0
        self._thread: threading.Thread | None = None
        self.client = self._make_client()

    # ---- paho's side ---------------------------------------------------------------------
    def _make_client(self):
        import paho.mqtt.client as mqtt

        # S19: a clean session on every connect, reconnects included (paho 2.x sends MQTT 3.1.1's
        # clean_session flag on each CONNECT; MQTT 5's default clean_start would be "first connect
        # only"): the broker keeps no subscription and queues no command while the node is away,
        # so nothing published then is delivered later as if it were live.
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"lampctl-{self.node}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.will_set(discovery.status_topic(self.node), "offline", qos=1, retain=True)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password())
        self._failures = broker.configure(client, self.cfg, f"MQTT node {self.node}", "records wait in the outbox")
        client.reconnect_delay_set(1, RECONNECT_MAX_S)
        client.max_inflight_messages_set(WINDOW)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker %s refused the connection: %s", self.cfg.url, reason_code)
            return
        self._failures.connected()
        # The outbox is the one source of records: what paho kept from the last connection
        # is sent again from there, in order, instead of by paho.
        client.drop_out_messages()
        if flags.session_present:  # a broker that kept a session despite clean_session: say so
            log.error(
                "MQTT broker %s resumed an old session of node %s although a clean one was asked for; "
                "queued commands may follow (starts among them marked dup are refused)",
                self.cfg.url,
                self.node,
            )
        # Retained commands arrive on this subscribe with the retain flag: refused and cleared (S19).
        client.subscribe([(discovery.node_cmd_topic(self.node), 1), (discovery.lamp_cmd_topic(self.node, "+"), 1)])
        log.info("MQTT connected to %s as node %s", self.cfg.url, self.node)
        with self._cond:
            self._connected = True
            self._connects += 1
            self._wake = True
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            was, self._connected = self._connected, False
        if was and not self._stop:
            log.warning("MQTT connection to %s lost (%s); records wait in the outbox", self.cfg.url, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._acked.add(mid)
            self._wake = True
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        self.commands.handle(message.topic, message.payload, retained=bool(message.retain), dup=bool(message.dup))

    def _reply(self, topic: str, answer: dict) -> None:
        self.client.publish(topic, _dump(answer), qos=1)

    def _clear(self, topic: str) -> None:
        """Delete a retained message on a cmd topic: an empty retained publish."""
        self.client.publish(topic, b"", qos=1, retain=True)

    # ---- the controller's side -----------------------------------------------------------
    def on_view(self, view) -> None:
        """Controller listener: keep the newest view per lamp; never blocks."""
        with self._cond:
            self._views[view.id] = view.as_dict()
            self._wake = True
            self._cond.notify_all()

    @property
    def connected(self) -> bool:
        return self._connected

    def health(self) -> dict:
        """For /api/health, from memory: the link, the outbox backlog and its oldest record's wait."""
        oldest = self.backlog.oldest_s(time.monotonic())
        problems = []
        if oldest is not None and oldest > STALE_BACKLOG_S:
            problems.append(
                f"{self.backlog.rows} record(s) have waited more than {STALE_BACKLOG_S // 60} minutes "
                f"to be sent to the MQTT broker {self.cfg.url} (oldest {oldest:.0f} s, "
                f"{'connected' if self._connected else 'not connected'}); they are kept in the outbox."
            )
        return {
            "connected": self._connected,
            "backlog": self.backlog.rows,
            "oldest_unsent_s": oldest,
            "problems": problems,
        }

    # ---- life ----------------------------------------------------------------------------
    def start(self) -> None:
        self.commands.start()
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 3.0) -> None:
        """Publish the lamps as left, say `offline` (a clean disconnect sends no last will), stop every thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self.commands.close()
        if self._connected:
            with contextlib.suppress(Exception):  # the lamps as they are left (all off when the service stops)
                self._publish_states(v.as_dict() for v in self._controller.lamps())
            info = self.client.publish(discovery.status_topic(self.node), "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not connected after all, or paho's queue full
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self._outbox.close()

    # ---- the publisher thread ------------------------------------------------------------
    def _run(self) -> None:
        next_refresh = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._wake, POLL_S)
                self._wake = False
                if self._stop:
                    return
                connected, connects = self._connected, self._connects
                views, self._views = self._views, {}
                acked, self._acked = self._acked, set()
            if not connected:
                try:  # the backlog still grows and ages for /api/health
                    self._span(every=SPAN_EVERY_S)
                except sqlite3.Error as exc:
                    log.error("MQTT outbox cannot be read (%s); retrying", exc)
                continue
            try:
                if connects != self._handled_connects:
                    self._handled_connects = connects
                    self._announce()
                    next_refresh = time.monotonic() + REFRESH_S
                else:
                    self._publish_states(views.values())
                    if time.monotonic() >= next_refresh:
                        next_refresh = time.monotonic() + REFRESH_S
                        self._publish_states(v.as_dict() for v in self._controller.lamps() if v.state == "on")
                self._settle(acked)
                self._send_more()
                self._span(every=0.0)
            except sqlite3.Error as exc:
                log.error("MQTT outbox cannot be read (%s); retrying", exc)
                time.sleep(1.0)
            except Exception:
                log.exception("MQTT publisher step failed; retrying")
                time.sleep(1.0)

    def _announce(self) -> None:
        """After each (re)connect: online, discovery, every lamp's state, and the outbox from its start."""
        self._inflight.clear()
        publish = self.client.publish
        publish(discovery.status_topic(self.node), "online", qos=1, retain=True)
        for topic, payload in discovery.configs(self.cfg, self.lamps):
            publish(topic, payload, qos=1, retain=True)
        self._publish_states(v.as_dict() for v in self._controller.lamps())

    def _publish_states(self, views) -> None:
        for view in views:
            view = {**view, "node": self.node, "ends_at": self._ends_at(view)}
            self.client.publish(discovery.state_topic(self.node, view["id"]), _dump(view), qos=1, retain=True)

    def _ends_at(self, view: dict) -> str | None:
        """When a running session ends, as ISO-8601 UTC (Home Assistant's timestamp sensor counts down to it).

        The same text for a session until its deadline moves (an extension) or the wall clock
        steps, so the 10 s refresh does not make the sensor jitter by the publish's latency.
        """
        if view.get("state") != "on" or view.get("remaining_s") is None:
            self._ends.pop(view["id"], None)
            return None
        ends = self._wall().timestamp() + view["remaining_s"]
        key = (view.get("session_id"), view.get("planned_s"))
        known = self._ends.get(view["id"])
        if known is None or known[0] != key or abs(known[1] - ends) > ENDS_AT_SLACK_S:
            known = self._ends[view["id"]] = (key, ends)
        return iso(datetime.fromtimestamp(known[1], UTC))

    def _settle(self, acked: set[int]) -> None:
        done = [self._inflight.pop(mid) for mid in acked if mid in self._inflight]
        self._outbox.delete(done)
        self.sent += len(done)

    def _send_more(self) -> None:
        """Publish the oldest rows not yet in flight, up to the window. Rows are picked by
        what is in flight, not by an id mark, so a row is never passed over whatever its id."""
        room = WINDOW - len(self._inflight)
        if room <= 0:
            return
        rows = self._outbox.unsent(room, sending=frozenset(self._inflight.values()))
        gone = []
        for outbox_id, kind, record in rows:
            if record is None:
                gone.append(outbox_id)
                continue
            topic = discovery.records_topic(self.node, "sessions" if kind == "session" else "events")
            info = self.client.publish(topic, _dump({**record, "node": self.node}), qos=1)
            if info.rc != 0:
                break  # not connected: the next connection starts again from the outbox
            self._inflight[info.mid] = outbox_id
        self._outbox.delete(gone)

    def _span(self, every: float) -> None:
        now = time.monotonic()
        if now - self._spanned_at >= every:
            self._spanned_at = now
            self.backlog.update(*self._outbox.span(), now)
