"""FirmwareLink against the simulator process and against in-memory fake peers."""

import signal
import threading
import time

import pytest
import serial

from firmware_bridge import protocol
from firmware_bridge.bridge import FirmwareError, FirmwareLink, FirmwareTimeout
from firmware_bridge.firmware import mpshim
from firmware_bridge.firmware.logic import Firmware
from tests.test_fw_simulator import SimProcess


class LinkEvents:
    """Collects on_link_change calls and lets a test wait for the next one."""

    def __init__(self):
        self.calls = []
        self._cond = threading.Condition()

    def __call__(self, up, reason):
        assert isinstance(reason, str) and reason.endswith(".")
        with self._cond:
            self.calls.append((time.monotonic(), up, reason))
            self._cond.notify_all()

    def wait(self, up, timeout=5.0, after=0):
        """The first call with state ``up`` among calls[after:]; fails after ``timeout``."""

        def found():
            return [c for c in self.calls[after:] if c[1] is up]

        with self._cond:
            if not self._cond.wait_for(found, timeout):
                raise AssertionError("no on_link_change(%r) within %g s; calls: %r" % (up, timeout, self.calls))
            return found()[0]

    @property
    def states(self):
        return [up for _, up, _ in self.calls]


class FakePort:
    """An in-memory serial port; whatever is written goes to ``peer``, whose answer can be read back."""

    def __init__(self, peer, timeout):
        self.peer = peer
        self.timeout = timeout
        self.write_timeout = None
        self.is_open = True
        self.written = bytearray()
        self._rx = bytearray()
        self._failure = None
        self._cond = threading.Condition()

    def write(self, data):
        if self._failure:
            raise serial.SerialException(self._failure)
        self.written += data
        answer = self.peer(bytes(data))
        if answer:
            self.inject(answer)
        return len(data)

    def inject(self, data):
        with self._cond:
            self._rx += data
            self._cond.notify_all()

    def read(self, size=1):
        with self._cond:
            self._cond.wait_for(lambda: self._rx or self._failure, self.timeout)
            if self._failure:
                raise serial.SerialException(self._failure)
            data = bytes(self._rx[:size])
            del self._rx[:size]
            return data

    @property
    def in_waiting(self):
        return len(self._rx)

    def pull_cable(self):
        with self._cond:
            self._failure = "device disconnected"
            self._cond.notify_all()

    def close(self):
        self.is_open = False


class FirmwarePeer:
    """The real firmware logic on real ticks as the far end of a FakePort, with knobs for misbehaving."""

    def __init__(self, lamps=2, watchdog_ms=1000):
        self.fw = Firmware(
            [mpshim.Pin(n) for n in range(lamps)],
            mpshim.ticks_ms,
            mpshim.ticks_diff,
            mpshim.ticks_add,
            watchdog_ms=watchdog_ms,
        )
        self.silent = False
        self.override = None  # callable(frame) -> reply bytes or None to let the firmware answer
        self.errors = []  # ERR reasons the firmware sent
        self.words = []  # commands seen, in order
        self._lock = threading.Lock()

    def __call__(self, data):
        if self.silent:
            return b""
        out = []
        with self._lock:
            for line in data.splitlines(keepends=True):
                try:
                    frame = protocol.parse_command(line)
                    self.words.append(frame.word)
                except protocol.FrameError:
                    frame = None
                if frame is not None and self.override is not None:
                    answer = self.override(frame)
                    if answer is not None:
                        out.append(answer)
                        continue
                for reply in self.fw.feed(line):
                    parsed = protocol.parse_reply(reply)
                    if parsed.word == "ERR":
                        self.errors.append(parsed.args[0])
                    out.append(reply)
        return b"".join(out)


class FakeWire:
    """A serial_for_url stand-in: every open gives a new FakePort to the same peer."""

    def __init__(self, peer):
        self.peer = peer
        self.ports = []
        self.open_error = None
        self.opens = 0

    def __call__(self, url, timeout, exclusive=False):
        self.exclusive = exclusive
        self.opens += 1
        if self.open_error:
            raise serial.SerialException(self.open_error)
        port = FakePort(self.peer, timeout)
        self.ports.append(port)
        return port


@pytest.fixture
def links():
    """Makes FirmwareLinks and closes every one of them after the test."""
    made = []

    def make(url, lamp_count=2, **kwargs):
        kwargs.setdefault("watchdog_s", 1.0)
        kwargs.setdefault("heartbeat_s", 0.1)
        kwargs.setdefault("reply_timeout_s", 0.5)
        link = FirmwareLink(url, lamp_count, **kwargs)
        made.append(link)
        return link

    yield make
    for link in made:
        link.close()
        assert link._thread is None or not link._thread.is_alive()


