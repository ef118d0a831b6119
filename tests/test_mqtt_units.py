"""The fleet's parts without a broker: the controller's listener hook, the outbox, commands, discovery."""

from __future__ import annotations

import json
import queue
import threading

import pytest

from lampctl.config.mqtt import MqttConfig
from lampctl.fleet import discovery
from lampctl.fleet.commands import Commands
from lampctl.fleet.outbox import Outbox, set_enabled
from tests.conftest import pin_history


# ---- the listener hook -------------------------------------------------------------------
def test_listener_gets_every_change_in_order_outside_the_lock(controller, clock):
    seen, held = [], []
    done = threading.Event()

    def listener(view):
        # The controller's lock must be free here: another thread can take it at once.
        probe = threading.Thread(
            target=lambda: held.append(controller._cond.acquire(timeout=1) and controller._cond.release() is None)
        )
        probe.start()
        probe.join()
        seen.append((view.id, view.state))
        if view.state == "off" and view.id == "room1":
            done.set()

    controller.add_listener(listener)
    controller.start("room1", 60, "ann")
    clock.advance(60)
    controller.tick()
    assert done.wait(5)
    assert seen == [("room1", "on"), ("room1", "off")]
    assert held == [True, True]


def test_s10_stop_never_waits_for_a_stuck_listener(controller, factory):
    """A listener that blocks for ever delays neither the relay nor the Stop's answer."""
    release = threading.Event()
    controller.add_listener(lambda view: release.wait(30))
    controller.start("room1", 600, "ann")
    answered = threading.Event()
    threading.Thread(target=lambda: (controller.stop("room1", "ann"), answered.set()), daemon=True).start()
    assert answered.wait(5)
    assert pin_history(factory, 17) == [False, True, False]
    release.set()


def test_listener_that_raises_changes_nothing_on_the_lamps(controller, factory, clock):
    def bad(view):
        raise RuntimeError("broker gone")

    controller.add_listener(bad)
    controller.start("room1", 30, "ann")
    clock.advance(30)
    controller.tick()
    controller.listeners.drain()
    assert pin_history(factory, 17) == [False, True, False]


# ---- the outbox --------------------------------------------------------------------------
def test_outbox_queues_ended_sessions_and_events_only_when_enabled(cfg, controller, clock, usage_log):
    db = cfg.service.database
    controller.start("room1", 10, "ann")
    clock.advance(10)
    controller.tick()
    usage_log.flush(5)
    assert Outbox(db).count() == 0  # no [mqtt]: no backlog
    set_enabled(db, True)
    controller.start("room1", 10, "ann")
    clock.advance(10)
    controller.tick()
    usage_log.flush(5)
    rows = Outbox(db).unsent(100)
    kinds = [k for _, k, _ in rows]
    assert kinds.count("session") == 1 and "event" in kinds
    session = next(r for _, k, r in rows if k == "session")
    assert (session["id"], session["end_reason"], session["actual_s"]) == (2, "completed", 10.0)
    assert [i for i, _, _ in rows] == sorted(i for i, _, _ in rows)


def test_outbox_delete_and_pruned_rows(cfg, usage_log):
    db = cfg.service.database
    set_enabled(db, True)
    usage_log.event(None, None, None, "system", "one")
    usage_log.event(None, None, None, "system", "two")
    usage_log.flush(5)
    box = Outbox(db)
    (first, _, rec1), (second, _, rec2) = box.unsent(10)
    assert (rec1["why"], rec2["why"]) == ("one", "two")
    box.delete([first])
    assert [i for i, _, _ in box.unsent(10)] == [second]
    conn = box._db()
    conn.execute("DELETE FROM events")
    assert box.unsent(10) == [(second, "event", None)]  # pruned by an admin: acknowledged, not sent
    box.close()


