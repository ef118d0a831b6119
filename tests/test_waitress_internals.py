"""The waitress internals lampctl/platform/httpserver.py builds on (S10, S19, S22) are still where it expects them.

The Stop lane, the eviction at the connection limit, the monotonic timeouts and the arrival
stamps subclass waitress's server, channel, parser, tasks and thread pool, and read their
counters. pyproject pins waitress to the versions this was checked with; an upgrade whose
internals moved fails here with a sentence naming what moved, before a Stop finds out.
Each internal is named here by hand (not read from httpserver.py).
"""

from __future__ import annotations

import ast
import inspect
import socket
import textwrap
from collections import deque
from importlib.metadata import version

import pytest
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, Task, ThreadedTaskDispatcher, WSGITask

WAITRESS = f"waitress {version('waitress')}"


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def _self_assignments(function) -> set[str]:
    """The attributes a method assigns on self (`self.x = ...`, also in a chain `a = self.x = ...`)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        target.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
    }


def _names_in(function) -> set[str]:
    """Every attribute and name a function's source mentions."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
    }


def _signatures() -> list[tuple[str, object, list[str]]]:
    """(what, function, the parameters httpserver.py calls or overrides it with)."""
    return [
        ("HTTPRequestParser.received", HTTPRequestParser.received, ["self", "data"]),
        ("HTTPChannel.received", HTTPChannel.received, ["self", "data"]),
        ("HTTPChannel.service", HTTPChannel.service, ["self"]),
        ("HTTPChannel.cancel", HTTPChannel.cancel, ["self"]),
        ("HTTPChannel.__init__", HTTPChannel.__init__, ["self", "server", "sock", "addr", "adj", "map"]),
        ("WSGITask.get_environment", WSGITask.get_environment, ["self"]),
        ("ErrorTask.execute", ErrorTask.execute, ["self"]),
        ("Task.set_close_on_finish", Task.set_close_on_finish, ["self"]),
        ("Task.write", Task.write, ["self", "data"]),
        ("ThreadedTaskDispatcher.__init__", ThreadedTaskDispatcher.__init__, ["self"]),
        ("ThreadedTaskDispatcher.set_thread_count", ThreadedTaskDispatcher.set_thread_count, ["self", "count"]),
        ("ThreadedTaskDispatcher.add_task", ThreadedTaskDispatcher.add_task, ["self", "task"]),
        ("ThreadedTaskDispatcher.shutdown", ThreadedTaskDispatcher.shutdown, ["self", "cancel_pending", "timeout"]),
        ("TcpWSGIServer.readable", TcpWSGIServer.readable, ["self"]),
        ("TcpWSGIServer.maintenance", TcpWSGIServer.maintenance, ["self", "now"]),
    ]


@pytest.mark.parametrize("what, function, expected", _signatures(), ids=[s[0] for s in _signatures()])
def test_waitress_methods_lampctl_overrides_or_calls_keep_their_signature(what, function, expected):
    got = _parameters(function)
    assert got[: len(expected)] == expected, (
        f"{WAITRESS}: {what} now takes ({', '.join(got)}), lampctl.platform.httpserver expects ({', '.join(expected)})"
    )


def test_waitress_server_is_built_as_make_server_builds_it():
    # make_server calls BoundedServer(app, {}, True, None, dispatcher=, adj=, sockinfo=).
    got = _parameters(TcpWSGIServer.__init__)
    assert got[:8] == ["self", "application", "map", "_start", "_sock", "dispatcher", "adj", "sockinfo"], (
        f"{WAITRESS}: TcpWSGIServer.__init__ now takes ({', '.join(got)}); lampctl.platform.httpserver.make_server passes "
        "(application, map, _start, _sock) by position and dispatcher, adj, sockinfo by name"
    )


