"""The node's MQTT client in process, against a real mosquitto: a dead broker changes nothing, records wait and arrive in order."""

from __future__ import annotations

import json
import re
import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest

from lampctl.config.mqtt import MqttConfig
from lampctl.fleet.mqtt import MqttLink
from lampctl.fleet.outbox import Outbox, set_enabled
from lampctl.testing import free_port, wait_until
from lampctl.testing.mqtt import Broker, Listener, mosquitto_path
from tests.conftest import pin_history

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed (./test.sh installs it)")


@pytest.fixture
def link_for(cfg, controller, accounts, users, clock):
    made = []

    def make(port: int) -> MqttLink:
        mqtt = MqttConfig(host="127.0.0.1", port=port, tls=False, node="n1", commands=True)
        link = MqttLink(
            mqtt, cfg.service.database, controller, accounts, cfg.lamps, builtin_users=("cli",), wall=clock.wall
        )
        made.append(link)
        link.start()
        return link

    set_enabled(cfg.service.database, True)
    yield make
    for link in made:
        link.close()


def test_s9_s10_dead_broker_changes_nothing_and_records_wait_across_a_restart(
    tmp_path, cfg, controller, clock, factory, usage_log, link_for
):
    port = free_port()  # nothing listens here yet
    link = link_for(port)
    controller.add_listener(link.on_view)
    for _ in range(3):
        controller.start("room1", 30, "ann")
        stopped = threading.Event()
        threading.Thread(target=lambda done=stopped: (controller.stop("room1", "ann"), done.set()), daemon=True).start()
        assert stopped.wait(2)  # a Stop never waits for the broker
    assert pin_history(factory, 17) == [False] + [True, False] * 3
    usage_log.flush(5)
    waiting = Outbox(cfg.service.database).count()
    assert waiting >= 3 + 6  # three sessions and their state changes
    link.close()  # the service restarts while the broker is still away

    broker = Broker(tmp_path, port=port).start()
    listener = Listener(port, ["lampctl/n1/sessions", "lampctl/n1/events"])
    try:
        link_for(port)
        listener.wait(lambda l: len(l.messages) >= waiting, 20, "every waiting record")
        wait_until(lambda: Outbox(cfg.service.database).count() == 0, 10, "outbox emptied by acknowledgements")
        sessions = [json.loads(p) for t, p, _ in listener.messages if t.endswith("sessions")]
        assert [(s["id"], s["end_reason"], s["node"]) for s in sessions] == [(i, "stopped", "n1") for i in (1, 2, 3)]
        events = [json.loads(p)["id"] for t, p, _ in listener.messages if t.endswith("events")]
        assert events == sorted(events) and len(events) == len(set(events))  # in order, once
    finally:
        listener.close()
        broker.kill()


def test_state_retained_and_status_online(tmp_path, controller, clock, link_for):
    broker = Broker(tmp_path).start()
    try:
        link = link_for(broker.port)
        controller.add_listener(link.on_view)
        listener = Listener(broker.port, ["lampctl/n1/#"])
        listener.wait(lambda l: l.retained.get("lampctl/n1/status") == b"online", 10, "online")
        controller.start("room2", 120, "ann")
        listener.wait(lambda l: (l.latest_json("lampctl/n1/lamp/room2/state") or {}).get("state") == "on", 10, "on")
        controller.extend("room2", 60, "ann")
        listener.wait(lambda l: l.latest_json("lampctl/n1/lamp/room2/state")["planned_s"] == 180, 10, "extended")
        link.close()  # a clean leave says offline itself (no last will then)
        listener.wait(lambda l: l.retained.get("lampctl/n1/status") == b"offline", 10, "offline")
        listener.close()
    finally:
        broker.kill()


def test_state_of_a_lamp_that_is_on_is_published_again_for_the_countdown(tmp_path, controller, link_for, monkeypatch):
    import lampctl.fleet.mqtt as mqtt_mod

    monkeypatch.setattr(mqtt_mod, "REFRESH_S", 0.2)
    broker = Broker(tmp_path).start()
    try:
        link = link_for(broker.port)
        controller.add_listener(link.on_view)
        listener = Listener(broker.port, ["lampctl/n1/lamp/room1/state"])
        controller.start("room1", 600, "ann")
        listener.wait(
            lambda l: sum(json.loads(p)["state"] == "on" for _, p, _ in l.messages) >= 4,
            10,
            "the state of a lamp that is on, again and again",
        )
        controller.stop("room1", "ann")
        listener.wait(lambda l: l.latest_json("lampctl/n1/lamp/room1/state")["state"] == "off", 10, "off")
        listener.close()
    finally:
        broker.kill()


