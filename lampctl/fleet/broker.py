"""Connecting to the broker: TLS for mqtts:// (a CA file, a client certificate), and one log line saying why a connect fails."""

from __future__ import annotations

import logging
import ssl
import sys

from lampctl.config.mqtt import tls_context

log = logging.getLogger(__name__)


class ConnectFailures:
    """paho's on_connect_fail: the reason logged once, and again only when it changes or after a connect.

    paho retries a failed connect every second or two and says why only at debug level, so
    without this a wrong CA or a broker that is down was silence; logging every retry would
    be a flood.
    """

    def __init__(self, cfg, who: str, meanwhile: str):
        self.cfg, self.who, self.meanwhile = cfg, who, meanwhile
        self.last: str | None = None

    def failed(self, client, userdata) -> None:
        line = describe(sys.exc_info()[1], self.cfg)  # paho calls this inside its `except OSError` around the connect
        if line != self.last:
            self.last = line
            log.error("%s cannot connect to %s: %s; %s", self.who, self.cfg.url, line, self.meanwhile)

    def connected(self) -> None:
        self.last = None


def configure(client, cfg, who: str, meanwhile: str) -> ConnectFailures:
    """cfg's TLS on a paho client (the system's CA store without mqtt.ca_file), and its connect failures logged."""
    if cfg.tls:
        client.tls_set_context(tls_context(cfg))
    failures = ConnectFailures(cfg, who, meanwhile)
    client.on_connect_fail = failures.failed
    return failures


def describe(exc: BaseException | None, cfg) -> str:
    """Why a connect failed, in one clause."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        where = f"mqtt.ca_file ({cfg.ca_file})" if cfg.ca_file else "the system's CA store (or set mqtt.ca_file)"
        return f"the broker's TLS certificate is not trusted ({exc.verify_message}): check {where}"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc or "unknown reason")
