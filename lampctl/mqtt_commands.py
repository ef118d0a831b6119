"""Commands that arrive over MQTT: requests the local controller checks like any other, answered on `.../result`."""
from __future__ import annotations

import json
import logging
import math
import queue
import threading
from collections.abc import Callable

from lampctl.errors import Refused

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 4096
# Starts waiting for the controller; past this a flood of commands is refused, not queued for ever.
MAX_WAITING_STARTS = 32
# Who a stop is recorded under when the message names no account of this node.
UNKNOWN_SENDER = "mqtt"


class BadCommand(Refused):
    code = "bad-command"


class Commands:
    """Parses and runs commands for one node.

    Stops (stop, stop-all, E-stop) are always obeyed and never wait: they run on the
    network thread and reach the relay before any lock. A start needs `commands = true`
    and a user that exists here, can only be a timed session, and goes through
    controller.start (limits, continuation, cooldown, faults, the firmware), on its own
    thread so a slow firmware reply holds up neither the network nor a Stop.
    """

    def __init__(self, node: str, enabled: bool, controller, accounts, reply: Callable[[str, dict], None],
                 builtin_users: tuple[str, ...] = ()):
        self.prefix = f"lampctl/{node}/"
        self.enabled = enabled
        self.controller = controller
        self.accounts = accounts
        self.reply = reply
        self.builtin = builtin_users
        self._starts: queue.Queue = queue.Queue(MAX_WAITING_STARTS)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_starts, name="mqtt-starts", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            try:
                self._starts.put(None, timeout=timeout)
            except queue.Full:  # a start stuck in the controller: the thread is a daemon, leave it
                log.error("MQTT start thread did not take its stop request")
            self._thread.join(timeout)
            self._thread = None

    def handle(self, topic: str, payload: bytes) -> None:
        """One MQTT message on `lampctl/<node>/cmd` or `lampctl/<node>/lamp/<id>/cmd`."""
        arrived = self.controller.now()  # S19: a command's time is when it was received
        lamp_id = self._lamp_of(topic)
        result_topic = topic.rsplit("/", 1)[0] + "/result"
        body: dict = {}
        try:
            body = self._parse(payload)
            answer = self._dispatch(lamp_id, body, result_topic, arrived)
        except Refused as exc:
            answer = {"ok": False, "error": str(exc), "code": exc.code}
        except Exception as exc:  # never let one message stop the client; the lamps are not affected
            log.exception("MQTT command on %s failed", topic)
            answer = {"ok": False, "error": f"The command failed: {type(exc).__name__}.", "code": "internal"}
        if answer is not None:
            self.reply(result_topic, _with_request(answer, body))

    def _lamp_of(self, topic: str) -> str | None:
        rest = topic[len(self.prefix):] if topic.startswith(self.prefix) else ""
        parts = rest.split("/")
        return parts[1] if len(parts) == 3 and parts[0] == "lamp" else None

    @staticmethod
    def _parse(payload: bytes) -> dict:
        if len(payload) > MAX_COMMAND_BYTES:
            raise BadCommand(f"A command must be at most {MAX_COMMAND_BYTES} bytes of JSON.")
        try:
            body = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BadCommand("A command must be a JSON object such as "
                             '{"action": "start", "minutes": 10, "user": "anna"}.') from None
        if not isinstance(body, dict):
            raise BadCommand("A command must be a JSON object with an \"action\".")
        return body

    def _dispatch(self, lamp_id: str | None, body: dict, result_topic: str, arrived: float) -> dict | None:
        action = body.get("action")
        if lamp_id is not None and action == "stop":
            view = self.controller.stop(lamp_id, self._who(body), arrived=arrived)
            return {"ok": True, "action": "stop", "result": view.result, "lamp": view.as_dict()}
        if lamp_id is None and action == "stop-all":
            who = self._who(body)
            views = self.controller.stop_all(who, f"stop all by {who} over MQTT", arrived=arrived)
            return {"ok": True, "action": "stop-all", "results": {v.id: v.result for v in views},
                    "lamps": [v.as_dict() for v in views]}
        if lamp_id is None and action == "estop":
            who = self._who(body)
            views = self.controller.estop(who, f"emergency stop by {who} over MQTT", arrived=arrived)
            return {"ok": True, "action": "estop", "results": {v.id: v.result for v in views},
                    "lamps": [v.as_dict() for v in views]}
        if lamp_id is not None and action == "start":
            seconds, user, new_patient = self._check_start(body)
            try:
                self._starts.put_nowait((lamp_id, seconds, user, new_patient, body, result_topic, arrived))
            except queue.Full:
                raise Refused(f"{MAX_WAITING_STARTS} starts are already waiting on this node; try again.",
                              "busy") from None
            return None
        where = "a lamp's cmd topic takes start or stop" if lamp_id else "the node's cmd topic takes stop-all or estop"
        raise BadCommand(f"Unknown action {str(action)[:40]!r}: {where}.")

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
            shown = str(user)[:40] if user is not None else "no user"
            raise Refused(f"A start must name a user of this node; {shown!r} is not one.", "unknown-user")
        minutes = body.get("minutes")
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not math.isfinite(minutes) \
                or minutes <= 0:
            raise BadCommand("A start needs \"minutes\": a number greater than 0 (a command cannot switch a lamp "
                             "on without a timer).", "bad-duration")
        new_patient = body.get("new_patient", False)
        if not isinstance(new_patient, bool):
            raise BadCommand("\"new_patient\" must be true or false.")
        return minutes * 60.0, user, new_patient

    def _run_starts(self) -> None:
        while True:
            item = self._starts.get()
            if item is None:
                return
            lamp_id, seconds, user, new_patient, body, result_topic, arrived = item
            try:
                session_id, view = self.controller.start(lamp_id, seconds, user, new_patient=new_patient,
                                                         arrived=arrived)
                answer = {"ok": True, "action": "start", "session_id": session_id, "lamp": view.as_dict()}
            except Refused as exc:
                answer = {"ok": False, "error": str(exc), "code": exc.code}
            except Exception as exc:
                log.exception("MQTT start of %s failed", lamp_id)
                answer = {"ok": False, "error": f"The start failed: {type(exc).__name__}.", "code": "internal"}
            self.reply(result_topic, _with_request(answer, body))


def _with_request(answer: dict, body: dict) -> dict:
    """Echo the sender's request id, so it can match the answer to its command."""
    request_id = body.get("id")
    if isinstance(request_id, (str, int)) and not isinstance(request_id, bool):
        answer["id"] = request_id
    return answer
