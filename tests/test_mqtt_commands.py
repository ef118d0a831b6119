"""MQTT commands without a broker: only live requests are obeyed (S19), and bad input gets a sentence and a code."""

from __future__ import annotations

import json
import logging
import queue
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lampctl.fleet.commands import Commands
from tests.conftest import pin_history

LAMP1 = "lampctl/n1/lamp/room1/cmd"
LAMP2 = "lampctl/n1/lamp/room2/cmd"
NODE = "lampctl/n1/cmd"
START = {"action": "start", "minutes": 10, "user": "ann"}


class Node:
    """One node's Commands with what it answered, cleared and logged."""

    def __init__(self, controller, accounts, usage_log, clock, *, enabled=True, run_starts=True):
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.cleared: list[str] = []
        self.cmds = Commands(
            "n1",
            enabled,
            controller,
            accounts,
            lambda t, a: self.replies.put((t, a)),
            ("cli",),
            clear=self.cleared.append,
            usage_log=usage_log,
            clock=clock,
        )
        if run_starts:
            self.cmds.start()

    def send(self, topic, body, **flags):
        self.cmds.handle(topic, body if isinstance(body, bytes) else json.dumps(body).encode(), **flags)

    def answer(self) -> dict:
        return self.replies.get(timeout=5)[1]


@pytest.fixture
def node(controller, accounts, users, usage_log, clock):
    made = []

    def make(**kw):
        made.append(Node(controller, accounts, usage_log, clock, **kw))
        return made[-1]

    yield make
    for n in made:
        n.cmds.close()


def relays(factory):
    """Both lamps' whole relay histories (room2 is active-low: True is off)."""
    return pin_history(factory, 17), pin_history(factory, 18)


def audit(usage_log, code):
    usage_log.flush(5)
    return [e for e in usage_log.events() if f"({code})" in e["why"]]


# ---- S19: retained ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "topic, body",
    [
        (LAMP1, START),
        (LAMP1, {"action": "stop", "user": "ann"}),
        (NODE, {"action": "stop-all", "user": "ann"}),
        (NODE, {"action": "estop", "user": "ann"}),
        (LAMP1, b"\xff not even json"),
    ],
)
def test_s19_retained_command_is_never_obeyed_and_is_cleared(node, controller, factory, usage_log, topic, body):
    n = node()
    if body != START:
        controller.start("room2", 600, "ann")  # a stop replayed must not end a session started since
    before = relays(factory)
    n.send(topic, {**body, "id": "r1"} if isinstance(body, dict) else body, retained=True)
    answer = n.answer()
    assert (answer["ok"], answer["code"]) == (False, "retained")
    assert isinstance(body, bytes) or answer["id"] == "r1"
    assert "retained" in answer["error"] and "\n" not in answer["error"]
    assert n.cleared == [topic]  # an empty retained publish on that very topic
    assert relays(factory) == before
    assert [v.state for v in controller.lamps()] == ["off", "off" if body == START else "on"]
    assert len(audit(usage_log, "retained")) == 1


def test_s19_a_live_command_also_clears_any_retained_copy(node, controller):
    """A sender's retained publish reaches a live subscriber with the flag cleared: its copy goes at once."""
    n = node()
    n.send(LAMP1, START)
    assert n.answer()["ok"]
    n.send(LAMP1, {"action": "stop", "user": "ann"})
    assert n.answer()["ok"]
    assert n.cleared == [LAMP1, LAMP1]


def test_s19_empty_message_is_no_command_and_gets_no_answer(node, factory):
    """The node's own clears come back on its subscription: they must not answer, clear or loop."""
    n = node()
    n.send(LAMP1, b"")
    n.send(NODE, b"", retained=True)
    assert n.replies.empty() and n.cleared == []
    assert relays(factory) == ([False], [False, True])  # room2 is active-low: claimed off at once


# ---- S19: redelivered, stale, duplicate, held, shutting down -------------------------------
def test_s19_redelivered_start_is_refused_but_a_redelivered_stop_is_obeyed(node, controller, factory, usage_log):
    n = node()
    n.send(LAMP1, START, dup=True)
    assert n.answer()["code"] == "replayed"
    controller.start("room1", 600, "ann")
    n.send(LAMP1, {"action": "stop", "user": "ann"}, dup=True)
    assert n.answer()["lamp"]["state"] == "off"
    assert pin_history(factory, 17) == [False, True, False]
    assert len(audit(usage_log, "replayed")) == 1


@pytest.mark.parametrize("age_s, code", [(31, "stale"), (3600 * 24, "stale"), (10, None), (-600, None)])
@pytest.mark.parametrize("form", ["unix", "iso"])
def test_s19_start_sent_too_long_ago_is_stale(node, clock, factory, age_s, code, form):
    n = node()
    sent = clock.wall() - timedelta(seconds=age_s)
    n.send(LAMP1, {**START, "sent_at": sent.timestamp() if form == "unix" else sent.isoformat()})
    answer = n.answer()
    if code:
        assert (answer["ok"], answer["code"]) == (False, code)
        assert pin_history(factory, 17) == [False]
    else:  # a recent or future sent_at is no reason to refuse, and no reason to accept either
        assert answer["ok"] and pin_history(factory, 17) == [False, True]