def test_waitress_adjustments_lampctl_sets_are_still_settings():
    settings = {name for name, _cast in Adjustments._params}
    used = {
        "host",
        "port",
        "threads",
        "ident",
        "clear_untrusted_proxy_headers",
        "connection_limit",
        "channel_timeout",
        "cleanup_interval",
        "max_request_body_size",
        "max_request_header_size",
        "outbuf_high_watermark",
        "asyncore_use_poll",
    }
    assert used - settings == set(), f"{WAITRESS}: Adjustments no longer has {sorted(used - settings)}"
    adj = Adjustments(host="127.0.0.1", port=0, connection_limit=7, cleanup_interval=3)
    assert isinstance(adj.listen, list) and len(adj.listen[0]) == 4, (
        f"{WAITRESS}: Adjustments.listen is not a list of socket infos (make_server passes adj.listen[0])"
    )
    assert (adj.connection_limit, adj.cleanup_interval) == (7, 3), (
        f"{WAITRESS}: Adjustments no longer keeps connection_limit and cleanup_interval as attributes "
        "(BoundedServer.readable reads them)"
    )


def test_waitress_channel_class_attributes_lampctl_replaces():
    for name in ("task_class", "error_task_class", "parser_class"):
        assert isinstance(HTTPChannel.__dict__.get(name), type), (
            f"{WAITRESS}: HTTPChannel.{name} is no longer a class attribute (BoundedChannel sets its own)"
        )
    # BoundedChannel turns last_activity into a property, so every `self.last_activity = time.time()`
    # waitress writes goes through it (S22): it must still be a plain attribute, assigned, not a descriptor.
    assert "last_activity" in HTTPChannel.__dict__ and not hasattr(HTTPChannel.__dict__["last_activity"], "__set__"), (
        f"{WAITRESS}: HTTPChannel.last_activity is no longer a plain class attribute"
    )
    stamps = [
        m
        for m in ("__init__", "received", "handle_write", "service", "cancel")
        if "last_activity" in _self_assignments(getattr(HTTPChannel, m))
    ]
    assert stamps, f"{WAITRESS}: HTTPChannel no longer assigns self.last_activity (BoundedChannel stores it monotonic)"
    assert HTTPChannel.will_close is False and HTTPChannel.request is None, (
        f"{WAITRESS}: HTTPChannel.will_close or HTTPChannel.request moved (eviction and the request clock use them)"
    )
    assert {"requests", "server", "adj"} <= _self_assignments(HTTPChannel.__init__), (
        f"{WAITRESS}: HTTPChannel.__init__ no longer sets self.requests (the Stop lane reads requests[0])"
    )
    assert "request" in _self_assignments(HTTPChannel.received) and "requests" in _names_in(HTTPChannel.received), (
        f"{WAITRESS}: HTTPChannel.received no longer sets self.request and queues it on self.requests "
        "(BoundedChannel.received starts the slow-request clock from them)"
    )


def test_waitress_parser_fields_the_stop_lane_and_the_arrival_stamp_read():
    parser = HTTPRequestParser(Adjustments())
    data = b"POST /api/lamps/room1/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    assert parser.completed is False
    consumed = parser.received(data)
    assert consumed == len(data), f"{WAITRESS}: HTTPRequestParser.received no longer returns the bytes it took"
    assert parser.completed is True, f"{WAITRESS}: HTTPRequestParser.completed is not set once a request is whole"
    assert (parser.command, parser.path) == ("POST", "/api/lamps/room1/stop"), (
        f"{WAITRESS}: HTTPRequestParser.command/.path moved (is_stop and the arrival of starts read them)"
    )
    big = HTTPRequestParser(Adjustments(max_request_header_size=64))
    big.received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n")
    assert (big.error.code, big.error.reason) == (431, "Request Header Fields Too Large"), (
        f"{WAITRESS}: a too-large head no longer gives parser.error with .code 431 and .reason "
        "(SentenceErrorTask answers it)"
    )


def test_waitress_error_task_still_answers_from_the_request_error():
    names = _names_in(ErrorTask.execute)
    wanted = {"request", "error", "status", "response_headers", "set_close_on_finish", "content_length", "write"}
    assert wanted <= names, (
        f"{WAITRESS}: ErrorTask.execute no longer uses {sorted(wanted - names)} (SentenceErrorTask does what it did)"
    )
    assert "response_headers" in _self_assignments(Task.__init__) and "request" in _self_assignments(Task.__init__), (
        f"{WAITRESS}: Task.__init__ no longer sets self.request and self.response_headers"
    )