def test_s4_interrupted_sessions_reach_the_outbox(cfg, clock):
    """Sessions a crash left open are closed `interrupted` at start-up and queued for the fleet."""
    from lampctl.storage.store import UsageLog

    first = UsageLog(cfg.service.database, wall=clock.wall)
    first.session_started(first.new_session_id(), "room1", "ann", clock.wall(), 600)
    second = UsageLog(cfg.service.database, wall=clock.wall)
    set_enabled(cfg.service.database, True)
    assert second.recover_interrupted() == [1]
    sessions = [r for _, k, r in Outbox(cfg.service.database).unsent(10) if k == "session"]
    assert [(s["id"], s["end_reason"]) for s in sessions] == [(1, "interrupted")]


# ---- commands ----------------------------------------------------------------------------
class Replies:
    def __init__(self):
        self.q: queue.SimpleQueue = queue.SimpleQueue()

    def __call__(self, topic, answer):
        self.q.put((topic, answer))

    def next(self):
        return self.q.get(timeout=5)


@pytest.fixture
def commands(controller, accounts, users):
    def make(enabled: bool):
        replies = Replies()
        cmds = Commands("n1", enabled, controller, accounts, replies, ("cli",))
        cmds.start()
        made.append(cmds)
        return cmds, replies

    made: list[Commands] = []
    yield make
    for cmds in made:
        cmds.close()


def send(cmds, topic, body):
    cmds.handle(topic, body if isinstance(body, bytes) else json.dumps(body).encode())


def test_start_over_mqtt_refused_when_commands_are_off(commands, factory):
    cmds, replies = commands(False)
    send(cmds, "lampctl/n1/lamp/room1/cmd", {"action": "start", "minutes": 10, "user": "ann"})
    topic, answer = replies.next()
    assert topic == "lampctl/n1/lamp/room1/result"
    assert (answer["ok"], answer["code"]) == (False, "commands-off")
    assert pin_history(factory, 17) == [False]


@pytest.mark.parametrize(
    "body, code",
    [
        ({"action": "start", "minutes": 10, "user": "nobody"}, "unknown-user"),
        ({"action": "start", "minutes": 10, "user": "cli"}, "unknown-user"),
        ({"action": "start", "minutes": 10}, "unknown-user"),
        ({"action": "start", "user": "ann"}, "bad-duration"),
        ({"action": "start", "minutes": True, "user": "ann"}, "bad-duration"),
        ({"action": "start", "minutes": -1, "user": "ann"}, "bad-duration"),
        ({"action": "on", "user": "ann"}, "bad-command"),
        ({"action": "start", "minutes": 61, "user": "ann"}, "too-long"),
        ({"action": "start", "minutes": 10, "user": "ann", "new_patient": "yes"}, "bad-command"),
        (b"\xff not json", "bad-command"),
        (b"[1, 2]", "bad-command"),
    ],
)
def test_start_over_mqtt_checked_like_any_other(commands, factory, body, code):
    cmds, replies = commands(True)
    send(cmds, "lampctl/n1/lamp/room1/cmd", body)
    _, answer = replies.next()
    assert (answer["ok"], answer["code"]) == (False, code)
    assert "\n" not in answer["error"]
    assert pin_history(factory, 17) == [False]


def test_start_over_mqtt_obeys_cooldown_and_continuation(commands, controller, clock, usage_log, factory):
    cmds, replies = commands(True)
    send(cmds, "lampctl/n1/lamp/room2/cmd", {"action": "start", "minutes": 20, "user": "ann", "id": "r1"})
    _, answer = replies.next()
    assert answer["ok"] and answer["id"] == "r1" and answer["lamp"]["state"] == "on"
    clock.advance(20 * 60)
    controller.tick()
    send(cmds, "lampctl/n1/lamp/room2/cmd", {"action": "start", "minutes": 5, "user": "ann"})
    assert replies.next()[1]["code"] == "cooldown"
    clock.advance(61)
    controller.tick()
    # S18: within the rest window the same patient has 10 of room2's 30 minutes left.
    send(cmds, "lampctl/n1/lamp/room2/cmd", {"action": "start", "minutes": 15, "user": "ann"})
    assert replies.next()[1]["code"] == "over-limit"
    usage_log.flush(5)
    starts = [s for s in usage_log.sessions() if s["lamp_id"] == "room2"]
    assert [(s["user"], s["planned_s"]) for s in starts] == [("ann", 1200.0)]


