"""The panel's HTTP server: waitress, bounded so idle or slow clients cannot keep a Stop out (S10)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import re
import select
import socket
import sys
import threading
import time

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask

log = logging.getLogger("lampctl")

# A clinic has a few tablets and phones; waitress's default of 100 connections was what
# an idle flood filled. Past this, the idlest connection is closed to make room.
CONNECTION_LIMIT = 250
# A keep-alive connection silent this long is closed (waitress's default is 120 s);
# the panel's browser simply reconnects.
IDLE_TIMEOUT_S = 30
# A request whose head and body have not all arrived this long after its first byte
# is a slow client (slowloris) holding a slot: closed.
REQUEST_TIMEOUT_S = 10
# How often idle and slow connections are looked for.
CLEANUP_INTERVAL_S = 1
# The largest request body the service reads (Flask's MAX_CONTENT_LENGTH, web/__init__.py):
# waitress refuses a longer one with 413 before buffering it, not after spooling up to 1 GB
# to a temporary file. A head (request line and headers, cookies included) is bounded too.
MAX_BODY_BYTES = 64 * 1024
MAX_HEAD_BYTES = 32 * 1024
# Evicted per pass when at the limit, so a burst of new connections gets room fast.
EVICT_BATCH = 16
EVICT_LOG_INTERVAL_S = 10.0
WORKER_THREADS = 8
# The interpreter's switch interval while serving (sys.setswitchinterval; CPython's default is 5 ms).
SWITCH_INTERVAL_S = 0.001
OUTBUF_HIGH_WATERMARK = 1 << 20
# Threads that serve only Stop requests: a Stop never queues behind reads.
SAFETY_LANE_THREADS = 2
# A read waits at most this long for the Stops being served before it starts anyway.
READ_HOLD_MAX_S = 0.5
# A Stop's reply waits up to 2 s for its record (web/codes.py): with the disk failing, each
# Stop holds its thread that long, so the lane grows rather than queue the next Stop behind
# them. The ceiling bounds a flood of authorised Stops; past it they queue.
SAFETY_LANE_MAX_THREADS = 32
# POST .../stop, /stop-all, /estop (API and panel forms).
STOP_PATH = re.compile(r"/(stop|stop-all|estop)/?$")
# The same, as the request line waiting in a connection's socket (read without taking it, S10):
# the network thread reads such a connection before the others of its pass.
STOP_LINE = re.compile(rb"POST [^ ?#]*/(stop|stop-all|estop)/?[ ?#]")
# Enough of a request line for the longest Stop path (a lamp id is at most 32 characters).
PEEK_BYTES = 256
# POST /api/lamps/<id>/start|extend and /panel/lamps/<id>/start|extend: registered on arrival (S19).
ARRIVING_PATH = re.compile(r"/lamps/([a-z0-9-]+)/(start|extend)/?$")
# The WSGI environ key that carries a request's arrival time (time.monotonic, S19).
ARRIVED_KEY = "lampctl.arrived"


class StampedParser(HTTPRequestParser):
    """waitress's request parser, stamping when the request was complete (S19: its time is when it arrived).

    Stamped on the network thread as the last byte is parsed, before the request queues
    for a worker: however long it waits, it keeps its place in time.
    """

    arrived: float | None = None

    def received(self, data):
        n = super().received(data)
        if self.completed and self.arrived is None:
            self.arrived = time.monotonic()
        return n


class StampedTask(WSGITask):
    """A WSGI task that hands the app its request's arrival time as environ["lampctl.arrived"]."""

    def get_environment(self):
        environ = super().get_environment()
        environ[ARRIVED_KEY] = getattr(self.request, "arrived", None)
        return environ


def _arriving(channel) -> tuple[str, float] | None:
    """(lamp id, arrival) of a start or extension a channel is about to queue, else None."""
    requests = getattr(channel, "requests", None)
    if not requests:
        return None
    request = requests[0]
    arrived = getattr(request, "arrived", None)
    match = ARRIVING_PATH.search(getattr(request, "path", "") or "")
    if getattr(request, "command", "") != "POST" or match is None or arrived is None:
        return None
    return match.group(1), arrived


def _now() -> float:
    """S22: every timeout of the server (idle, slow request, eviction order, shutdown) runs on this clock."""
    return time.monotonic()