@pytest.mark.parametrize("flags", [{"retained": True}, {"dup": True}])
def test_s19_a_fresh_sent_at_never_makes_a_replay_acceptable(node, clock, factory, flags):
    n = node()
    n.send(LAMP1, {**START, "sent_at": clock.wall().timestamp()}, **flags)
    assert n.answer()["ok"] is False
    assert pin_history(factory, 17) == [False]


@pytest.mark.parametrize("sent_at", ["yesterday", "2026-01-05T09:00:00", [1], {"t": 1}, True, 10**400])
def test_start_with_a_malformed_sent_at_is_refused(node, factory, sent_at):
    n = node()
    n.send(LAMP1, {**START, "sent_at": sent_at})
    assert n.answer()["code"] == "bad-command"
    assert pin_history(factory, 17) == [False]


def test_s19_the_same_start_delivered_twice_runs_once(node, controller, factory, usage_log):
    """A publisher's QoS 1 retry reaches the node as a second message with no dup flag: its id tells."""
    n = node()
    n.send(LAMP1, {**START, "id": "press-1"})
    assert n.answer()["ok"]
    controller.stop("room1", "ann")
    n.send(LAMP1, {**START, "id": "press-1"})
    assert n.answer()["code"] == "duplicate"
    n.send(LAMP1, {**START, "id": "press-2"})
    assert n.answer()["ok"]
    assert pin_history(factory, 17) == [False, True, False, True]
    assert len(audit(usage_log, "duplicate")) == 1


def test_s19_a_start_held_behind_others_is_never_applied_late(node, clock, factory, usage_log):
    n = node(run_starts=False)  # the start thread is busy elsewhere: the start waits
    n.send(LAMP1, START)
    clock.advance(6)
    n.cmds.start()
    answer = n.answer()
    assert (answer["ok"], answer["code"]) == (False, "stale")
    assert pin_history(factory, 17) == [False]
    assert len(audit(usage_log, "stale")) == 1


def test_s19_no_start_is_taken_or_run_once_the_node_shuts_down(node, controller, factory):
    n = node(run_starts=False)
    n.send(LAMP1, START)  # waiting when the shutdown begins
    n.cmds.close()
    n.send(LAMP1, START)  # refused at once: no start thread is left to answer it
    assert n.answer()["code"] == "shutting-down"
    n.cmds.start()
    assert n.answer()["code"] == "shutting-down"  # the one that was waiting is answered, never run
    controller.start("room2", 600, "ann")
    n.send(LAMP2, {"action": "stop", "user": "ann"})  # a Stop is still obeyed
    assert n.answer()["lamp"]["relay_on"] is False
    assert pin_history(factory, 17) == [False]


# ---- bad input ---------------------------------------------------------------------------
DEEP = "[" * 2000 + "]" * 2000
BAD = [
    ("400-digit minutes", LAMP1, '{"action": "start", "minutes": %s, "user": "ann"}' % ("9" * 400), "too-long"),
    ("400-digit seconds", LAMP1, '{"action": "start", "seconds": %s, "user": "ann"}' % ("9" * 400), "too-long"),
    ("1e308 minutes", LAMP1, '{"action": "start", "minutes": 1e308, "user": "ann"}', "too-long"),
    ("Infinity", LAMP1, '{"action": "start", "minutes": Infinity, "user": "ann"}', "bad-duration"),
    ("-Infinity", LAMP1, '{"action": "start", "minutes": -Infinity, "user": "ann"}', "bad-duration"),
    ("NaN", LAMP1, '{"action": "start", "minutes": NaN, "user": "ann"}', "bad-duration"),
    ("string minutes", LAMP1, '{"action": "start", "minutes": "10", "user": "ann"}', "bad-duration"),
    ("minutes and seconds", LAMP1, '{"action": "start", "minutes": 1, "seconds": 60, "user": "ann"}', "bad-duration"),
    ("2,000-deep JSON", LAMP1, DEEP, "bad-command"),
    ("2,000-deep minutes", LAMP1, '{"action": "start", "user": "ann", "minutes": ' + DEEP + "}", "bad-command"),
    (
        "600-deep user",
        LAMP1,
        '{"action": "start", "minutes": 1, "user": ' + '{"a":' * 600 + "1" + "}" * 600 + "}",
        "unknown-user",
    ),
    ("800-deep action", NODE, '{"action": ' + "[" * 800 + "]" * 800 + "}", "bad-command"),
    ("array", LAMP1, "[1, 2]", "bad-command"),
    ("string", NODE, '"estop"', "bad-command"),
    ("number", NODE, "1", "bad-command"),
    ("null", NODE, "null", "bad-command"),
    ("non-UTF-8", NODE, b'{"action": "stop-all", "user": "\xff\xfe"}', "bad-command"),
    ("unknown action", LAMP1, '{"action": "on", "user": "ann"}', "bad-command"),
    ("node action on a lamp", LAMP1, '{"action": "estop"}', "bad-command"),
    ("no action", NODE, "{}", "bad-command"),
    ("unknown lamp start", "lampctl/n1/lamp/nosuch/cmd", json.dumps(START), "unknown-lamp"),
    ("unknown lamp stop", "lampctl/n1/lamp/nosuch/cmd", '{"action": "stop"}', "unknown-lamp"),
    ("huge payload", LAMP1, '{"action": "start", "minutes": 1, "user": "%s"}' % ("a" * 100_000), "bad-command"),
    ("huge number of digits", LAMP1, '{"action": "start", "minutes": %s, "user": "ann"}' % ("1" * 4000), "too-long"),
    ("user is a list", LAMP1, '{"action": "start", "minutes": 1, "user": ["ann"]}', "unknown-user"),
]


