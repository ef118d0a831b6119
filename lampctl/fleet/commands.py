"""Commands that arrive over MQTT: requests the local controller checks like any other, answered on `.../result`."""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from lampctl.core.clock import MonotonicClock
from lampctl.core.errors import Refused, duration_from, shown
from lampctl.core.lamp import estop_reason
from lampctl.fleet import discovery

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 4096
# Starts waiting for the controller; past this a flood of commands is refused, not queued for ever.
MAX_WAITING_STARTS = 32
# Who a stop is recorded under when the message names no account of this node.
UNKNOWN_SENDER = "mqtt"
# S19: a start that waited this long here (behind other starts) is no longer live: refused, never applied late.
START_MAX_WAIT_S = 5.0
# S19: a start whose optional "sent_at" is older than this by the node's wall clock is stale. The wall
# clock only ever refuses: a recent-looking or future "sent_at" makes nothing acceptable that was not.
SENT_AT_MAX_AGE_S = 30.0
# S19: the ids of accepted starts remembered (how many, how long) so a start delivered twice runs once.
START_IDS_KEPT = 1024
START_IDS_KEPT_S = 600.0


class BadCommand(Refused):
    code = "bad-command"


class NotLive(Refused):
    """S19: a command that is not a live request (retained, replayed, stale, duplicate, held too long)."""