def test_retained_state_says_when_the_session_ends_for_home_assistant(
    tmp_path, controller, clock, link_for, monkeypatch
):
    """ends_at: ISO-8601 UTC, the same through the countdown's refreshes, moved by an extension, null when off."""
    import lampctl.fleet.mqtt as mqtt_mod

    monkeypatch.setattr(mqtt_mod, "REFRESH_S", 0.2)
    broker = Broker(tmp_path).start()
    topic = "lampctl/n1/lamp/room1/state"
    try:
        link = link_for(broker.port)
        controller.add_listener(link.on_view)
        listener = Listener(broker.port, [topic])
        listener.wait(lambda l: (l.latest_json(topic) or {}).get("state") == "off", 10, "off at first")
        assert listener.latest_json(topic)["ends_at"] is None
        started = clock.wall()  # the fake clock: 2026-01-05 09:00 UTC
        controller.start("room1", 600, "ann")
        listener.wait(lambda l: l.latest_json(topic)["state"] == "on", 10, "on")
        assert listener.latest_json(topic)["ends_at"] == "2026-01-05T09:10:00.000Z"
        assert datetime.fromisoformat(listener.latest_json(topic)["ends_at"]) == started + timedelta(seconds=600)
        clock.advance(30)  # the countdown goes on: refreshes with less remaining, the same end
        seen = len(listener.messages)
        listener.wait(
            lambda l: [json.loads(p)["remaining_s"] for _, p, _ in l.messages[seen:]].count(570) >= 2,
            10,
            "two refreshes after 30 s",
        )
        assert {json.loads(p)["ends_at"] for _, p, _ in listener.messages[seen:]} == {"2026-01-05T09:10:00.000Z"}
        controller.extend("room1", 120, "ann")
        listener.wait(lambda l: l.latest_json(topic)["ends_at"] == "2026-01-05T09:12:00.000Z", 10, "extended end")
        controller.stop("room1", "ann")
        listener.wait(lambda l: l.latest_json(topic)["state"] != "on", 10, "stopped")
        assert listener.latest_json(topic)["ends_at"] is None
        listener.close()
    finally:
        broker.kill()


def test_ends_at_does_not_jitter_with_the_publish_latency_but_follows_a_clock_step(cfg, controller, accounts):
    """The 10 s refresh reckons the end again from a wall clock read a little later each time."""
    walls = iter([0.0, 0.3, 0.9, 7200.0])  # seconds after 09:00 UTC; the last a step of two hours
    base = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    mqtt = MqttConfig(host="127.0.0.1", port=1, tls=False, node="n1")
    link = MqttLink(
        mqtt, cfg.service.database, controller, accounts, cfg.lamps, wall=lambda: base + timedelta(seconds=next(walls))
    )
    view = {"id": "room1", "state": "on", "session_id": 1, "planned_s": 600.0}
    assert link._ends_at({**view, "remaining_s": 600.0}) == "2026-01-05T09:10:00.000Z"
    assert link._ends_at({**view, "remaining_s": 599.75}) == "2026-01-05T09:10:00.000Z"  # 0.05 s later: kept
    assert link._ends_at({**view, "remaining_s": 599.2}) == "2026-01-05T09:10:00.000Z"  # 0.1 s later: kept
    assert link._ends_at({**view, "remaining_s": 590.0}) == "2026-01-05T11:09:50.000Z"  # the clock stepped
    assert link._ends_at({"id": "room1", "state": "cooldown", "remaining_s": None}) is None


def test_s19_commands_published_while_the_node_is_away_are_never_delivered_later(tmp_path, factory, link_for):
    """Clean session on every connect: a broker that keeps sessions queues nothing for the node."""
    broker = Broker(tmp_path, persistent=True).start()
    sender = Listener(broker.port, ["lampctl/n1/lamp/room1/result"])
    status = Listener(broker.port, ["lampctl/n1/status"])

    def answered(request_id):
        sender.wait(lambda l: any(json.loads(p).get("id") == request_id for _, p, _ in l.messages), 10, request_id)

    try:
        link = link_for(broker.port)
        status.wait(lambda l: l.messages.count(("lampctl/n1/status", b"online", False)) == 1, 10, "online")
        sender.publish("lampctl/n1/lamp/room1/cmd", {"action": "stop", "user": "ann", "id": "first"})
        answered("first")  # subscribed: with a persistent session the broker would now queue for the node
        link.close()
        sender.publish("lampctl/n1/lamp/room1/cmd", {"action": "start", "minutes": 10, "user": "ann", "id": "q"})
        link_for(broker.port)
        status.wait(lambda l: l.messages.count(("lampctl/n1/status", b"online", False)) == 2, 10, "online again")
        sender.publish("lampctl/n1/lamp/room1/cmd", {"action": "stop", "user": "ann", "id": "probe"})
        answered("probe")
        assert [json.loads(p)["id"] for _, p, _ in sender.messages] == ["first", "probe"]
        assert pin_history(factory, 17) == [False]
    finally:
        sender.close()
        status.close()
        broker.kill()