def test_waitress_thread_pool_counters_the_stop_lane_reads():
    pool = ThreadedTaskDispatcher()
    problems = []
    for name, kind in (("threads", set), ("queue", deque)):
        if not isinstance(getattr(pool, name, None), kind):
            problems.append(f"ThreadedTaskDispatcher.{name} is no longer a {kind.__name__}")
    for name in ("lock", "queue_cv", "thread_exit_cv"):
        if not hasattr(getattr(pool, name, None), "__enter__"):
            problems.append(f"ThreadedTaskDispatcher.{name} is no longer a lock or condition")
    for name in ("stop_count", "active_count"):
        if not isinstance(getattr(pool, name, None), int):
            problems.append(f"ThreadedTaskDispatcher.{name} is no longer a counter")
    if not hasattr(pool, "logger"):
        problems.append("ThreadedTaskDispatcher.logger is gone")
    if getattr(getattr(pool, "queue_logger", None), "name", None) != "waitress.queue":
        problems.append("the task queue's log lines no longer come from the logger 'waitress.queue'")
    # _grow_lane counts idle threads as len(threads) - stop_count - active_count - len(queue), as add_task does.
    if not {"threads", "stop_count", "active_count", "queue"} <= _names_in(ThreadedTaskDispatcher.add_task):
        problems.append(
            "ThreadedTaskDispatcher.add_task no longer counts idle threads from threads, stop_count, "
            "active_count and queue"
        )
    # shutdown_dispatcher is waitress's shutdown on the monotonic clock: the same steps.
    if not {"set_thread_count", "threads", "thread_exit_cv", "queue", "popleft", "cancel", "queue_cv"} <= _names_in(
        ThreadedTaskDispatcher.shutdown
    ):
        problems.append("ThreadedTaskDispatcher.shutdown no longer does what shutdown_dispatcher copies")
    if not {"service", "popleft"} <= _names_in(ThreadedTaskDispatcher.handler_thread):
        problems.append("ThreadedTaskDispatcher.handler_thread no longer pops its queue and calls task.service()")
    assert problems == [], f"{WAITRESS}: " + "; ".join(problems)


def test_waitress_server_parts_the_eviction_and_the_clean_up_use():
    # BoundedServer.readable is waitress's readable, copied with eviction and a monotonic clock:
    # it must still be built from the same parts.
    readable = _names_in(TcpWSGIServer.readable)
    wanted = {"next_channel_cleanup", "cleanup_interval", "maintenance", "accepting", "_map", "connection_limit"}
    assert wanted <= readable, f"{WAITRESS}: TcpWSGIServer.readable no longer uses {sorted(wanted - readable)}"
    maintenance = _names_in(TcpWSGIServer.maintenance)
    wanted = {"channel_timeout", "active_channels", "requests", "last_activity", "will_close"}
    assert wanted <= maintenance, f"{WAITRESS}: TcpWSGIServer.maintenance no longer uses {sorted(wanted - maintenance)}"
    assert TcpWSGIServer.channel_class is HTTPChannel and TcpWSGIServer.next_channel_cleanup == 0, (
        f"{WAITRESS}: TcpWSGIServer.channel_class or next_channel_cleanup moved"
    )
    adj = Adjustments(host="127.0.0.1", port=0)
    server = TcpWSGIServer(
        lambda environ, start: [], {}, True, None, dispatcher=ThreadedTaskDispatcher(), adj=adj, sockinfo=adj.listen[0]
    )
    try:
        assert server.active_channels == {} and server.accepting is True and server.adj is adj, (
            f"{WAITRESS}: a server no longer has active_channels, accepting and adj"
        )
        assert isinstance(server._map, dict) and int(server.effective_port) > 0, (
            f"{WAITRESS}: a server no longer has its socket map in _map and its port in effective_port"
        )
        with socket.create_connection(("127.0.0.1", int(server.effective_port)), timeout=10):
            server.handle_accept()
            assert len(server.active_channels) == 1, (
                f"{WAITRESS}: an accepted connection no longer registers in server.active_channels"
            )
            [channel] = server.active_channels.values()
            assert channel.requests == [] and channel.will_close is False
            channel.close()
    finally:
        server.close()