class Commands:
    """Parses and runs commands for one node.

    Stops (stop, stop-all, E-stop) are always obeyed and never wait: they run on the
    network thread and reach the relay before any lock. A start needs `commands = true`
    and a user that exists here, can only be a timed session, and goes through
    controller.start (limits, continuation, cooldown, faults, the firmware), on its own
    thread so a slow firmware reply holds up neither the network nor a Stop.
    """

    def __init__(
        self,
        node: str,
        enabled: bool,
        controller,
        accounts,
        reply: Callable[[str, dict], None],
        builtin_users: tuple[str, ...] = (),
        *,
        clear: Callable[[str], None] | None = None,
        usage_log=None,
        clock=None,
    ):
        self.prefix = f"{discovery.base(node)}/"
        self.enabled = enabled
        self.controller = controller
        self.accounts = accounts
        self.reply = reply
        self.builtin = builtin_users
        self.clear = clear or (lambda topic: None)  # empty retained publish on a cmd topic
        self.usage_log = usage_log
        self.clock = clock or MonotonicClock()
        self._starts: queue.Queue = queue.Queue(MAX_WAITING_STARTS)
        self._start_ids: OrderedDict = OrderedDict()  # (lamp, id) -> monotonic time accepted
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_starts, name="mqtt-starts", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True  # S19: from here no start is taken or run, even one already waiting
        if self._thread is not None:
            try:
                self._starts.put(None, timeout=timeout)
            except queue.Full:  # a start stuck in the controller: the thread is a daemon, leave it
                log.error("MQTT start thread did not take its stop request")
            self._thread.join(timeout)
            self._thread = None

    def handle(self, topic: str, payload: bytes, *, retained: bool = False, dup: bool = False) -> None:
        """One MQTT message on `lampctl/<node>/cmd` or `lampctl/<node>/lamp/<id>/cmd`.

        `retained` and `dup` are the flags the message was delivered with: a retained copy is one
        the broker stored and replays on every (re)subscribe, `dup` a redelivery (S19).
        """
        if not payload:
            return  # an empty message clears a retained one (the node's own clears come back here): no command
        arrived = self.controller.now()  # S19: a command's time is when it was received
        lamp_id = self._lamp_of(topic)
        result_topic = topic.rsplit("/", 1)[0] + "/result"
        body: dict = {}
        try:
            if retained:
                body = self._parse_quietly(payload)
                self.clear(topic)  # a retained command is never obeyed, and not left to replay again
                raise NotLive(
                    "The command was a retained message, which the broker replays on every reconnect; "
                    "it was not obeyed and has been cleared: publish commands without the retained flag.",
                    "retained",
                )
            # A live message the sender published retained reaches a subscriber with the flag cleared
            # (MQTT 3.1.1 section 3.3.1.3): clear the broker's copy now, so it never replays.
            self.clear(topic)
            body = self._parse(payload)
            answer = self._dispatch(lamp_id, body, result_topic, arrived, dup)
        except Refused as exc:
            answer = {"ok": False, "error": str(exc), "code": exc.code}
            self._refused(topic, lamp_id, body, exc)
        except Exception as exc:  # never let one message stop the client; the lamps are not affected
            log.exception("MQTT command on %s failed", topic)
            answer = {"ok": False, "error": f"The command failed: {type(exc).__name__}.", "code": "internal"}
        if answer is not None:
            self.reply(result_topic, _with_request(answer, body))

    def _refused(self, topic: str, lamp_id: str | None, body: dict, exc: Refused) -> None:
        """One log line per refused command; one audit event when it was refused for not being live (S19)."""
        action = body.get("action") if isinstance(body.get("action"), str) else None
        log.warning("MQTT command on %s refused (%s): %s", topic[:120], exc.code, exc)
        if isinstance(exc, NotLive) and self.usage_log is not None:
            known = lamp_id if lamp_id in self.controller.lamp_ids() else None
            self.usage_log.event(
                known,
                None,
                None,
                self._who(body),
                f"MQTT {shown(action) if action else 'command'} refused ({exc.code}): {exc}",
            )

    def _lamp_of(self, topic: str) -> str | None:
        rest = topic[len(self.prefix) :] if topic.startswith(self.prefix) else ""
        parts = rest.split("/")
        return parts[1] if len(parts) == 3 and parts[0] == "lamp" else None

    @staticmethod
    def _parse(payload: bytes) -> dict:
        if len(payload) > MAX_COMMAND_BYTES:
            raise BadCommand(f"A command must be at most {MAX_COMMAND_BYTES} bytes of JSON.")
        try:
            body = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nesting past the parser's stack
            raise BadCommand(
                'A command must be a JSON object such as {"action": "start", "minutes": 10, "user": "anna"}.'
            ) from None
        if not isinstance(body, dict):
            raise BadCommand('A command must be a JSON object with an "action".')
        return body

    @classmethod
    def _parse_quietly(cls, payload: bytes) -> dict:
        """The body, for the sender's id and name only; a refusal that is already decided needs no other."""
        try:
            return cls._parse(payload)
        except Refused:
            return {}

    def _dispatch(
        self, lamp_id: str | None, body: dict, result_topic: str, arrived: float, dup: bool = False
    ) -> dict | None:
        action = body.get("action")
        if lamp_id is not None and action == "stop":
            view = self.controller.stop(lamp_id, self._who(body), arrived=arrived)
            return {"ok": True, "action": "stop", "result": view.result, "lamp": view.as_dict()}
        if lamp_id is None and action == "stop-all":
            who = self._who(body)
            views = self.controller.stop_all(who, f"stop all by {who} over MQTT", arrived=arrived)
            return {
                "ok": True,
                "action": "stop-all",
                "results": {v.id: v.result for v in views},
                "lamps": [v.as_dict() for v in views],
            }
        if lamp_id is None and action == "estop":
            who = self._who(body)
            views = self.controller.estop(who, estop_reason(who, "over MQTT"), arrived=arrived)
            return {
                "ok": True,
                "action": "estop",
                "results": {v.id: v.result for v in views},
                "lamps": [v.as_dict() for v in views],
            }
        if lamp_id is not None and action == "start":
            seconds, user, new_patient = self._check_start(body)
            self._check_live_start(lamp_id, body, dup)
            try:
                self._starts.put_nowait(
                    (lamp_id, seconds, user, new_patient, body, result_topic, arrived, self.clock.monotonic())
                )
            except queue.Full:
                raise Refused(
                    f"{MAX_WAITING_STARTS} starts are already waiting on this node; try again.", "busy"
                ) from None
            if (key := _start_key(lamp_id, body)) is not None:
                self._start_ids[key] = self.clock.monotonic()
            return None
        where = "a lamp's cmd topic takes start or stop" if lamp_id else "the node's cmd topic takes stop-all or estop"
        raise BadCommand(f"Unknown action {shown(action)}: {where}.")

    def _who(self, body: dict) -> str:
        user = body.get("user")
        if isinstance(user, str) and user not in self.builtin and self.accounts.user(user) is not None:
            return user
        return UNKNOWN_SENDER

    def _check_start(self, body: dict) -> tuple[float, str, bool]:
        if not self.enabled:
            raise Refused("Starts over MQTT are turned off on this node (mqtt.commands = false).", "commands-off")
        user = body.get("user")
        if not isinstance(user, str) or user in self.builtin or self.accounts.user(user) is None:
            shown_user = shown(user) if user is not None else "no user"
            raise Refused(f"A start must name a user of this node; {shown_user} is not one.", "unknown-user")
        seconds = duration_from(body)  # the API's rule: a command cannot switch a lamp on without a timer
        new_patient = body.get("new_patient", False)
        if not isinstance(new_patient, bool):
            raise BadCommand('"new_patient" must be true or false.')
        return seconds, user, new_patient

    def _check_live_start(self, lamp_id: str, body: dict, dup: bool) -> None:
        """S19: a start runs only as a live request, once; each refusal says why."""
        if self._closing:
            raise Refused("The service is shutting down; the start was not taken.", "shutting-down")
        if lamp_id not in self.controller.lamp_ids():
            self.controller.lamp(lamp_id)  # raises UnknownLamp with the known lamps named
        if dup:
            raise NotLive(
                "The start was a redelivery (MQTT dup flag) of a command that may have run already; "
                "it was not obeyed: send a new command.",
                "replayed",
            )
        age = _age_s(body.get("sent_at"), self.clock.wall())
        if age is not None and age > SENT_AT_MAX_AGE_S:
            raise NotLive(
                f"The start was sent {age:.0f} s ago by this node's clock (more than "
                f"{SENT_AT_MAX_AGE_S:.0f} s): too late to be a live request, so it was not obeyed.",
                "stale",
            )
        key = _start_key(lamp_id, body)
        if key is not None:
            now = self.clock.monotonic()
            while self._start_ids and (
                len(self._start_ids) >= START_IDS_KEPT or now - next(iter(self._start_ids.values())) > START_IDS_KEPT_S
            ):
                self._start_ids.popitem(last=False)
            if key in self._start_ids:
                raise NotLive(
                    f"A start with id {shown(key[2])} was already taken; it runs once: send a new id for a new start.",
                    "duplicate",
                )

    def _run_starts(self) -> None:
        while True:
            item = self._starts.get()
            if item is None:
                return
            lamp_id, seconds, user, new_patient, body, result_topic, arrived, taken_at = item
            try:
                self._check_not_held(taken_at)
                session_id, view = self.controller.start(
                    lamp_id, seconds, user, new_patient=new_patient, arrived=arrived
                )
                answer = {"ok": True, "action": "start", "session_id": session_id, "lamp": view.as_dict()}
            except Refused as exc:
                answer = {"ok": False, "error": str(exc), "code": exc.code}
                self._refused(result_topic, lamp_id, body, exc)
            except Exception as exc:
                log.exception("MQTT start of %s failed", lamp_id)
                answer = {"ok": False, "error": f"The start failed: {type(exc).__name__}.", "code": "internal"}
            self.reply(result_topic, _with_request(answer, body))

    def _check_not_held(self, taken_at: float) -> None:
        """S19: a start is applied at once or not at all, never held and applied later."""
        if self._closing:
            raise Refused("The service is shutting down; the start was not carried out.", "shutting-down")
        waited = self.clock.monotonic() - taken_at
        if waited > START_MAX_WAIT_S:
            raise NotLive(
                f"The start waited {waited:.1f} s on this node behind other starts (more than "
                f"{START_MAX_WAIT_S:.0f} s), so it was not carried out: send it again.",
                "stale",
            )