@pytest.fixture
def sim():
    process = SimProcess("--lamps", "2", "--watchdog", "1.0")
    yield process
    process.stop()


def started(link, timeout=5.0):
    link.start()
    assert link.wait_up(timeout), link.reason
    return link


# -- against the simulator process ----------------------------------------


@pytest.mark.integration
def test_bridge_arm_off_status_against_simulator(sim, links):
    events = LinkEvents()
    link = started(links(sim.url, on_link_change=events))
    assert events.states == [True]
    assert link.info["lamps"] == 2 and link.info["watchdog_ms"] == 1000
    link.arm(0, 5000)
    assert sim.wait_event(lamp=0, why="armed")["on"] is True
    status = link.status()
    assert status[0]["on"] is True and 4000 < status[0]["remaining_ms"] <= 5000
    assert status[1] == {"on": False, "remaining_ms": 0}
    link.off(0)
    assert sim.wait_event(lamp=0)["why"] == "off"
    link.arm(1, 5000)
    link.off_all()
    assert sim.wait_event(lamp=1, on=False)["why"] == "off"
    time.sleep(1.5)  # heartbeats keep the firmware's 1 s watchdog quiet
    link.arm(0, 5000)
    assert not [e for e in sim.drain() if e["why"] == "watchdog"]
    assert link.up and events.states == [True]


@pytest.mark.integration
def test_bridge_firmware_refusal_raises_firmware_error(sim, links):
    link = started(links(sim.url))
    link.arm(0, protocol.MAX_ARM_MS)
    time.sleep(0.01)
    with pytest.raises(FirmwareError) as caught:
        link.arm(0, protocol.MAX_ARM_MS)
    assert type(caught.value) is FirmwareError
    assert str(caught.value) == (
        "Firmware refused ARM 0 %d: the lamp would stay on longer than the "
        "firmware's 3970 s ceiling." % protocol.MAX_ARM_MS
    )
    assert link.up


@pytest.mark.integration
def test_s6_bridge_reports_down_when_simulator_killed_and_reconnects(sim, links):
    events = LinkEvents()
    link = started(links(sim.url, on_link_change=events))
    link.arm(0, 5000)
    killed_at = time.monotonic()
    sim.stop(signal.SIGKILL)
    down_at, _, reason = events.wait(False, timeout=3)
    assert down_at - killed_at < 1.0
    assert not link.up
    with pytest.raises(FirmwareTimeout):
        link.arm(0, 5000)
    returned = SimProcess("--lamps", "2", "--watchdog", "1.0", listen="127.0.0.1:%d" % sim.port)
    try:
        events.wait(True, timeout=5, after=2)
        assert events.states == [True, False, True]
        link.arm(1, 5000)
        assert returned.wait_event(lamp=1, why="armed")["on"] is True
    finally:
        returned.stop()


@pytest.mark.integration
def test_bridge_refuses_firmware_with_fewer_lamps(sim, links):
    events = LinkEvents()
    link = links(sim.url, lamp_count=3, on_link_change=events)
    link.start()
    assert not link.wait_up(1.0)
    _, up, reason = events.wait(False)
    assert reason == "The firmware on %s drives 2 lamps but 3 are configured." % sim.url
    assert events.states == [False]  # retries are not re-reported


@pytest.mark.integration
def test_bridge_over_a_pty():
    process = SimProcess("--lamps", "2", "--watchdog", "1.0", listen="pty")
    link = FirmwareLink(process.address, 2, watchdog_s=1.0, heartbeat_s=0.1)
    try:
        started(link)
        link.arm(1, 5000)
        assert process.wait_event(lamp=1, why="armed")["on"] is True
        link.close()
        assert process.wait_event(lamp=1, on=False)["why"] == "off"
    finally:
        link.close()
        process.stop()


def test_s16_bridge_opens_the_board_exclusively():
    """A port another process (a second service, a terminal) holds is refused, and the link says why."""
    process = SimProcess("--lamps", "2", "--watchdog", "1.0", listen="pty")
    holder = serial.Serial(process.address, exclusive=True)
    link = FirmwareLink(process.address, 2, watchdog_s=1.0, heartbeat_s=0.1)
    try:
        link.start()
        assert not link.wait_up(1.0)
        assert "lock" in link.reason.lower(), link.reason
        holder.close()
        assert link.wait_up(10), link.reason  # the board free again: the link comes up
    finally:
        link.close()
        holder.close()
        process.stop()


# -- against fake peers ----------------------------------------------------


def test_bridge_err_reply_raises_firmware_error_with_one_sentence(links):
    peer = FirmwarePeer()
    peer.override = lambda f: protocol.encode_reply(f.seq, False, "relay-stuck") if f.word == "OFF" else None
    link = started(links("fake://", serial_for_url=FakeWire(peer)))
    with pytest.raises(FirmwareError) as caught:
        link.off(1)
    assert type(caught.value) is FirmwareError
    assert str(caught.value) == "Firmware refused OFF 1: the firmware rejected the frame (relay-stuck)."
    link.off_all()