@pytest.mark.parametrize("what, topic, payload, code", BAD, ids=[b[0] for b in BAD])
def test_mqtt_bad_input_gets_one_sentence_and_a_code_and_changes_no_lamp(
    node, controller, factory, caplog, what, topic, payload, code
):
    n = node()
    controller.start("room2", 600, "ann")
    before = relays(factory), [v.state for v in controller.lamps()]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lampctl.fleet.commands"):
        n.send(topic, payload if isinstance(payload, bytes) else payload.encode())
        answer = n.answer()
    assert (answer["ok"], answer["code"]) == (False, code), answer
    error = answer["error"]
    assert error.endswith(".") and "\n" not in error and len(error) < 300, error
    assert (relays(factory), [v.state for v in controller.lamps()]) == before
    lines = [r for r in caplog.records if r.name == "lampctl.fleet.commands"]
    assert len(lines) == 1 and lines[0].exc_info is None and code in lines[0].getMessage()


@pytest.mark.parametrize(
    "body, code",
    [
        ({"seconds": -(10**5000)}, "bad-duration"),
        ({"minutes": 10**5000}, "too-long"),
        ({"seconds": [[1]]}, "bad-duration"),
    ],
)
def test_duration_rule_names_what_was_wrong_without_printing_it(body, code):
    """Shared by the API and MQTT (lampctl.core.errors.duration_from): a 5,000-digit number cannot even be printed."""
    from lampctl.core.errors import BadDuration, duration_from

    with pytest.raises(BadDuration) as refused:
        duration_from(body)
    assert refused.value.code == code and len(str(refused.value)) < 120


TOPICS = st.sampled_from([LAMP1, LAMP2, NODE, "lampctl/n1/lamp/nosuch/cmd"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=TOPICS, payload=st.binary(max_size=600), retained=st.booleans(), dup=st.booleans())
def test_mqtt_arbitrary_bytes_never_internal_and_never_a_lamp_on(
    node, controller, factory, topic, payload, retained, dup
):
    if not hasattr(controller, "_fuzz_node"):
        controller._fuzz_node = node()
    n = controller._fuzz_node
    n.send(topic, payload, retained=retained, dup=dup)
    if payload:
        answer = n.answer()
        assert answer["ok"] is False and answer["code"] != "internal", answer
    assert not any(v.relay_on for v in controller.lamps())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
FIELD = st.sampled_from(["action", "minutes", "seconds", "user", "id", "new_patient", "sent_at"])
ACTION = st.sampled_from(["start", "stop", "stop-all", "estop", "on", "START"]) | JSON


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    topic=TOPICS,
    body=st.dictionaries(FIELD, JSON, max_size=6),
    action=ACTION,
    retained=st.booleans(),
    dup=st.booleans(),
)
def test_mqtt_arbitrary_commands_never_internal_and_a_lamp_comes_on_only_by_a_live_start(
    node, controller, clock, topic, body, action, retained, dup
):
    if not hasattr(controller, "_fuzz_node"):
        controller._fuzz_node = node()
    n = controller._fuzz_node
    n.send(topic, {**body, "action": action}, retained=retained, dup=dup)
    answer = n.answer()
    assert answer["code" if not answer["ok"] else "ok"] != "internal", answer
    on = [v.id for v in controller.lamps() if v.relay_on]
    if on:
        assert answer["ok"] and answer["action"] == "start" and not retained and not dup
        assert on == [answer["lamp"]["id"]]
    controller.stop_all("ann", "fuzz")
    for lamp in controller.lamps():
        if lamp.state == "fault":
            controller.reset_fault(lamp.id, "admin")
    clock.advance(3600)
    controller.tick()
