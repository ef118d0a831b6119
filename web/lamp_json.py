"""A lamp view's JSON, built in one place and kept per lamp until the view it was built from changes.

The key is the view itself (LampView is a frozen dataclass: equality compares every field),
so whatever makes a lamp look different, a relay read back, a second less to run, a sensor
reading, a field added later, makes new bytes; nothing has to remember to invalidate.
The views are still read from the controller on every request, relays read back (S6).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from lampctl.core.lamp import LampView

# lamp id -> (the view, its JSON). One entry per lamp: a running lamp replaces its own at each
# new remaining_s. A tuple is stored and read whole, so threads never see a view with another's bytes.
_cache: dict[str, tuple[LampView, bytes]] = {}


def encode(value) -> bytes:
    """JSON as the app's jsonify writes it (Flask's default provider: compact, sorted keys, ASCII)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode("ascii")


def lamp_bytes(view: LampView) -> bytes:
    """encode(view.as_dict()), reused while the lamp's view is equal to the one it was built from."""
    hit = _cache.get(view.id)
    if hit is not None and (hit[0] is view or hit[0] == view):
        return hit[1]
    body = encode(view.as_dict())
    _cache[view.id] = (view, body)
    return body


# The last {"lamps": [...]} body and the views it was built from (compared as a tuple: the same
# view objects again, as the controller hands back while nothing changed, match at once).
_last_all: tuple[tuple[LampView, ...], bytes] = ((), b"")


def lamps_bytes(views: Iterable[LampView]) -> bytes:
    """{"lamps": [each view's JSON]}, as jsonify(lamps=[v.as_dict() for v in views]) writes it."""
    global _last_all
    key = tuple(views)
    last = _last_all
    if last[0] == key and key:
        return last[1]
    body = b'{"lamps":[' + b",".join([lamp_bytes(v) for v in key]) + b"]}\n"
    _last_all = (key, body)
    return body
