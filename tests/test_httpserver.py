"""The panel's HTTP server (S10): Stops have a lane of their own, and a full server closes its idlest connections."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from lampctl import httpserver


class Request:
    def __init__(self, command, path):
        self.command, self.path = command, path


class Task:
    """Stands in for a waitress channel handed to the dispatcher."""

    def __init__(self, command, path, work=lambda: None):
        self.requests = [Request(command, path)]
        self.work = work
        self.done = threading.Event()

    def service(self):
        self.work()
        self.done.set()

    def cancel(self):
        pass


@pytest.mark.parametrize("command, path, stop", [
    ("POST", "/api/lamps/room1/stop", True),
    ("POST", "/api/stop-all", True),
    ("POST", "/api/estop", True),
    ("POST", "/lamps/room1/stop", True),
    ("POST", "/stop-all", True),
    ("GET", "/api/stop-all", False),
    ("POST", "/api/lamps/room1/start", False),
    ("POST", "/api/lamps/stop/extend", False),
])
def test_s10_stop_requests_are_recognised(command, path, stop):
    assert httpserver.is_stop(Task(command, path)) is stop


def test_s10_stop_is_served_while_every_worker_is_busy():
    dispatcher = httpserver.SafetyLaneDispatcher(lane_threads=1)
    dispatcher.set_thread_count(2)
    release = threading.Event()
    busy = threading.Semaphore(0)

    def read():
        busy.release()
        release.wait(30)

    slow = [Task("GET", "/api/sessions", read) for _ in range(4)]
    try:
        for task in slow:
            dispatcher.add_task(task)
        # Both workers hold a read before the Stop comes (on a loaded machine they may take a while).
        assert busy.acquire(timeout=20) and busy.acquire(timeout=20)
        stop = Task("POST", "/api/stop-all")
        dispatcher.add_task(stop)
        assert stop.done.wait(10), "the Stop waited behind the reads"
        assert not any(t.done.is_set() for t in slow)
    finally:
        release.set()
        dispatcher.shutdown(timeout=10)
    assert all(t.done.is_set() for t in slow[:2])


def test_s10_reads_start_only_after_the_stop_being_served(monkeypatch):
    # On two cores every busy reader takes the interpreter from the Stop's thread: none starts meanwhile.
    monkeypatch.setattr(httpserver, "READ_HOLD_MAX_S", 30)
    dispatcher = httpserver.SafetyLaneDispatcher(lane_threads=1)
    dispatcher.set_thread_count(2)
    release, order = threading.Event(), []
    stop = Task("POST", "/api/stop-all", lambda: (release.wait(30), order.append("stop")))
    read = Task("GET", "/api/lamps", lambda: order.append("read"))
    try:
        dispatcher.add_task(stop)
        dispatcher.add_task(read)
        assert not read.done.wait(0.3), "a read started while a Stop was being served"
        release.set()
        assert read.done.wait(10) and order == ["stop", "read"]
        # With no Stop in the lane, reads go straight through.
        again = Task("GET", "/api/lamps")
        dispatcher.add_task(again)
        assert again.done.wait(10)
    finally:
        release.set()
        dispatcher.shutdown(timeout=10)


def test_s10_a_stop_that_hangs_holds_reads_back_only_briefly(monkeypatch):
    monkeypatch.setattr(httpserver, "READ_HOLD_MAX_S", 0.05)
    dispatcher = httpserver.SafetyLaneDispatcher(lane_threads=1)
    dispatcher.set_thread_count(1)
    release = threading.Event()
    read = Task("GET", "/api/lamps")
    try:
        dispatcher.add_task(Task("POST", "/api/lamps/room1/stop", lambda: release.wait(30)))
        dispatcher.add_task(read)
        assert read.done.wait(10), "reads stayed held back behind a Stop that hangs"
    finally:
        release.set()
        dispatcher.shutdown(timeout=10)


def test_server_bounds_unsent_output_and_keeps_waitress_queue_lines_out_of_the_journal(server):
    import logging

    assert server.adj.outbuf_high_watermark == httpserver.OUTBUF_HIGH_WATERMARK <= 1 << 20
    assert logging.getLogger("waitress.queue").getEffectiveLevel() > logging.WARNING


class Channel:
    def __init__(self, last_activity, busy=False):
        self.last_activity = last_activity
        self.requests = [object()] if busy else []
        self.will_close = False


@pytest.fixture
def server():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    srv = httpserver.make_server(app, "127.0.0.1", 0)
    yield srv
    srv.close()
    srv.task_dispatcher.shutdown(timeout=5)


def test_s10_full_server_evicts_the_idlest_connections_not_busy_ones(server):
    channels = {1: Channel(50.0), 2: Channel(10.0, busy=True), 3: Channel(20.0), 4: Channel(30.0)}
    server.active_channels.update(channels)
    assert server.evict_idlest(2) == 2
    assert [fd for fd, ch in channels.items() if ch.will_close] == [3, 4]


def test_s10_full_server_keeps_accepting(server, monkeypatch):
    # Stand-ins for open connections fill the map up to the limit.
    monkeypatch.setattr(server.adj, "connection_limit", len(server._map) + 1)
    idle = Channel(time.time())
    server.active_channels[99] = idle
    server._map[99] = idle
    assert server.readable() is False  # this pass closes the idlest connection...
    assert idle.will_close
    del server._map[99]  # ...which the loop then closes
    assert server.readable() is True


def test_s10_slow_request_is_closed_after_the_request_timeout(server):
    sock_a, sock_b = socket.socketpair()
    with sock_a, sock_b:
        channel = httpserver.BoundedChannel(server, sock_a, ("127.0.0.1", 1), server.adj, map={})
        channel.received(b"POST /api/stop-all HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        assert channel.request_started is not None
        server.active_channels = {1: channel}
        server.maintenance(channel.request_started + httpserver.REQUEST_TIMEOUT_S - 1)
        assert not channel.will_close
        server.maintenance(channel.request_started + httpserver.REQUEST_TIMEOUT_S + 1)
        assert channel.will_close


def test_s10_complete_request_has_no_request_clock(server):
    sock_a, sock_b = socket.socketpair()
    with sock_a, sock_b:
        channel = httpserver.BoundedChannel(server, sock_a, ("127.0.0.1", 1), server.adj, map={})
        channel.received(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        assert channel.request_started is not None
        channel.received(b"\r\n")
        assert channel.request_started is None  # complete: handed to a worker