def test_stops_over_mqtt_always_obeyed_and_recorded(commands, controller, factory, usage_log):
    cmds, replies = commands(False)
    controller.start("room1", 600, "ann")
    send(cmds, "lampctl/n1/lamp/room1/cmd", {"action": "stop", "user": "ann"})
    assert replies.next()[1]["lamp"]["state"] == "off"
    controller.start("room1", 600, "ann")
    send(cmds, "lampctl/n1/cmd", {"action": "stop-all", "user": "stranger"})
    assert replies.next()[1]["ok"]
    assert pin_history(factory, 17) == [False, True, False, True, False]
    usage_log.flush(5)
    ends = [(s["end_reason"]) for s in usage_log.sessions()]
    assert ends == ["stopped", "stopped"]
    assert any(e["who"] == "mqtt" and "stop all" in e["why"] for e in usage_log.events())
    send(cmds, "lampctl/n1/cmd", {"action": "estop", "user": "admin"})
    assert [v["state"] for v in replies.next()[1]["lamps"]] == ["fault", "fault"]


# ---- discovery ---------------------------------------------------------------------------
HA_TOPIC = r"^ha/(sensor|button)/lampctl_n1/[A-Za-z0-9_-]+/config$"
SENSOR_KEYS = {
    "name",
    "unique_id",
    "default_entity_id",
    "device",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "state_topic",
    "value_template",
    "json_attributes_topic",
    "icon",
    "device_class",
    "unit_of_measurement",
}
BUTTON_KEYS = {
    "name",
    "unique_id",
    "default_entity_id",
    "device",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "command_topic",
    "payload_press",
    "qos",
    "icon",
}


def ha_configs(cfg, commands: bool):
    m = MqttConfig(host="b", port=1883, tls=False, node="n1", discovery_prefix="ha", commands=commands)
    return dict(discovery.configs(m, cfg.lamps))


def test_discovery_follows_home_assistant_schema(cfg):
    import re

    configs = ha_configs(cfg, True)
    ids = set()
    for topic, text in configs.items():
        assert re.match(HA_TOPIC, topic), topic
        payload = json.loads(text)
        component = topic.split("/")[1]
        assert set(payload) <= (SENSOR_KEYS if component == "sensor" else BUTTON_KEYS), topic
        assert payload["availability_topic"] == "lampctl/n1/status"
        assert payload["device"]["identifiers"] == ["lampctl_n1"]
        assert payload["default_entity_id"] == f"{component}.{payload['unique_id'].lower().replace('-', '_')}"
        assert re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", payload["default_entity_id"])
        ids.add(payload["unique_id"])
        if component == "button":
            press = json.loads(payload["payload_press"])
            assert payload["command_topic"] in (
                "lampctl/n1/cmd",
                f"lampctl/n1/lamp/{topic.split('/')[3].split('_')[0]}/cmd",
            )
            assert press["action"] in ("start", "stop", "stop-all")
            if press["action"] == "start":
                assert press["minutes"] > 0  # never a bare "on"
        else:
            assert payload["state_topic"].startswith("lampctl/n1/lamp/")
    assert len(ids) == len(configs)  # stable and unique
    presets = sum(len(l.presets) for l in cfg.lamps)
    assert len(configs) == len(cfg.lamps) * 4 + presets + 1  # per lamp state, remaining, ends and Stop


def test_discovery_ends_is_a_timestamp_sensor_unknown_when_off(cfg):
    """Home Assistant counts a timestamp sensor down by itself: it needs ISO-8601 with a zone, and "None" is unknown."""
    from jinja2 import Environment

    configs = ha_configs(cfg, False)
    ends = json.loads(configs["ha/sensor/lampctl_n1/room1_ends/config"])
    assert ends["device_class"] == "timestamp" and "unit_of_measurement" not in ends
    assert ends["state_topic"] == "lampctl/n1/lamp/room1/state"
    assert ends["unique_id"] == "lampctl_n1_room1_ends"
    assert ends["default_entity_id"] == "sensor.lampctl_n1_room1_ends"
    template = Environment().from_string(ends["value_template"])  # HA renders it with Jinja2, value_json the payload
    assert (
        template.render(value_json={"state": "on", "ends_at": "2026-12-03T15:50:00.000Z"}) == "2026-12-03T15:50:00.000Z"
    )
    assert template.render(value_json={"state": "off", "ends_at": None}) == "None"
    assert template.render(value_json={"state": "off"}) == "None"