def test_bridge_silent_peer_times_out_and_goes_down(links):
    peer = FirmwarePeer()
    events = LinkEvents()
    link = started(links("fake://", on_link_change=events, serial_for_url=FakeWire(peer)))
    peer.silent = True
    silent_at = time.monotonic()
    with pytest.raises(FirmwareTimeout) as caught:
        link.arm(0, 5000)
    assert "did not answer ARM 0 5000 within 0.5 s" in str(caught.value) or "went down" in str(caught.value)
    down_at, _, reason = events.wait(False, timeout=3)
    assert down_at - silent_at < link.silence_limit_s + 0.3
    assert "sent nothing" in reason
    with pytest.raises(FirmwareTimeout):
        link.status()
    peer.silent = False
    events.wait(True, timeout=5, after=2)


def test_bridge_ignores_replies_nobody_waits_for(links):
    peer = FirmwarePeer()

    def noisy(frame):
        if frame.word != "ARM":
            return None
        return (
            protocol.encode_reply(protocol.next_seq(frame.seq), False, "bogus")
            + protocol.encode_reply(9999, True)
            + b"garbage\n"
            + protocol.encode_reply(frame.seq, False, "x")[:-3]
            + b"00\n"
            + b"".join(peer.fw.feed(protocol.encode_command(frame.seq, "ARM", *frame.args)))
        )

    peer.override = noisy
    link = started(links("fake://", serial_for_url=FakeWire(peer)))
    link.arm(0, 5000)
    assert peer.fw.is_on(0)
    link.off(0)
    assert not peer.fw.is_on(0)


def test_bridge_commands_from_many_threads_keep_seq_order(links):
    peer = FirmwarePeer(lamps=8)
    link = started(links("fake://", lamp_count=8, serial_for_url=FakeWire(peer)))
    failures = []

    def worker(lamp):
        try:
            for _ in range(25):
                link.arm(lamp, 5000)
                assert link.status()[lamp]["on"]
                link.off(lamp)
        except (FirmwareError, AssertionError) as err:
            failures.append(err)

    workers = [threading.Thread(target=worker, args=(n,), name="worker-%d" % n) for n in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert failures == []
    assert peer.errors == [], "the firmware saw out-of-order or damaged frames"
    assert peer.words.count("ARM") == 200


def test_bridge_refused_heartbeat_reconnects_with_hello(links):
    peer = FirmwarePeer()
    events = LinkEvents()
    link = started(links("fake://", on_link_change=events, serial_for_url=FakeWire(peer)))
    link.arm(0, 5000)
    peer.fw.shutdown()  # the firmware cut everything and now waits for HELLO
    peer.fw._synced = False
    _, _, reason = events.wait(False, timeout=2)
    assert reason == "The firmware refused a heartbeat (need-hello), so it has cut its lamps."
    events.wait(True, timeout=3, after=2)
    assert peer.words.count("HELLO") == 2
    link.arm(0, 5000)


def test_bridge_cable_pulled_fails_pending_and_reconnects(links):
    peer = FirmwarePeer()
    wire = FakeWire(peer)
    events = LinkEvents()
    started(links("fake://", on_link_change=events, serial_for_url=wire))
    wire.ports[-1].pull_cable()
    _, _, reason = events.wait(False, timeout=2)
    assert reason == "Lost fake://: device disconnected."
    assert wire.ports[0].is_open is False
    events.wait(True, timeout=3, after=2)
    assert len(wire.ports) == 2


def test_bridge_open_failures_back_off_exponentially(links):
    wire = FakeWire(FirmwarePeer())
    wire.open_error = "could not open port /dev/ttyACM0: No such file or directory"
    events = LinkEvents()
    link = links("fake://", on_link_change=events, serial_for_url=wire)
    t0 = time.monotonic()
    link.start()
    end = t0 + 10
    while wire.opens < 4 and time.monotonic() < end:
        time.sleep(0.01)
    # Four opens wait 0.1 + 0.2 + 0.4 s of backoff between them (0.3 s if it did not double):
    # a lower bound, which a loaded machine can only lengthen.
    assert wire.opens >= 4 and time.monotonic() - t0 >= 0.7 - 0.01
    assert events.states == [False]
    assert events.calls[0][2] == "Cannot open fake://: could not open port /dev/ttyACM0: No such file or directory."
    wire.open_error = None
    assert link.wait_up(4)


def test_bridge_refuses_firmware_with_a_longer_watchdog(links):
    events = LinkEvents()
    link = links("fake://", on_link_change=events, serial_for_url=FakeWire(FirmwarePeer(watchdog_ms=5000)))
    link.start()
    _, _, reason = events.wait(False)
    assert reason == ("The firmware on fake:// cuts after 5 s of silence, longer than the configured watchdog of 1 s.")
    assert not link.up


def test_bridge_close_sends_offall_and_is_idempotent(links):
    peer = FirmwarePeer()
    wire = FakeWire(peer)
    events = LinkEvents()
    link = started(links("fake://", on_link_change=events, serial_for_url=wire))
    link.arm(0, 5000)
    link.arm(1, 5000)
    link.close()
    assert not peer.fw.is_on(0) and not peer.fw.is_on(1)
    assert peer.words[-1] == "OFFALL"
    assert not link.up
    assert not link._thread.is_alive()
    assert all(not port.is_open for port in wire.ports)
    link.close()
    assert events.states == [True]
    with pytest.raises(FirmwareTimeout):
        link.off_all()
    with pytest.raises(RuntimeError):
        link.start()


def test_bridge_loop_url_echo_never_comes_up(links):
    events = LinkEvents()
    link = links("loop://", on_link_change=events, reply_timeout_s=0.2)
    link.start()
    _, _, reason = events.wait(False)
    assert reason == "The firmware on loop:// did not answer HELLO within 0.2 s."


def test_bridge_not_started_raises_timeout(links):
    link = links("fake://", serial_for_url=FakeWire(FirmwarePeer()))
    with pytest.raises(FirmwareTimeout) as caught:
        link.arm(0, 1000)
    assert str(caught.value) == "Cannot send ARM 0 1000: the firmware link has not been started."


def test_bridge_validates_lamp_and_duration_before_sending(links):
    peer = FirmwarePeer()
    link = started(links("fake://", serial_for_url=FakeWire(peer)))
    with pytest.raises(FirmwareError, match="Lamp 2 does not exist"):
        link.arm(2, 1000)
    with pytest.raises(FirmwareError, match="accepts 1..3970000 ms"):
        link.arm(0, 0)
    with pytest.raises(FirmwareError, match="accepts 1..3970000 ms"):
        link.arm(0, protocol.MAX_ARM_MS + 1)
    with pytest.raises(TypeError):
        link.arm(0, 1.5)
    with pytest.raises(TypeError):
        link.off(True)
    assert "ARM" not in peer.words


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lamp_count": 0},
        {"lamp_count": 9},
        {"heartbeat_s": 0.5},
        {"heartbeat_s": 0},
        {"reply_timeout_s": 0},
    ],
)
def test_bridge_rejects_unsafe_settings(kwargs):
    settings = {"lamp_count": 2, "watchdog_s": 1.0, "heartbeat_s": 0.1}
    settings.update(kwargs)
    with pytest.raises(ValueError):
        FirmwareLink("fake://", settings.pop("lamp_count"), **settings)


