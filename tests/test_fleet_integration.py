"""Three `lampctl serve --simulate` nodes, a real mosquitto and `lampctl collect`, as a clinic would run them."""

from __future__ import annotations

import csv
import http.cookiejar
import io
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime

import pytest

from lampctl.testing import (
    ROOT,
    TWO_LAMPS,
    ServiceProcess,
    add_users,
    free_port,
    lampctl,
    service_config,
    wait_until,
)
from lampctl.testing.mqtt import Broker, Listener, mosquitto_path
from tests.test_mqtt_units import BUTTON_KEYS, SENSOR_KEYS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed (./test.sh installs it)"),
    pytest.mark.timeout(240),
]

NODES = {"n1": True, "n2": False, "n3": False}  # node -> mqtt.commands


ADMIN, ADMIN_PIN = "Boss", "1357"


def _browser():
    """An opener that keeps cookies (the collector's login), as a browser does."""
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )


def _get(url: str, opener=None):
    with (opener or _browser()).open(url, timeout=10) as resp:
        return resp.read().decode()


def log_in(opener, base: str, name: str, pin: str) -> tuple[int, str]:
    """The collector's login form, CSRF token and all; (status, page) of the answer to the POST."""
    token = re.search(r'name="csrf_token" value="([^"]+)"', _get(f"{base}/login", opener)).group(1)
    form = urllib.parse.urlencode({"name": name, "pin": pin, "csrf_token": token}).encode()
    try:
        with opener.open(urllib.request.Request(f"{base}/login", data=form), timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


class Collect:
    """`lampctl collect` on central.toml, its first admin added with `lampctl user add --config central.toml`."""

    def __init__(self, workdir, broker_url: str, *, mqtt_extra: str = "", name: str = "central"):
        self.port = free_port()
        self.config = workdir / f"{name}.toml"
        self.config.write_text(
            f'[collector]\ndatabase = "{name}/central.db"\nbind = "127.0.0.1:{self.port}"\n\n'
            f'[mqtt]\nurl = "{broker_url}"\nnode = "{name}"\n{mqtt_extra}'
        )
        lampctl("user", "add", ADMIN, "--role", "admin", "--pin", ADMIN_PIN, config=self.config)
        self.browser = _browser()
        self.err = workdir / f"{name}.err"
        with open(self.err, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lampctl", "collect", "--config", str(self.config)],
                cwd=ROOT,
                stdout=err,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        wait_until(self._logged_in, 30, "the collector's login")
        wait_until(self._answers, 30, "the collector's subscriptions")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _logged_in(self):
        assert self.proc.poll() is None, f"lampctl collect exited {self.proc.returncode}"
        try:
            return log_in(self.browser, self.base, ADMIN, ADMIN_PIN)[0] == 200  # redirected to the fleet page
        except OSError:
            return None

    def _answers(self):
        return self.fleet()["subscribed"]  # from here on no record published is missed

    def fleet(self) -> dict:
        return json.loads(_get(f"{self.base}/api/fleet", self.browser))

    def sessions(self, node: str) -> list[dict]:
        return list(csv.DictReader(io.StringIO(_get(f"{self.base}/log.csv?node={node}", self.browser))))

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(15)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    work = tmp_path_factory.mktemp("fleet")
    broker = Broker(work, persistent=True).start()
    listener = Listener(broker.port, ["lampctl/#", "homeassistant/#"])
    collect = Collect(work, broker.url)
    nodes, tokens = {}, {}
    try:
        for name, commands in NODES.items():
            (work / name).mkdir()
            extra = f'\n[mqtt]\nurl = "{broker.url}"\nnode = "{name}"\ncommands = {str(commands).lower()}\n'
            config = service_config(work / name, TWO_LAMPS, extra=extra)
            tokens[name] = add_users(config)
            nodes[name] = ServiceProcess(config).start()
        yield {"broker": broker, "listener": listener, "collect": collect, "nodes": nodes, "tokens": tokens}
    finally:
        for node in nodes.values():
            node.stop()
        assert collect.stop() == 0
        listener.close()
        broker.stop()


def test_fleet_discovery_topics_appear_and_match_home_assistant(fleet):
    listener = fleet["listener"]
    for node in NODES:
        want = 2 * 4 + 1 + (5 if NODES[node] else 0)  # per lamp 3 sensors and Stop, Stop all, presets if commands
        configs = listener.wait(
            lambda l, node=node, want=want: (
                (
                    found := {
                        t: p
                        for t, p in l.retained.items()
                        if t.startswith("homeassistant/") and f"/lampctl_{node}/" in t and p
                    }
                )
                and len(found) >= want
                and found
            ),
            30,
            f"{node}'s discovery",
        )
        assert len(configs) == want
        for topic, payload in configs.items():
            assert re.fullmatch(rf"homeassistant/(sensor|button)/lampctl_{node}/[A-Za-z0-9_-]+/config", topic)
            body = json.loads(payload)
            assert set(body) <= (SENSOR_KEYS if "/sensor/" in topic else BUTTON_KEYS)
            assert body["availability_topic"] == f"lampctl/{node}/status"
        assert listener.retained[f"lampctl/{node}/status"] == b"online"


def test_fleet_states_follow_sessions(fleet):
    listener, n1 = fleet["listener"], fleet["nodes"]["n1"]
    status, _ = n1.post("/api/lamps/room1/start", {"seconds": 1.5}, token=fleet["tokens"]["n1"]["ann"])
    assert status == 201
    topic = "lampctl/n1/lamp/room1/state"
    on = listener.wait(
        lambda l: (v := l.latest_json(topic)) and v["state"] == "on" and v["user"] == "ann" and v, 10, "on"
    )
    ends = datetime.fromisoformat(on["ends_at"])  # Home Assistant's timestamp sensor: ISO-8601 with a zone
    assert ends.tzinfo is not None and abs((ends - datetime.now(UTC)).total_seconds()) < 10
    listener.wait(lambda l: l.latest_json(topic)["state"] == "off", 10, "off after the deadline")
    assert listener.latest_json(topic)["ends_at"] is None
    lamps = wait_until(
        lambda: [
            x
            for x in fleet["collect"].fleet()["lamps"]
            if (x["node"], x["lamp_id"], x["state"]) == ("n1", "room1", "off")
        ],
        10,
        "fleet page",
    )
    assert lamps[0]["node_status"] == "online"
    assert "room1" in _get(f"{fleet['collect'].base}/", fleet["collect"].browser)


def _command(fleet, node: str, lamp: str, body: dict) -> dict:
    listener = fleet["listener"]
    request_id = f"{node}-{time.monotonic_ns()}"
    listener.publish(f"lampctl/{node}/lamp/{lamp}/cmd", {**body, "id": request_id})

    def answer(l):
        for topic, payload, _ in reversed(l.messages):
            if topic == f"lampctl/{node}/lamp/{lamp}/result" and json.loads(payload).get("id") == request_id:
                return json.loads(payload)
        return None

    return listener.wait(answer, 15, f"answer to {body}")


def test_fleet_collector_pages_need_an_admin_s_login(fleet):
    collect = fleet["collect"]
    stranger = _browser()
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(f"{collect.base}/api/fleet", stranger)
    assert refused.value.code == 401
    refused.value.close()
    # The CSV and every page send a browser to the login form; nothing of the log is shown.
    for path in ("/", "/log", "/log.csv?node=n1", "/usage"):
        with stranger.open(f"{collect.base}{path}", timeout=10) as resp:
            assert resp.url.startswith(f"{collect.base}/login?next=") and 'name="pin"' in resp.read().decode()
    lampctl("user", "add", "ann", "--role", "practitioner", "--pin", "2468", config=collect.config)
    # The collector reloads its accounts every 0.5 s; each try before that counts towards the lockout.
    status, page = wait_until(
        lambda: (r := log_in(stranger, collect.base, "ann", "2468"))[0] != 401 and r,
        10,
        "the collector sees the new user",
        step=0.6,
    )
    assert status == 403 and "Only an admin may open the fleet pages" in page
    with pytest.raises(urllib.error.HTTPError) as still:
        _get(f"{collect.base}/api/fleet", stranger)
    assert still.value.code == 401
    still.value.close()


def test_fleet_start_over_mqtt_refused_when_commands_are_off(fleet):
    answer = _command(fleet, "n2", "room2", {"action": "start", "minutes": 10, "user": "ann"})
    assert (answer["ok"], answer["code"]) == (False, "commands-off")
    status, lamp = fleet["nodes"]["n2"].get("/api/lamps/room2", token=fleet["tokens"]["n2"]["ann"])
    assert (lamp["state"], lamp["relay_on"]) == ("off", False)


def test_fleet_start_over_mqtt_obeys_every_limit_when_on(fleet):
    n1 = fleet["nodes"]["n1"]
    for body, code in (
        ({"action": "start", "minutes": 31, "user": "ann"}, "too-long"),
        ({"action": "start", "minutes": 10, "user": "mallory"}, "unknown-user"),
        ({"action": "start", "user": "ann"}, "bad-duration"),
    ):
        answer = _command(fleet, "n1", "room2", body)
        assert (answer["ok"], answer["code"]) == (False, code)
    answer = _command(fleet, "n1", "room2", {"action": "start", "minutes": 10, "user": "ann", "new_patient": True})
    assert answer["ok"] and answer["lamp"]["relay_on"]
    again = _command(fleet, "n1", "room2", {"action": "start", "minutes": 10, "user": "ann"})
    assert (again["ok"], again["code"]) == (False, "already-on")
    stop = _command(fleet, "n1", "room2", {"action": "stop", "user": "ann"})
    assert stop["ok"] and stop["lamp"]["state"] == "off"

    def recorded():
        _, sessions = n1.get("/api/sessions", token=fleet["tokens"]["n1"]["admin"])
        return [
            (s["user"], s["planned_s"], s["end_reason"])
            for s in sessions["sessions"]
            if s["id"] == answer["session_id"] and s["end_reason"]
        ]

    assert wait_until(recorded, 10, "the MQTT session's record") == [("ann", 600.0, "stopped")]


def _node_sessions(fleet, node: str) -> set[int]:
    _, body = fleet["nodes"][node].get("/api/sessions", token=fleet["tokens"][node]["admin"])
    return {s["id"] for s in body["sessions"] if s["ended_at"]}


def test_fleet_broker_down_10_s_every_session_arrives_once(fleet):
    broker, nodes, tokens = fleet["broker"], fleet["nodes"], fleet["tokens"]
    for node in NODES:
        assert nodes[node].post("/api/lamps/room1/start", {"seconds": 2}, token=tokens[node]["ann"])[0] == 201
    broker.stop()
    down_at = time.monotonic()
    for node in NODES:  # the lamps do not care: a session starts and ends while the broker is away
        wait_until(
            lambda node=node: nodes[node].get("/api/lamps/room1", token=tokens[node]["ann"])[1]["state"] == "off",
            10,
            f"{node} room1 off",
        )
        assert nodes[node].post("/api/lamps/room1/start", {"seconds": 1}, token=tokens[node]["ann"])[0] == 201
    time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))  # the outage itself is the test's subject
    broker.start()
    for node in NODES:
        wanted = wait_until(
            lambda node=node: len(_node_sessions(fleet, node)) >= 2 and _node_sessions(fleet, node),
            15,
            f"{node}'s sessions ended",
        )
        rows = wait_until(
            lambda node=node, wanted=wanted: (
                (r := fleet["collect"].sessions(node)) and {int(x["id"]) for x in r} >= wanted and r
            ),
            60,
            f"{node}'s sessions at the collector",
        )
        ids = [int(r["id"]) for r in rows]
        assert len(ids) == len(set(ids))  # exactly once
        assert set(ids) == _node_sessions(fleet, node)


