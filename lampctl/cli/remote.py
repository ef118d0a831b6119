"""The command line as a client of the running service's JSON API (status, start, stop, E-stop, ...)."""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from lampctl.cli.args import Failed, UsageError

TOKEN_FILE = "cli.token"  # written by `lampctl serve` beside the database, readable by its user only
TOKEN_RE = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII: it goes into an HTTP header
TIMEOUT_S = 10


class RemoteFailed(Failed):
    """The service could not be reached or refused: one sentence; status is the HTTP status of a refusal."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class BadToken(UsageError):
    """The token given on the command line or in $LAMPCTL_TOKEN cannot be a token: exit 2."""


def token_for(cfg, given: str | None) -> str:
    """--token, else $LAMPCTL_TOKEN, else the service's own cli.token file."""
    for source, token in (("--token", given), ("LAMPCTL_TOKEN", os.environ.get("LAMPCTL_TOKEN"))):
        if token:
            if not TOKEN_RE.fullmatch(token):
                raise BadToken(f"the token from {source} must be printable ASCII without spaces")
            return token
    token_file = Path(cfg.service.database).parent / TOKEN_FILE
    try:
        token = token_file.read_text().strip()
    except (OSError, UnicodeDecodeError):
        raise RemoteFailed(
            f"no API token: pass --token, set LAMPCTL_TOKEN, or run as the service's user (cannot read {token_file})"
        ) from None
    if not TOKEN_RE.fullmatch(token):
        raise RemoteFailed(f"{token_file} does not hold a token: restart the service to write a new one")
    return token


def service_url(cfg) -> str:
    """The running service's API: the address it wrote beside its database, else service.bind."""
    from lampctl.platform.runtime import ADDRESS_FILE, read_address

    host, port = read_address(cfg.service.database) or (cfg.service.host, cfg.service.port)
    if port == 0:
        raise RemoteFailed(
            f"the service is not running: no live {ADDRESS_FILE} beside {cfg.service.database} "
            f"says where it listens, and service.bind in {cfg.path} has port 0"
        )
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/api"


# Straight to the service: an http_proxy or https_proxy in the environment would otherwise
# receive the Stop and the admin's token, and a proxy's 502 is no Stop.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call_api(cfg, given_token: str | None, method: str, path: str, body: dict | None = None) -> dict:
    """One API request; the reply's JSON, or RemoteFailed with the service's own sentence."""
    token = token_for(cfg, given_token)
    url = service_url(cfg) + path
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    try:
        req = urllib.request.Request(
            url,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with _OPENER.open(req, timeout=TIMEOUT_S) as resp:
            return _json_reply(resp, url)
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                message = json.load(exc).get("error", exc.reason)
            except (ValueError, AttributeError, OSError):
                message = exc.reason
        raise RemoteFailed(f"refused ({exc.code}): {message}", exc.code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RemoteFailed(f"cannot reach the service at {url}: {reason} (is 'lampctl serve' running?)") from None


def _json_reply(resp, url: str) -> dict:
    try:
        reply = json.load(resp)
    except ValueError:
        raise RemoteFailed(f"the service at {url} sent a reply that is not JSON") from None
    if not isinstance(reply, dict):
        raise RemoteFailed(f"the service at {url} sent an unexpected reply")
    return reply


def print_lamps(lamps: list[dict]) -> None:
    for lamp in lamps:
        extra = ""
        if lamp.get("state") == "on":
            m, s = divmod(round(lamp.get("remaining_s") or 0), 60)
            extra = f"{m}:{s:02d} left, session {lamp.get('session_id')} by {lamp.get('user')}"
        elif lamp.get("state") == "cooldown":
            extra = f"{lamp.get('cooldown_remaining_s') or 0:.0f} s of cooldown left"
        elif lamp.get("state") == "fault":
            extra = lamp.get("fault_reason") or ""
        relay = "relay ON " if lamp.get("relay_on") else "relay off"
        print(f"{lamp.get('id', '?'):<12} {lamp.get('state', '?'):<9} {relay}  {extra}".rstrip())


STOP_SENTENCES = {
    "ended": "{id}: stopped, its session ended",
    "cancelled-start": "{id}: a start was cancelled, the lamp stays off",
    "already-off": "{id}: was already off",
}


def stop_sentences(reply: dict) -> list[str]:
    """One line per lamp saying what a Stop did ("result" of stop, "results" of stop-all and estop)."""
    if isinstance(reply.get("result"), str) and isinstance(reply.get("lamp"), dict):
        results = {reply["lamp"].get("id", "?"): reply["result"]}
    elif isinstance(reply.get("results"), dict):
        results = reply["results"]
    else:
        return []
    return [
        STOP_SENTENCES.get(result, "{id}: " + str(result)[:40]).format(id=str(lamp_id)[:40])
        for lamp_id, result in results.items()
    ]