def is_stop(channel) -> bool:
    """Whether the request a channel is about to serve is a Stop (stop, stop-all, E-stop)."""
    requests = getattr(channel, "requests", None)
    if not requests:
        return False
    request = requests[0]
    return getattr(request, "command", "") == "POST" and bool(STOP_PATH.search(getattr(request, "path", "") or ""))


class _StopTask:
    """A Stop in the lane; `done` runs however it ends, so reads never stay held back."""

    __slots__ = ("task", "done")

    def __init__(self, task, done):
        self.task, self.done = task, done

    def service(self):
        try:
            self.task.service()
        finally:
            self.done()

    def cancel(self):
        try:
            self.task.cancel()
        finally:
            self.done()


class _ReadTask:
    """Any other request: it starts only once no Stop is being served (or after READ_HOLD_MAX_S).

    `done` runs once it is answered or cancelled (a start's arrival is forgotten, S19).
    """

    __slots__ = ("task", "clear", "done")

    def __init__(self, task, clear: threading.Event, done=None):
        self.task, self.clear, self.done = task, clear, done

    def service(self):
        try:
            self.clear.wait(READ_HOLD_MAX_S)
            self.task.service()
        finally:
            self._done()

    def cancel(self):
        try:
            self.task.cancel()
        finally:
            self._done()

    def _done(self):
        done, self.done = self.done, None
        if done is not None:
            done()


class SafetyLaneDispatcher(ThreadedTaskDispatcher):
    """waitress's thread pool plus a lane of its own for Stops (S10).

    A Stop goes to the lane's threads, so eight slow reads (a hung disk, a big CSV)
    in the main pool cannot keep it waiting. While a Stop is being served, the pool
    starts no new request: on two cores every busy reader takes the interpreter's lock
    from the Stop's thread again and again, which made a Stop 20-40 times slower
    under 50 polling panels than on an idle service.
    """

    def __init__(self, lane_threads: int = SAFETY_LANE_THREADS, arrivals=None):
        super().__init__()
        # Told of each start or extension as it queues (note_arrival/drop_arrival), so a Stop
        # served ahead of it can say it cancelled a start (S19); None: nobody is told.
        self.arrivals = arrivals
        self.lane = ThreadedTaskDispatcher()
        self.lane.set_thread_count(lane_threads)
        self._stops = 0
        self._stops_lock = threading.Lock()
        self._no_stop = threading.Event()
        self._no_stop.set()
        self._hold_since = 0.0
        # Called when the last Stop being served ends (the server's trigger): the network thread,
        # which reads only the Stops' connections meanwhile, goes back to the others at once.
        self.wake = lambda: None

    def add_task(self, task) -> None:
        if is_stop(task):
            with self._stops_lock:
                if self._stops == 0:
                    self._hold_since = _now()
                self._stops += 1
                self._no_stop.clear()
            task.serving_stop = True
            self._grow_lane()
            self.lane.add_task(_StopTask(task, lambda: self._stop_done(task)))
        else:
            super().add_task(_ReadTask(task, self._no_stop, self._note_arrival(task)))

    def holding(self) -> float:
        """Seconds the other connections stay unread for the Stops being served (0: none; at most READ_HOLD_MAX_S)."""
        with self._stops_lock:
            if not self._stops:
                return 0.0
            return max(0.0, self._hold_since + READ_HOLD_MAX_S - _now())

    def _note_arrival(self, task):
        arriving = _arriving(task) if self.arrivals is not None else None
        if arriving is None:
            return None
        try:
            self.arrivals.note_arrival(*arriving)
        except Exception:  # wording only: a failure here must not keep the request from its worker
            log.exception("arrival of %s not noted", arriving[0])
            return None
        return lambda: self.arrivals.drop_arrival(*arriving)

    def _stop_done(self, channel) -> None:
        channel.serving_stop = False
        with self._stops_lock:
            self._stops -= 1
            last = self._stops == 0
            if last:
                self._no_stop.set()
        if last:
            with contextlib.suppress(OSError):  # the server closing: its loop has ended, nothing to wake
                self.wake()

    def _grow_lane(self) -> None:
        """One more lane thread when none is idle (S10: a Stop never waits for another's record)."""
        lane = self.lane
        with lane.lock:
            running = len(lane.threads) - lane.stop_count
            idle = running - lane.active_count - len(lane.queue)
        if idle <= 0 and running < SAFETY_LANE_MAX_THREADS:
            lane.set_thread_count(running + 1)

    def shutdown(self, cancel_pending=True, timeout=5):
        lane_done = shutdown_dispatcher(self.lane, cancel_pending, timeout)
        return shutdown_dispatcher(self, cancel_pending, timeout) and lane_done


