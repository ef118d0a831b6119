"""The server's loop reads a Stop before the other connections of its pass, and leaves them unread while it is served (S10).

Under 50 polling panels a Stop on a new connection used to wait for two whole passes of the
network thread (its accept, then every other connection's read) before a thread saw it.
"""

from __future__ import annotations

import select
import socket
import sys
import threading

import pytest

from lampctl.platform import httpserver
from lampctl.testing import wait_until

GET = b"GET /api/lamps HTTP/1.1\r\nHost: x\r\n\r\n"
STOP_ALL = b"POST /api/stop-all HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture
def server():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    before = sys.getswitchinterval()
    srv = httpserver.make_server(app, "127.0.0.1", 0)
    yield srv
    for channel in _channels(srv):
        channel.close()
    srv.close()
    srv.task_dispatcher.shutdown(timeout=5)
    sys.setswitchinterval(before)


@pytest.fixture
def queued(server, monkeypatch):
    """The paths of the requests the loop hands to the dispatcher, in order (not served)."""
    paths: list[str] = []
    monkeypatch.setattr(server.task_dispatcher, "add_task", lambda channel: paths.append(channel.requests[0].path))
    return paths


def _channels(server) -> list:
    return [ch for ch in server._map.values() if isinstance(ch, httpserver.BoundedChannel)]


def _open(server, count: int, clients: list) -> list:
    """`count` connections, all accepted by the loop (nothing sent yet), server side in accept order."""
    for _ in range(count):
        clients.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
    wait_until(lambda: server.poll_once(0.05) or len(_channels(server)) == count, 20, "the connections accepted")
    return _channels(server)


def _all_waiting(channels) -> bool:
    readable, _, _ = select.select([ch.socket for ch in channels], [], [], 0.05)
    return len(readable) == len(channels)


@pytest.fixture
def clients():
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


@pytest.mark.parametrize(
    "line, stop",
    [
        (b"POST /api/stop-all HTTP/1.1\r\n", True),
        (b"POST /api/lamps/room-2/stop HTTP/1.1\r\n", True),
        (b"POST /api/estop?x=1 HTTP/1.1\r\n", True),
        (b"POST /lamps/room1/stop/ HTTP/1.1\r\n", True),
        (b"POST /stop-all HTTP/1.1\r\n", True),
        (b"GET /api/stop-all HTTP/1.1\r\n", False),
        (b"POST /api/lamps/room1/start HTTP/1.1\r\n", False),
        (b"POST /api/lamps/stop/extend HTTP/1.1\r\n", False),
        (b"POST /api/stop-allx HTTP/1.1\r\n", False),
        (b"", False),
    ],
)
def test_s10_a_waiting_stop_is_recognised_without_being_read(server, line, stop):
    sock_a, sock_b = socket.socketpair()
    with sock_a, sock_b:
        sock_a.setblocking(False)
        channel = httpserver.BoundedChannel(server, sock_a, ("127.0.0.1", 1), server.adj, map={})
        if line:
            sock_b.sendall(line + b"Host: x\r\n\r\n")
        assert channel.next_is_stop() is stop
        if line:  # peeked, not taken: the ordinary read still gets all of it
            assert sock_a.recv(4096).startswith(line)


def test_s10_a_stop_is_read_before_the_other_connections_of_its_pass(server, queued, clients):
    channels = _open(server, 20, clients)
    for sock in clients[:-1]:  # the connections accepted first each send a poll...
        sock.sendall(GET)
    clients[-1].sendall(STOP_ALL)  # ...and the last one accepted a Stop
    wait_until(lambda: _all_waiting(channels), 20, "every request in the server's sockets")
    server.poll_once(0)
    assert queued[0] == "/api/stop-all", f"the Stop was read after {queued.index('/api/stop-all')} poll(s)"
    assert len(queued) == 20


def test_s10_a_stop_sent_with_the_connect_is_read_in_the_pass_that_accepts_it(server, queued, clients):
    clients.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
    clients[0].sendall(STOP_ALL)
    wait_until(lambda: select.select([server.socket], [], [], 0.05)[0], 20, "the connection in the backlog")
    server.poll_once(0)
    assert queued == ["/api/stop-all"], "the Stop waited for another pass of the loop"