def test_bridge_thread_is_named_daemon_and_callback_cannot_deadlock(links):
    peer = FirmwarePeer()
    seen = []

    def callback(up, reason):
        try:
            link.status()
        except RuntimeError as err:
            seen.append(str(err))

    link = links("fake://", on_link_change=callback, serial_for_url=FakeWire(peer))
    started(link)
    assert link._thread.daemon and link._thread.name == "firmware-link fake://"
    end = time.monotonic() + 2
    while not seen and time.monotonic() < end:
        time.sleep(0.01)
    assert seen == ["FirmwareLink commands cannot be called from on_link_change"]


def test_bridge_broken_callback_does_not_stop_the_link(links):
    called = threading.Event()

    def callback(up, reason):
        called.set()
        raise ValueError("callback bug")

    link = started(links("fake://", on_link_change=callback, serial_for_url=FakeWire(FirmwarePeer())))
    assert called.wait(5), "the link never called on_link_change"
    link.arm(0, 1000)
    assert link.up


class _WritePort:
    def __init__(self):
        self.frames = []

    def write(self, data):
        self.frames.append(data)


def test_s13_bridge_knows_when_host_silence_let_the_watchdog_cut():
    now = [100.0]
    link = FirmwareLink("loop://", 2, watchdog_s=1.0, heartbeat_s=0.2, clock=lambda: now[0])
    port = _WritePort()
    beat = lambda: link._send(port, "PING", (), want_reply=False)
    beat()
    now[0] = 100.5
    beat()
    assert link.silent_cut_at(99.0) is None and link.last_write == 100.5
    now[0] = 103.0  # the host was frozen 2.5 s: the firmware cut every lamp at 101.5
    beat()
    assert link.silent_cut_at(100.2) == 101.5
    assert link.silent_cut_at(103.0) is None  # that silence ended before the session began
    now[0] = 104.5  # silent again, and for longer than the watchdog by now
    assert link.silent_cut_at(103.0) == 104.0
    assert len(port.frames) == 3