def shutdown_dispatcher(dispatcher: ThreadedTaskDispatcher, cancel_pending: bool, timeout: float) -> bool:
    """waitress's ThreadedTaskDispatcher.shutdown, with its timeout on the monotonic clock (S22).

    waitress counts the wait for its threads on time.time(): a wall clock stepped back while
    the service stops would hold the close steps (sessions `interrupted`, the log flushed)
    until a hung request ended.
    """
    dispatcher.set_thread_count(0)
    threads = dispatcher.threads
    expiration = _now() + timeout
    with dispatcher.lock:
        while threads:
            if _now() >= expiration:
                dispatcher.logger.warning("%d thread(s) still running", len(threads))
                break
            dispatcher.thread_exit_cv.wait(0.1)
        if cancel_pending:
            queue = dispatcher.queue
            if queue:
                dispatcher.logger.warning("Canceling %d pending task(s)", len(queue))
            while queue:
                queue.popleft().cancel()
            dispatcher.queue_cv.notify_all()
            return True
    return False


class SentenceErrorTask(ErrorTask):
    """waitress's own refusals of an oversized body or head, as one sentence (JSON under /api/)."""

    SENTENCES = {
        413: (
            "request-entity-too-large",
            f"The request body is larger than {MAX_BODY_BYTES // 1024} KB, the most the service accepts.",
        ),
        431: (
            "request-header-fields-too-large",
            f"The request's headers are larger than {MAX_HEAD_BYTES // 1024} KB, the most the service accepts.",
        ),
    }

    def execute(self):
        error = self.request.error
        if error.code not in self.SENTENCES:
            return super().execute()
        code, sentence = self.SENTENCES[error.code]
        if (getattr(self.request, "path", "") or "").startswith("/api/"):
            body, kind = json.dumps({"error": sentence, "code": code}).encode(), "application/json"
        else:
            body, kind = (sentence + "\n").encode(), "text/plain; charset=utf-8"
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", kind))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class BoundedChannel(HTTPChannel):
    """An HTTP connection that remembers when its unfinished request began, on the monotonic clock (S22)."""

    error_task_class = SentenceErrorTask
    request_started: float | None = None
    parser_class = StampedParser
    task_class = StampedTask
    # Set while a Stop of this connection is in the lane: the network thread keeps serving it.
    serving_stop = False

    def __init__(self, server, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map=map)
        fresh = getattr(server, "fresh", None)
        if fresh is not None:
            fresh.append(self)

    def next_is_stop(self) -> bool:
        """Whether the request waiting unread in this connection's socket is a Stop (peeked, not taken)."""
        if self.request is not None:  # in the middle of a request: what waits is its rest
            return False
        try:
            head = self.socket.recv(PEEK_BYTES, socket.MSG_PEEK)
        except OSError:  # nothing there yet, or gone: the ordinary read finds out
            return False
        return STOP_LINE.match(head) is not None

    def waiting(self) -> bytes | None:
        """What waits unread in this connection's socket: a first byte, b"" once the client has
        closed it, or None when nothing waits (peeked, not taken; never blocks)."""
        try:
            return self.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:  # reset or gone: as good as closed
            return b""

    _last_activity = 0.0

    @property
    def last_activity(self) -> float:
        return self._last_activity

    @last_activity.setter
    def last_activity(self, _wall: float) -> None:
        # waitress stamps activity with time.time() in five places; whatever it passes, the
        # stamp is monotonic, so a wall-clock step neither keeps an idle connection open for
        # ever nor closes a busy one (S22).
        self._last_activity = _now()

    def writable(self):
        """Whether the loop should send this connection's buffered reply: not while its task still
        writes it, unless that task waits for the loop to drain the buffer.

        waitress's writable() says yes whenever a reply waits in the buffer. While the task runs,
        its worker sends each write itself, holding the buffer's lock across the send; the loop,
        finding the socket writable, tried that lock, failed, and polled again, taking the
        interpreter's lock from the worker each time: 8-30 empty passes per GET /api/lamps. The
        loop is needed while a task runs only once the buffer passes the high watermark (the
        worker then waits for it, in _flush_outbufs_below_high_watermark); whatever is left when
        the task ends is sent by the pass its end wakes (HTTPChannel.service pulls the trigger).
        """
        if self.will_close or self.close_when_flushed:
            return True
        if not self.total_outbufs_len:
            return False
        return not self.requests or self.total_outbufs_len > self.adj.outbuf_high_watermark

    def received(self, data):
        before = self.request
        result = super().received(data)
        if self.request is None:
            self.request_started = None
        elif self.request is not before:
            self.request_started = _now()
        return result


