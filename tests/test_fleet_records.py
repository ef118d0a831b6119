"""A node's records at the collector: each within a bound of its commit, once, and still after a restore.

A real `lampctl serve --simulate`, a real mosquitto and a real `lampctl collect`.
"""

from __future__ import annotations

import json
import time

import pytest

from lampctl.fleet.outbox import Outbox
from lampctl.testing import TWO_LAMPS, ServiceProcess, add_users, service_config, wait_until
from lampctl.testing.mqtt import Broker, Listener, mosquitto_path
from lampctl.tools.backup import backup_database, restore_database
from tests.test_fleet_integration import Collect

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed (./test.sh installs it)"),
    pytest.mark.timeout(180),
]

# The goal is a second from commit to the collector; the bound leaves room for a loaded 2-core machine.
BOUND_S = 3.0


class Node:
    def __init__(self, workdir, name: str, broker_url: str):
        (workdir / name).mkdir()
        self.name = name
        self.config = service_config(
            workdir / name, TWO_LAMPS, extra=f'\n[mqtt]\nurl = "{broker_url}"\nnode = "{name}"\n'
        )
        self.database = workdir / name / "var" / "lampctl.db"
        self.tokens = add_users(self.config)
        self.proc = ServiceProcess(self.config).start()

    def restart(self) -> None:
        self.proc = ServiceProcess(self.config).start()

    def session(self) -> int:
        """A short session on room1, to its end; its id."""
        status, body = self.proc.post(
            "/api/lamps/room1/start", {"seconds": 0.3, "new_patient": True}, token=self.tokens["ann"]
        )
        assert status == 201, body
        session_id = body["session_id"]
        wait_until(lambda: self.ended(session_id), 10, f"session {session_id} ended")
        return session_id

    def ended(self, session_id: int) -> bool:
        _, body = self.proc.get("/api/sessions", token=self.tokens["admin"])
        return any(s["id"] == session_id and s["ended_at"] for s in body["sessions"])

    def outbox(self) -> int:
        box = Outbox(self.database)
        try:
            return box.count()
        finally:
            box.close()


@pytest.fixture
def fleet(tmp_path):
    broker = Broker(tmp_path, persistent=True).start()
    collect = Collect(tmp_path, broker.url)
    node = Node(tmp_path, "r1", broker.url)
    try:
        yield broker, collect, node
    finally:
        node.proc.stop()
        assert collect.stop() == 0
        broker.stop()


def _at_collector(collect, node: str) -> list[int]:
    return sorted(int(r["id"]) for r in collect.sessions(node))


def test_fleet_sessions_in_a_row_reach_the_collector_within_the_bound_while_the_outbox_empties(fleet):
    """Outbox ids used to restart from 1 once it emptied, below what the publisher had sent:
    such records waited for the next reconnect."""
    _, collect, node = fleet
    sent, took = [], []
    for _ in range(4):
        wait_until(lambda: node.outbox() == 0, 10, "the outbox empty before the next session")
        sent.append(node.session())
        t0 = time.monotonic()
        wait_until(
            lambda: _at_collector(collect, "r1") == sent,
            BOUND_S,
            f"session {sent[-1]} at the collector within {BOUND_S} s of its end",
        )
        took.append(time.monotonic() - t0)
    assert sent == [1, 2, 3, 4]
    wait_until(lambda: node.outbox() == 0, BOUND_S, "the outbox empty: every row acknowledged")
    wait_until(
        lambda: node.proc.get("/api/health")[1]["mqtt"] == {"connected": True, "backlog": 0, "oldest_unsent_s": None},
        5,
        "health: nothing waits",
    )
    print(f"end -> collector: {', '.join(f'{t:.2f} s' for t in took)}")


def test_fleet_new_sessions_after_a_restore_are_stored_though_their_ids_repeat(fleet, tmp_path):
    """A restore numbers sessions again from the backup's; they are new records, not replays."""
    _, collect, node = fleet
    assert node.session() == 1
    wait_until(lambda: _at_collector(collect, "r1") == [1], BOUND_S, "session 1 at the collector")
    backup = backup_database(node.database, tmp_path / "backups", keep=5).path
    assert node.session() == 2
    wait_until(lambda: _at_collector(collect, "r1") == [1, 2], BOUND_S, "session 2 at the collector")
    assert node.proc.stop() == 0
    restore_database(node.database, backup)
    node.restart()
    assert [node.session(), node.session()] == [2, 3]  # ids the collector has seen (2) and not (3)
    wait_until(
        lambda: _at_collector(collect, "r1") == [1, 2, 2, 3],
        BOUND_S * 2,
        "both sessions after the restore at the collector",
    )
    rows = [r for r in collect.sessions("r1") if r["id"] == "2"]
    assert len({r["origin"] for r in rows}) == 2 and all(r["origin"] for r in rows)


def test_fleet_a_true_replay_is_stored_once_with_or_without_an_origin(fleet):
    broker, collect, _ = fleet
    listener = Listener(broker.port, [])
    try:
        before = collect.fleet()["duplicates"]
        record = {
            "id": 41,
            "lamp_id": "room1",
            "user": "ann",
            "started_at": "2026-11-25T10:00:00.000Z",
            "ended_at": "2026-11-25T10:10:00.000Z",
            "planned_s": 600.0,
            "actual_s": 600.0,
            "end_reason": "completed",
            "continues": None,
            "node": "old",
        }
        for payload in (record, {**record, "id": 42, "origin": "0123456789abcdef"}):
            listener.publish("lampctl/old/sessions", json.dumps(payload))
            listener.publish("lampctl/old/sessions", json.dumps(payload))  # sent again before its PUBACK
        wait_until(lambda: collect.fleet()["duplicates"] - before >= 2, 10, "both replays counted")
        rows = sorted((int(r["id"]), r["origin"]) for r in collect.sessions("old"))
        assert rows == [(41, ""), (42, "0123456789abcdef")]
    finally:
        listener.close()
