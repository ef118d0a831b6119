"""The optional [mqtt] table (fleet): broker URL, node name, credentials, discovery prefix, commands."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# Each key's type, default and pattern is its "mqtt." row in lampctl.config.SETTINGS, applied by the
# reader handed in. A node name is one MQTT topic level and part of Home Assistant's unique ids and
# discovery topics, whose node_id and object_id allow only A-Z, a-z, 0-9, '_' and '-' (its row's pattern).


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    tls: bool
    node: str
    username: str | None = None
    password_file: Path | None = None
    discovery_prefix: str = "homeassistant"
    commands: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def password(self) -> str | None:
        """The password file's first line (read when connecting, so it never sits in the config object)."""
        if self.password_file is None:
            return None
        lines = self.password_file.read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else ""


def default_node() -> str:
    """The hostname, cut to what a topic level and a Home Assistant id accept."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64]
    return name or "lampctl"


def parse_mqtt(r, raw, base: Path, *, table: str = "mqtt") -> MqttConfig:
    """r is a config.reader(path); raises its ConfigError (one line naming the file and the key)."""
    m = r.section(raw, table, "mqtt")
    host, port, tls = _parse_url(r, f"{table}.url", m.get("url"), m.rows["url"].range)
    node = m.get("node", default_node())
    prefix = m.get("discovery_prefix")
    username = m.get("username")
    password_file = _password_file(r, table, m.get("password_file"), base)
    if password_file is not None and username is None:
        raise r.fail(f"{table}.password_file", "needs mqtt.username (a broker password goes with a user name)")
    return MqttConfig(
        host=host,
        port=port,
        tls=tls,
        node=node,
        username=username,
        password_file=password_file,
        discovery_prefix=prefix,
        commands=m.get("commands"),
    )


def _parse_url(r, key: str, url: str, ports) -> tuple[str, int, bool]:
    shown = url[:80]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise r.fail(key, f"{shown!r} is not a broker URL such as mqtt://broker.local:1883") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise r.fail(key, f"{shown!r} must start with mqtt:// or mqtts:// (TLS)")
    if (
        not parts.hostname
        or not parts.hostname.isprintable()
        or parts.path not in ("", "/")
        or parts.query
        or parts.username
        or parts.password
    ):
        raise r.fail(key, f"{shown!r} must be mqtt[s]://host[:port] (credentials go in username and password_file)")
    tls = parts.scheme == "mqtts"
    if port is not None and not ports.holds(port):
        raise r.fail(key, f"{shown!r}: port must be {ports.words()}")
    return parts.hostname, port or (8883 if tls else 1883), tls


def _password_file(r, table: str, value: str | None, base: Path) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_absolute():
        path = (base / path).resolve()
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise r.fail(f"{table}.password_file", f"cannot read {path}: {exc.strerror}") from None
    return path