class BoundedServer(TcpWSGIServer):
    """At the connection limit, close the idlest connections instead of refusing new ones.

    waitress stops accepting at connection_limit, so idle connections (no login
    needed) used to lock every client out until they timed out. Here a full server
    closes the connections that have been quiet longest and have no request being
    served; the listening socket keeps accepting, so a Stop gets in.
    """

    channel_class = BoundedChannel
    _evicted = 0
    _next_evict_log = 0.0

    def __init__(self, *args, **kwargs):
        # Connections accepted in the current pass of the loop (BoundedChannel adds itself).
        self.fresh: list[BoundedChannel] = []
        super().__init__(*args, **kwargs)

    def run(self):
        # waitress's run(), on the Stop-first loop below.
        try:
            while self._map:
                self.poll_once(self.adj.asyncore_loop_timeout)
        except (SystemExit, KeyboardInterrupt):
            self.task_dispatcher.shutdown()

    def _first(self, obj) -> bool:
        """Handled first, and during a hold: the listener, the trigger, the connections of Stops being
        served, and those to be closed (at the connection limit the idlest make room for a new Stop)."""
        return not isinstance(obj, HTTPChannel) or obj.serving_stop or obj.will_close

    def poll_once(self, timeout: float) -> None:
        """One pass of waitress's poll loop (wasyncore.poll2), a Stop first (S10).

        Under 50 polling panels a pass read every ready connection in the order they were
        accepted, each parse taking the interpreter's lock from the threads already serving,
        so a Stop on a new connection waited two whole passes before a thread saw it. Here a
        pass handles the listener and the trigger first, then any connection whose waiting
        request line is a Stop (peeked, not read), then one accepted in this very pass if a
        Stop already waits in it; only then the others, looking for a new connection after
        each (it may bring a Stop). While a Stop is being served (at most
        READ_HOLD_MAX_S) the others are neither read nor polled: the network thread leaves the
        interpreter to the Stop's thread, and the dispatcher's wake() ends the hold at once.
        """
        dispatcher = self.task_dispatcher
        holding = dispatcher.holding()
        pollster = select.poll()
        for fd, obj in list(self._map.items()):
            if holding and not self._first(obj):
                continue
            flags = 0
            if obj.readable():
                flags |= select.POLLIN | select.POLLPRI
            if obj.writable() and not obj.accepting:  # accepting sockets are never writable
                flags |= select.POLLOUT
            if flags:
                pollster.register(fd, flags)
        wait = min(timeout, holding) if holding else timeout
        try:
            ready = pollster.poll(math.ceil(wait * 1000))
        except OSError as err:
            if err.args[0] != errno.EINTR:
                raise
            ready = []
        first: list[tuple[object, int]] = []
        rest: list[tuple[object, int]] = []
        for fd, flags in ready:
            obj = self._map.get(fd)
            if obj is None:
                continue
            urgent = self._first(obj) or (flags & select.POLLIN and obj.next_is_stop())
            (first if urgent else rest).append((obj, flags))
        del self.fresh[:]
        for obj, flags in first:
            wasyncore.readwrite(obj, flags)
        self._read_fresh_stops()
        pending = select.poll()
        pending.register(self.socket.fileno(), select.POLLIN)
        listener: select.poll | None = pending
        for obj, flags in rest:
            if dispatcher.holding():
                break  # left in the kernel until the Stop has been served
            wasyncore.readwrite(obj, flags)
            # A connection that came meanwhile may bring a Stop; once a pass at most when the
            # server is full (readable() then closes idle connections rather than accept).
            if listener is not None and listener.poll(0):
                if self.readable():
                    self.handle_read_event()
                    self._read_fresh_stops()
                else:
                    listener = None

    def _read_fresh_stops(self) -> None:
        """Read the connections accepted since the last look whose waiting request is a Stop."""
        fresh, self.fresh = self.fresh, []
        for channel in fresh:
            if channel.connected and channel.next_is_stop():
                wasyncore.readwrite(channel, select.POLLIN)

    def readable(self):
        # waitress's own readable(), with eviction where it would stop accepting (and
        # without its two log lines per round, which a flood would repeat endlessly), and
        # its clean-up on the monotonic clock (S22; waitress uses time.time()).
        now = _now()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        if not self.accepting:
            return False
        if len(self._map) >= self.adj.connection_limit:
            self.evict_idlest(EVICT_BATCH)
            return False  # the evicted close in this pass; accept again on the next
        return True

    def evict_idlest(self, count: int) -> int:
        """Close up to `count` idle connections: those the client has closed first, then the idlest.

        A connection whose request waits unread in the kernel (the network thread holds its reads
        while a Stop is served) is not idle: closing it would reset a Stop nobody has read yet.
        """
        candidates = []
        for ch in self.active_channels.values():
            if ch.requests or ch.will_close:
                continue
            waiting = ch.waiting()
            if waiting:  # a request not read yet
                continue
            candidates.append((waiting is None, ch.last_activity, ch))  # closed by the client (b"") first
        candidates.sort(key=lambda c: (c[0], c[1]))
        idle = [ch for _, _, ch in candidates[:count]]
        for channel in idle:
            channel.will_close = True
        self._evicted += len(idle)
        now = _now()
        if self._evicted and now >= self._next_evict_log:
            # Once per interval, so a flood cannot flood the journal too.
            log.warning(
                "connection limit %d reached: closed %d idle connection(s) to make room",
                self.adj.connection_limit,
                self._evicted,
            )
            self._evicted, self._next_evict_log = 0, now + EVICT_LOG_INTERVAL_S
        return len(idle)

    def maintenance(self, now):
        """Close idle (IDLE_TIMEOUT_S) and slow (REQUEST_TIMEOUT_S) connections; `now` is monotonic (S22)."""
        super().maintenance(now)
        cutoff = now - REQUEST_TIMEOUT_S
        for channel in self.active_channels.values():
            started = getattr(channel, "request_started", None)
            if not channel.requests and started is not None and started < cutoff:
                channel.will_close = True


