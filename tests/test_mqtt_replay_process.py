"""S19 on real processes: `lampctl serve --simulate` and mosquitto; a retained command never replays."""

from __future__ import annotations

import json
import time

import pytest

from lampctl.testing import TWO_LAMPS, ServiceProcess, add_users, service_config, wait_until
from lampctl.testing.mqtt import Broker, Listener, mosquitto_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed (./test.sh installs it)"),
    pytest.mark.timeout(240),
]

CMD1 = "lampctl/n1/lamp/room1/cmd"
NODE_CMD = "lampctl/n1/cmd"


class Node:
    """One node (real service) on a persistent broker, a listener on its results, and a publisher."""

    def __init__(self, tmp_path):
        self.broker = Broker(tmp_path, persistent=True).start()  # retained messages survive its restart
        extra = f'\n[mqtt]\nurl = "{self.broker.url}"\nnode = "n1"\ncommands = true\n'
        self.config = service_config(tmp_path, TWO_LAMPS, extra=extra)
        self.tokens = add_users(self.config)
        self.listener = Listener(self.broker.port, ["lampctl/n1/result", "lampctl/n1/lamp/+/result"])
        self.publisher = Listener(self.broker.port, [])
        self.svc: ServiceProcess | None = None

    def serve(self) -> None:
        seen = self.connects()
        self.svc = ServiceProcess(self.config).start()
        self.wait_connected(seen)

    def connects(self) -> int:
        try:
            return self.svc.stderr().count("MQTT connected to") if self.svc else 0
        except FileNotFoundError:
            return 0

    def wait_connected(self, seen: int) -> None:
        wait_until(lambda: self.connects() > seen, 30, "the node (re)connected to the broker")

    def restart_service(self) -> None:
        assert self.svc.stop() == 0
        self.serve()

    def restart_broker(self) -> None:
        seen = self.connects()
        self.broker.stop()
        self.broker.start()
        self.wait_connected(seen)

    def publish_retained(self, topic: str, body: dict) -> None:
        self.publisher.client.publish(topic, json.dumps(body), qos=1, retain=True).wait_for_publish(10)

    def results(self, **match) -> list[dict]:
        out = []
        for _, payload, _ in list(self.listener.messages):
            answer = json.loads(payload)
            if all(answer.get(k) == v for k, v in match.items()):
                out.append(answer)
        return out

    def wait_result(self, timeout: float = 20, **match) -> dict:
        return self.listener.wait(lambda _: self.results(**match), timeout, f"a result {match}")[-1]

    def probe(self, timeout: float = 30) -> None:
        """A live command answered: whatever the broker replayed on the subscribe came before it.

        A restarted node may not have subscribed yet, and a command published before that is
        (rightly) never delivered to it: the probe is sent again each second until one is answered.
        """
        deadline = time.monotonic() + timeout
        while True:
            request_id = f"probe-{time.monotonic_ns()}"
            try:
                # The test's own client reconnects after a broker restart too: until then publish raises.
                self.listener.publish("lampctl/n1/lamp/room2/cmd", {"action": "stop", "user": "ann", "id": request_id})
                self.wait_result(timeout=1, id=request_id)
                return
            except (AssertionError, RuntimeError, ValueError):
                if time.monotonic() > deadline:
                    raise

    def retained_commands(self) -> dict[str, bytes]:
        """What a fresh subscriber gets retained on the node's cmd topics (a live probe marks the end)."""
        fresh = Listener(self.broker.port, ["lampctl/n1/cmd", "lampctl/n1/lamp/+/cmd", "probe/end"])
        try:
            fresh.publish("probe/end", "x")
            fresh.wait(lambda l: any(t == "probe/end" for t, _, _ in l.messages), 10, "the probe")
            return {t: p for t, p, retained in fresh.messages if retained and p and t != "probe/end"}
        finally:
            fresh.close()

    def lamps(self) -> dict[str, tuple[str, bool]]:
        _, body = self.svc.get("/api/lamps", token=self.tokens["ann"])
        return {l["id"]: (l["state"], l["relay_on"]) for l in body["lamps"]}

    def sessions(self, lamp: str) -> list[dict]:
        _, body = self.svc.get("/api/sessions", token=self.tokens["admin"])
        return [s for s in body["sessions"] if s["lamp_id"] == lamp]

    def close(self) -> None:
        if self.svc is not None:
            self.svc.stop()
        self.listener.close()
        self.publisher.close()
        self.broker.stop()


@pytest.fixture
def node(tmp_path):
    made = Node(tmp_path)
    yield made
    made.close()


def test_s19_retained_start_published_while_the_node_is_away_never_comes_on(node):
    node.publish_retained(CMD1, {"action": "start", "minutes": 10, "user": "ann", "id": "press"})
    node.serve()
    answer = node.wait_result(id="press")
    assert (answer["ok"], answer["code"]) == (False, "retained")
    assert node.retained_commands() == {}  # cleared by the node
    node.restart_service()
    node.probe()
    node.restart_broker()
    node.probe()
    assert node.lamps()["room1"] == ("off", False)
    assert node.sessions("room1") == []  # before S19: a session on every start and every reconnect
    assert len(node.results(id="press")) == 1  # refused once; nothing left to replay after that
    assert "refused (retained)" in node.svc.stderr() and "Traceback" not in node.svc.stderr()


def test_s19_retained_start_published_live_runs_once_and_never_again(node):
    """MQTT 3.1.1 hands a live message to a subscriber with the retain flag cleared: that press is live."""
    node.serve()
    node.publish_retained(CMD1, {"action": "start", "minutes": 10, "user": "ann", "id": "press"})
    assert node.wait_result(id="press")["ok"]
    assert node.lamps()["room1"] == ("on", True)
    assert node.svc.post("/api/lamps/room1/stop", {}, token=node.tokens["ann"])[0] == 200
    assert node.retained_commands() == {}  # the node cleared the sender's copy at once
    node.restart_service()
    node.probe()
    node.restart_broker()
    node.probe()
    assert node.lamps()["room1"] == ("off", False)
    sessions = node.sessions("room1")
    assert len(sessions) == 1, f"one press, {len(sessions)} sessions"  # before S19: 3 (live, restart, reconnect)
    assert sessions[0]["end_reason"] == "stopped"


def test_s19_retained_estop_never_relatches_after_a_reset(node):
    node.publish_retained(NODE_CMD, {"action": "estop", "user": "ann", "id": "old"})
    node.serve()
    assert node.wait_result(id="old")["code"] == "retained"
    assert node.lamps() == {"room1": ("off", False), "room2": ("off", False)}
    # Pressed live (published retained by a misconfigured button): obeyed once, as any live E-stop.
    node.publish_retained(NODE_CMD, {"action": "estop", "user": "ann", "id": "live"})
    assert node.wait_result(id="live")["ok"]
    assert {s for s, _ in node.lamps().values()} == {"fault"}
    for lamp in ("room1", "room2"):
        assert node.svc.post(f"/api/lamps/{lamp}/reset", {}, token=node.tokens["admin"])[0] == 200
    node.restart_service()
    node.probe()
    assert node.lamps() == {"room1": ("off", False), "room2": ("off", False)}
    node.restart_broker()
    node.probe()
    assert node.lamps() == {"room1": ("off", False), "room2": ("off", False)}
    assert node.retained_commands() == {}
    assert len(node.results(id="live")) == 1 and len(node.results(id="old")) == 1
