"""The one table from the controller's refusal codes to HTTP statuses, and how long a reply waits for its record."""

from __future__ import annotations

# A reply to start, extend, stop, stop-all, estop or reset waits this long for its record
# to commit, after the relay has switched; "recorded" in the reply says whether it did.
REPLY_WAIT_S = 2.0

STATUS_BY_CODE = {
    "unknown-lamp": 404,
    "bad-duration": 400,
    "too-long": 400,
    "bad-form": 400,
    "firmware-unavailable": 503,
    "shutting-down": 503,
}
# Every other refusal is the lamp's state forbidding the action: already on, cooldown,
# fault, not running, over the limit, cancelled by a Stop, busy, firmware refused.
DEFAULT_STATUS = 409


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, DEFAULT_STATUS)