def test_a_row_numbered_below_every_id_already_sent_is_still_sent(tmp_path, cfg, usage_log, link_for):
    """The publisher picks rows by what is in flight, not by the highest id it has sent."""
    broker = Broker(tmp_path).start()
    listener = Listener(broker.port, ["lampctl/n1/events"])
    try:
        link_for(broker.port)
        for why in ("one", "two", "three"):
            usage_log.event(None, None, None, "system", why)
        usage_log.flush(5)
        listener.wait(lambda l: len(l.messages) >= 3, 10, "the first three events")
        wait_until(lambda: Outbox(cfg.service.database).count() == 0, 10, "outbox emptied by acknowledgements")
        set_enabled(cfg.service.database, False)
        usage_log.event(None, None, None, "system", "late")
        usage_log.flush(5)
        conn = Outbox(cfg.service.database)._db()
        ref = conn.execute("SELECT max(id) FROM events").fetchone()[0]
        conn.execute("INSERT INTO outbox (id, kind, ref, origin) VALUES (1, 'event', ?, 'abc')", (ref,))
        conn.close()
        seen = listener.wait(lambda l: [json.loads(p) for _, p, _ in l.messages if b'"late"' in p], 5, "the late row")
        assert (seen[0]["origin"], seen[0]["node"]) == ("abc", "n1")
    finally:
        listener.close()
        broker.kill()


def test_health_reports_the_backlog_and_its_age_and_degrades_when_it_is_old(
    tmp_path, cfg, usage_log, link_for, monkeypatch
):
    import lampctl.fleet.mqtt as mqtt_mod

    monkeypatch.setattr(mqtt_mod, "STALE_BACKLOG_S", 1)
    monkeypatch.setattr(mqtt_mod, "SPAN_EVERY_S", 0.05)
    # The broker is away at first: the port is held, bound but not listening, so nothing
    # else on the machine can take it meanwhile and a connect is refused.
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        link = link_for(port)
        assert link.health() == {"connected": False, "backlog": 0, "oldest_unsent_s": None, "problems": []}
        usage_log.event(None, None, None, "system", "waiting")
        usage_log.flush(5)
        # At least that record: a busy machine may also queue the link's own events meanwhile.
        waiting = wait_until(lambda: (h := link.health())["backlog"] >= 1 and h, 30, "the backlog seen")
        assert waiting["connected"] is False and waiting["problems"] == []
        stale = wait_until(lambda: (h := link.health())["problems"] and h, 30, "the backlog older than the bound")
        assert stale["oldest_unsent_s"] > 1
        assert re.match(r"\d+ record\(s\) have waited more than", stale["problems"][0])
        assert "not connected); they are kept in the outbox." in stale["problems"][0]
    finally:
        held.close()
    broker = Broker(tmp_path, port=port).start()
    try:
        sent = wait_until(lambda: (h := link.health())["backlog"] == 0 and h, 30, "the backlog sent")
        assert sent == {"connected": True, "backlog": 0, "oldest_unsent_s": None, "problems": []}
    finally:
        broker.kill()


def test_backlog_dates_each_row_by_when_it_was_first_seen():
    from lampctl.fleet.mqtt import Backlog

    backlog = Backlog()
    backlog.update(2, 1, 2, now=100.0)  # rows 1-2 seen at 100
    backlog.update(4, 1, 4, now=110.0)  # rows 3-4 first seen at 110
    assert backlog.oldest_s(120.0) == 20.0
    backlog.update(2, 3, 4, now=120.0)  # 1-2 sent: the oldest now waits since 110
    assert backlog.oldest_s(120.0) == 10.0
    backlog.update(0, 0, 0, now=121.0)
    assert backlog.oldest_s(130.0) is None
    backlog.update(1, 9, 9, now=130.0)
    assert backlog.oldest_s(131.5) == 1.5