def test_waitress_poll_loop_the_stop_first_loop_copies():
    # BoundedServer.run and poll_once are waitress's run and wasyncore.poll2, reordered (S10):
    # they must still be built from the same parts.
    from waitress import wasyncore

    assert _parameters(wasyncore.readwrite) == ["obj", "flags"], (
        f"{WAITRESS}: wasyncore.readwrite now takes ({', '.join(_parameters(wasyncore.readwrite))}); "
        "BoundedServer.poll_once calls readwrite(obj, flags)"
    )
    poll2 = _names_in(wasyncore.poll2)
    wanted = {"readable", "writable", "accepting", "register", "poll", "readwrite"}
    assert wanted <= poll2, f"{WAITRESS}: wasyncore.poll2 no longer uses {sorted(wanted - poll2)}"
    run = _names_in(TcpWSGIServer.run)
    wanted = {"loop", "asyncore_loop_timeout", "_map", "asyncore_use_poll", "SystemExit", "shutdown"}
    assert wanted <= run, f"{WAITRESS}: TcpWSGIServer.run no longer uses {sorted(wanted - run)}"
    assert "asyncore_loop_timeout" in {name for name, _cast in Adjustments._params}
    service = _names_in(HTTPChannel.service)
    assert "add_task" in service, f"{WAITRESS}: HTTPChannel.service no longer queues a channel's next request"
    for name in ("pull_trigger", "handle_read_event"):
        assert callable(getattr(TcpWSGIServer, name, None)), f"{WAITRESS}: TcpWSGIServer.{name} is gone"
    adj = Adjustments(host="127.0.0.1", port=0)
    server = TcpWSGIServer(
        lambda environ, start: [], {}, True, None, dispatcher=ThreadedTaskDispatcher(), adj=adj, sockinfo=adj.listen[0]
    )
    try:
        assert server.trigger in server._map.values() and server in server._map.values(), (
            f"{WAITRESS}: the trigger and the listener are no longer in the server's socket map"
        )
        with socket.create_connection(("127.0.0.1", int(server.effective_port)), timeout=10):
            server.handle_accept()
            [channel] = server.active_channels.values()
            assert isinstance(channel.socket, socket.socket) and channel.request is None and channel.connected, (
                f"{WAITRESS}: a new channel no longer has socket, request (None) and connected "
                "(BoundedChannel.next_is_stop reads them)"
            )
            channel.close()
    finally:
        server.close()


def test_waitress_reply_buffer_parts_bounded_channel_writable_relies_on():
    # BoundedChannel.writable leaves a running task's reply to its worker below the high
    # watermark: the worker sends each write itself, waits for the loop past the watermark, and
    # the task's end wakes the loop to send what is left.
    problems = []
    if not {"total_outbufs_len", "will_close", "close_when_flushed"} <= _names_in(HTTPChannel.writable):
        problems.append("HTTPChannel.writable no longer decides by total_outbufs_len, will_close, close_when_flushed")
    if not {"requests", "_flush_some", "_flush_some_if_lockable"} <= _names_in(HTTPChannel.handle_write):
        problems.append("HTTPChannel.handle_write no longer sends a finished reply and only tries a running one")
    if not {"_flush_outbufs_below_high_watermark", "_flush_some", "outbuf_lock"} <= _names_in(HTTPChannel.write_soon):
        problems.append("HTTPChannel.write_soon no longer sends each write from the worker under outbuf_lock")
    wait = _names_in(HTTPChannel._flush_outbufs_below_high_watermark)
    if not {"total_outbufs_len", "outbuf_high_watermark", "pull_trigger", "wait"} <= wait:
        problems.append("a worker no longer waits for the loop only past outbuf_high_watermark")
    if "pull_trigger" not in _names_in(HTTPChannel.service):
        problems.append("HTTPChannel.service no longer wakes the loop when a task ends")
    assert problems == [], f"{WAITRESS}: " + "; ".join(problems)
