"""The optional [mqtt] table (fleet): broker URL, node name, credentials, discovery prefix, commands."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lampctl.config.record import Record

# ssl (and OpenSSL's library, 5-10 ms) loads where a TLS file is checked: `serve` reaches the relays first (S1).
if TYPE_CHECKING:
    import ssl

# Each key's type, default and pattern is its "mqtt." row in lampctl.config.SETTINGS, applied by the
# reader handed in. A node name is one MQTT topic level and part of Home Assistant's unique ids and
# discovery topics, whose node_id and object_id allow only A-Z, a-z, 0-9, '_' and '-' (its row's pattern).


class MqttConfig(Record):
    host: str
    port: int
    tls: bool
    node: str
    username: str | None = None
    password_file: Path | None = None
    discovery_prefix: str = "homeassistant"
    commands: bool = False
    ca_file: Path | None = None  # None: the system's CA store (mqtts:// only)
    cert_file: Path | None = None  # a client certificate, with its key_file
    key_file: Path | None = None

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
    ca_file, cert_file, key_file = (
        _tls_file(r, table, key, m.get(key), base, tls) for key in ("ca_file", "cert_file", "key_file")
    )
    _check_tls(r, table, ca_file, cert_file, key_file)
    return MqttConfig(
        host=host,
        port=port,
        tls=tls,
        node=node,
        username=username,
        password_file=password_file,
        discovery_prefix=prefix,
        commands=m.get("commands"),
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
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
    return _readable_file(r, f"{table}.password_file", value, base)


def _tls_file(r, table: str, key: str, value: str | None, base: Path, tls: bool) -> Path | None:
    if value is not None and not tls:
        raise r.fail(f"{table}.{key}", "needs a TLS broker: an mqtts:// url")
    return _readable_file(r, f"{table}.{key}", value, base)


def _readable_file(r, key: str, value: str | None, base: Path) -> Path | None:
    """A file the key names, relative to the config file, that can be opened now: else one line naming the key."""
    if value is None:
        return None
    path = Path(value)
    if not path.is_absolute():
        path = (base / path).resolve()
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise r.fail(key, f"cannot read {path}: {exc.strerror}") from None
    return path


def _check_tls(r, table: str, ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> None:
    """The files load as the client loads them (tls_context), so a wrong one is a config error, not a link that never comes up."""
    if (cert_file is None) != (key_file is None):
        raise r.fail(
            f"{table}.{'key_file' if cert_file else 'cert_file'}",
            "missing: a client certificate needs both mqtt.cert_file and mqtt.key_file",
        )
    import ssl

    try:
        _verifying(ca_file)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise r.fail(f"{table}.ca_file", f"{ca_file} holds no PEM certificate ({exc.__class__.__name__})") from None
    if cert_file is not None and key_file is not None:
        try:
            _with_certificate(ssl.create_default_context(), cert_file, key_file)
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise r.fail(
                f"{table}.cert_file",
                f"{cert_file} and {key_file} are not a PEM certificate and its "
                f"unencrypted key ({exc.__class__.__name__})",
            ) from None


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The client's TLS: the broker's certificate checked against mqtt.ca_file (else the system's CA store),
    and its name against the URL's host; this client's certificate when one is set."""
    context = _verifying(cfg.ca_file)
    if cfg.cert_file is not None and cfg.key_file is not None:
        _with_certificate(context, cfg.cert_file, cfg.key_file)
    return context


def _verifying(ca_file: Path | None) -> ssl.SSLContext:
    import ssl

    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def _with_certificate(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context.load_cert_chain(str(cert_file), str(key_file), password=lambda: b"")  # an encrypted key: never a prompt
    return context