def test_s10_while_a_stop_is_served_other_connections_are_left_unread(server, queued, clients, monkeypatch):
    channels = _open(server, 3, clients)
    for sock in clients:
        sock.sendall(GET)
    wait_until(lambda: _all_waiting(channels), 20, "every request in the server's sockets")
    monkeypatch.setattr(server.task_dispatcher, "holding", lambda: 0.01)
    server.poll_once(0)
    assert queued == [], "a poll was read while a Stop was being served"
    assert all(ch.socket.recv(4096, socket.MSG_PEEK) == GET for ch in channels)  # still in the kernel
    monkeypatch.setattr(server.task_dispatcher, "holding", lambda: 0.0)
    server.poll_once(0)
    assert queued == ["/api/lamps"] * 3


def test_s10_during_a_hold_connections_being_closed_still_close(server, queued, clients, monkeypatch):
    # At the connection limit the idlest are marked to close so that a new Stop gets a place.
    channels = _open(server, 3, clients)
    channels[0].will_close = True
    monkeypatch.setattr(server.task_dispatcher, "holding", lambda: 0.01)
    server.poll_once(0)
    assert not channels[0].connected and channels[0] not in _channels(server)
    assert all(ch.connected for ch in channels[1:])


class _Channel:
    """A channel as the dispatcher sees it, with a Stop whose serving the test ends."""

    def __init__(self, path: str, release: threading.Event):
        self.requests = [type("Request", (), {"command": "POST", "path": path})()]
        self.release, self.served = release, threading.Event()

    def service(self):
        self.release.wait(30)
        self.served.set()

    def cancel(self):
        pass


def test_s10_the_hold_lasts_while_a_stop_is_served_and_ends_with_a_wake(monkeypatch):
    dispatcher = httpserver.SafetyLaneDispatcher(lane_threads=1)
    woken = threading.Event()
    dispatcher.wake = woken.set
    release = threading.Event()
    stop = _Channel("/api/stop-all", release)
    try:
        assert dispatcher.holding() == 0.0
        dispatcher.add_task(stop)
        assert 0 < dispatcher.holding() <= httpserver.READ_HOLD_MAX_S
        assert stop.serving_stop  # the loop keeps serving this connection during the hold
        release.set()
        assert stop.served.wait(10) and woken.wait(10), "the loop was not woken when the Stop ended"
        assert dispatcher.holding() == 0.0 and not stop.serving_stop
    finally:
        release.set()
        dispatcher.shutdown(timeout=10)


def test_s10_a_stop_that_hangs_holds_the_other_connections_only_briefly(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(httpserver, "_now", lambda: now[0])
    dispatcher = httpserver.SafetyLaneDispatcher(lane_threads=1)
    release = threading.Event()
    try:
        dispatcher.add_task(_Channel("/api/lamps/room1/stop", release))
        assert dispatcher.holding() == pytest.approx(httpserver.READ_HOLD_MAX_S)
        now[0] += httpserver.READ_HOLD_MAX_S + 0.01
        assert dispatcher.holding() == 0.0
    finally:
        release.set()
        dispatcher.shutdown(timeout=10)


def test_s10_serving_sets_a_short_switch_interval(server):
    # A Stop's thread waiting for the interpreter's lock asks for it after 1 ms, not CPython's 5 ms.
    assert sys.getswitchinterval() == pytest.approx(0.001)


def test_s10_a_stop_ending_after_the_server_closed_ends_its_hold_without_an_error(caplog):
    dispatcher = httpserver.SafetyLaneDispatcher(lane_threads=1)
    ended = threading.Event()

    def closed_trigger():
        ended.set()
        raise OSError(9, "Bad file descriptor")  # the trigger's pipe, closed with the server

    dispatcher.wake = closed_trigger
    release = threading.Event()
    release.set()
    stop = _Channel("/api/estop", release)
    try:
        dispatcher.add_task(stop)
        assert stop.served.wait(10) and ended.wait(10)
        wait_until(lambda: dispatcher.holding() == 0.0 and not stop.serving_stop, 10, "the hold ended")
    finally:
        dispatcher.shutdown(timeout=10)
    # waitress logs a traceback for a task whose service() raises: the journal would show one per close.
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