def test_discovery_removes_preset_buttons_when_commands_are_off(cfg):
    configs = ha_configs(cfg, False)
    starts = {t: p for t, p in configs.items() if "_start_" in t}
    assert starts and all(p == "" for p in starts.values())
    assert all(p for t, p in configs.items() if "_start_" not in t)


def test_a_flood_of_starts_is_refused_not_queued_for_ever(controller, accounts, users, monkeypatch):
    import lampctl.fleet.commands as mc

    replies = Replies()
    cmds = Commands("n1", True, controller, accounts, replies, ("cli",))  # no start thread: nothing is taken
    for _ in range(mc.MAX_WAITING_STARTS):
        send(cmds, "lampctl/n1/lamp/room1/cmd", {"action": "start", "minutes": 1, "user": "ann"})
    assert replies.q.empty()
    send(cmds, "lampctl/n1/lamp/room1/cmd", {"action": "start", "minutes": 1, "user": "ann"})
    assert replies.next()[1]["code"] == "busy"


def test_discovery_entity_ids_are_lower_case_slugs(cfg):
    m = MqttConfig(host="b", port=1883, tls=False, node="Site-A", commands=False)
    for _, text in discovery.configs(m, cfg.lamps):
        if text:
            assert json.loads(text)["default_entity_id"].split(".")[1].startswith("lampctl_site_a_")


def test_outbox_ids_are_never_reused_once_it_empties(cfg, usage_log):
    """An emptied outbox numbered its next row 1 again; the publisher had sent up to a higher id."""
    db = cfg.service.database
    set_enabled(db, True)
    box = Outbox(db)
    usage_log.event(None, None, None, "system", "one")
    usage_log.event(None, None, None, "system", "two")
    usage_log.flush(5)
    first = [i for i, _, _ in box.unsent(10)]
    box.delete(first)
    usage_log.event(None, None, None, "system", "three")
    usage_log.flush(5)
    assert [i for i, _, _ in box.unsent(10)] == [max(first) + 1]
    box.close()


def test_outbox_rows_keep_the_origin_they_were_queued_under(cfg, usage_log):
    from lampctl.storage.db import new_origin

    db = cfg.service.database
    set_enabled(db, True)
    box = Outbox(db)
    usage_log.event(None, None, None, "system", "before")
    usage_log.flush(5)
    conn = box._db()
    before = conn.execute("SELECT origin FROM origin").fetchone()[0]
    new_origin(conn)
    usage_log.event(None, None, None, "system", "after")
    usage_log.flush(5)
    after = conn.execute("SELECT origin FROM origin").fetchone()[0]
    assert len({before, after}) == 2 and len(before) == 16
    assert [(r["why"], r["origin"]) for _, _, r in box.unsent(10)] == [("before", before), ("after", after)]
    box.close()


def test_discovery_a_guarded_lamp_has_temperature_and_current_sensors(cfg):
    from jinja2 import Environment

    from lampctl.config.record import replace

    lamps = (replace(cfg.lamps[0], thermistor_adc=0, current_adc=1, max_amps=2.5), *cfg.lamps[1:])
    configs = ha_configs(replace(cfg, lamps=lamps), False)
    temp = json.loads(configs["ha/sensor/lampctl_n1/room1_temperature/config"])
    amps = json.loads(configs["ha/sensor/lampctl_n1/room1_current/config"])
    assert (temp["device_class"], temp["unit_of_measurement"]) == ("temperature", "°C")
    assert (amps["device_class"], amps["unit_of_measurement"]) == ("current", "A")
    render = Environment().from_string(temp["value_template"]).render
    assert render(value_json={"temperature_c": 41.5}) == "41.5"
    assert render(value_json={"temperature_c": None}) == "None"  # HA's unknown, not a 0 degC reading
    assert not any("room2_temperature" in topic for topic in configs)  # room2 has no thermistor