def test_fleet_node_killed_goes_offline_through_last_will(fleet):
    listener = fleet["listener"]
    listener.wait(lambda l: l.retained.get("lampctl/n3/status") == b"online", 30, "n3 online")
    fleet["nodes"]["n3"].kill9()
    listener.wait(lambda l: l.retained.get("lampctl/n3/status") == b"offline", 30, "n3 offline")
    wait_until(lambda: fleet["collect"].fleet()["nodes"].get("n3") == "offline", 10, "collector sees n3 offline")


def test_s9_a_pi_without_paho_still_serves_and_keeps_its_records(tmp_path):
    """[mqtt] set but paho-mqtt missing: the lamps work, the records wait in the outbox, the log says why."""
    fake = tmp_path / "nopaho" / "paho"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('paho-mqtt removed for this test')\n")
    config = service_config(tmp_path, TWO_LAMPS, extra='\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\nnode = "lone"\n')
    tokens = add_users(config)
    svc = ServiceProcess(config, extra_env={"PYTHONPATH": f"{fake.parent}:{ROOT}"}).start()
    try:
        assert svc.post("/api/lamps/room1/start", {"seconds": 0.3}, token=tokens["ann"])[0] == 201
        wait_until(lambda: svc.get("/api/lamps/room1", token=tokens["ann"])[1]["state"] == "off", 10, "session over")
        assert "paho-mqtt cannot be loaded" in svc.stderr()
        _, health = svc.get("/api/health")
        assert (health["status"], health["mqtt"]) == (
            "degraded",
            {"connected": False, "backlog": None, "oldest_unsent_s": None},
        )
    finally:
        assert svc.stop() == 0
    from lampctl.fleet.outbox import Outbox

    waiting = Outbox(tmp_path / "var" / "lampctl.db").unsent(1000)
    assert [r["id"] for _, kind, r in waiting if kind == "session"] == [1]
