"""A real mosquitto on a free loopback port and an MQTT listener, for the fleet's tests and benchmark."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from lampctl.testing import free_port, wait_until


def mosquitto_path() -> str | None:
    """Debian installs the broker in /usr/sbin, which a normal user's PATH may not hold."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


class Broker:
    """mosquitto with a temp config: loopback only, anonymous, TCP_NODELAY; restartable on the same port."""

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.conf = self.workdir / f"mosquitto-{self.port}.conf"
        # persistent: sessions (the collector's subscription and its queue) survive a restart,
        # as docs/fleet.md asks of a clinic's broker.
        keep = "persistence false\n"
        if persistent:
            data = self.workdir / f"mosquitto-{self.port}.d"
            data.mkdir(exist_ok=True)
            keep = f"persistence true\npersistence_location {data}/\n"
            if os.geteuid() == 0:
                # Started as root, mosquitto would drop to its own user, who cannot enter a test's
                # private tmp dir to save the sessions.
                keep += "user root\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            f"{keep}max_queued_messages 0\nmax_inflight_messages 0\n"
            "log_type error\nlog_type warning\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> Broker:
        exe = mosquitto_path()
        assert exe, "mosquitto is not installed (./test.sh installs Debian's mosquitto)"
        with open(self.workdir / f"mosquitto-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)

        def accepts():
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(accepts, timeout, "mosquitto listening", step=0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a word."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistent sessions and leaves."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Listener:
    """A paho client that records every message on its subscriptions (retained ones included)."""

    def __init__(self, port: int, topics: list[str], client_id: str = ""):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self.retained: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._mqtt = mqtt
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        subscribed = threading.Event()
        if topics:
            self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
            self.client.on_subscribe = lambda *_: subscribed.set()
        else:
            subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "the broker did not confirm the subscription"

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            self.messages.append((message.topic, message.payload, message.retain))
            self.retained[message.topic] = message.payload
            self._cond.notify_all()

    def wait(self, predicate, timeout: float, what: str):
        """predicate(listener) until true, woken by each message."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{what} not seen within {timeout} s; last topics: {[m[0] for m in self.messages[-5:]]}"
                    )
                self._cond.wait(min(left, 0.2))

    def latest_json(self, topic: str) -> dict | None:
        with self._cond:
            payload = self.retained.get(topic)
        return json.loads(payload) if payload else None

    def publish(self, topic: str, payload, qos: int = 1) -> None:
        text = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        self.client.publish(topic, text, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