def make_server(app, host: str, port: int, arrivals=None):
    """A waitress server for app on host:port, not yet running; its effective port is server.port.

    arrivals (the controller) is told of each start and extension as it queues (S19).
    """
    # waitress logs "Task queue depth is N" for each request queued while the workers are
    # busy: under polling panels that is a journal line per request, for a normal state.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    # S10: a thread waiting for the interpreter's lock (a Stop's, the network thread) asks the
    # holder to let go after this long; CPython's 5 ms made a loaded Stop wait several of them.
    # Measured with 50 polling clients: Stop p50 5-14 ms against 13-19 ms at 5 ms (docs/performance.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    dispatcher = SafetyLaneDispatcher(arrivals=arrivals)
    dispatcher.set_thread_count(WORKER_THREADS)
    # What create_server does for one TCP listener, with our subclass.
    adj = Adjustments(host=host, port=port, **_adjustments())
    server = BoundedServer(app, {}, True, None, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])
    dispatcher.wake = server.pull_trigger
    # effective_port is a str in some waitress versions.
    server.port = int(server.effective_port)
    return server


def _adjustments() -> dict:
    return dict(
        threads=WORKER_THREADS,
        ident="lampctl",
        clear_untrusted_proxy_headers=True,
        connection_limit=CONNECTION_LIMIT,
        channel_timeout=IDLE_TIMEOUT_S,
        cleanup_interval=CLEANUP_INTERVAL_S,
        # waitress refuses a body at least this long (its test is >=).
        max_request_body_size=MAX_BODY_BYTES + 1,
        max_request_header_size=MAX_HEAD_BYTES,
        # A streamed reply (the CSV export) waits for the client past this much unsent
        # output, instead of waitress's 16 MB that stayed in the process after a download.
        outbuf_high_watermark=OUTBUF_HIGH_WATERMARK,
        # select() fails on descriptors past 1024; poll() has no such ceiling.
        asyncore_use_poll=True,
    )