def _age_s(sent_at, now: datetime) -> float | None:
    """Seconds since an optional "sent_at" (Unix seconds or ISO-8601 with a zone), or None when absent."""
    if sent_at is None:
        return None
    if (
        isinstance(sent_at, float)
        and math.isfinite(sent_at)
        or isinstance(sent_at, int)
        and not isinstance(sent_at, bool)
        and abs(sent_at) < 10**12
    ):
        return now.timestamp() - float(sent_at)
    if isinstance(sent_at, str) and len(sent_at) <= 40:
        try:
            when = datetime.fromisoformat(sent_at)
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None:
            return (now - when).total_seconds()
    raise BadCommand(
        '"sent_at" must be Unix seconds or an ISO-8601 time with a zone, e.g. "2026-01-05T09:00:00+00:00".'
    )


def _start_key(lamp_id: str, body: dict) -> tuple | None:
    """What makes a start the same start: its lamp and the sender's id (when it sends one)."""
    request_id = body.get("id")
    if isinstance(request_id, (str, int)) and not isinstance(request_id, bool):
        return lamp_id, type(request_id).__name__, request_id
    return None


def _with_request(answer: dict, body: dict) -> dict:
    """Echo the sender's request id, so it can match the answer to its command."""
    request_id = body.get("id")
    if isinstance(request_id, (str, int)) and not isinstance(request_id, bool):
        answer["id"] = request_id
    return answer
