"""One lamp as the controller keeps it: its state, its running session, its patient budget, and the view it shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lampctl.config import LampConfig
from lampctl.core.errors import Refused, fmt_min, fmt_s
from lampctl.core.safety import s3_allows, s3_left_s

# A feedback input may lag its relay by a contact's bounce and a lamp's inrush;
# a mismatch that outlasts this is a stuck relay or a dead lamp (S6).
FEEDBACK_SETTLE_S = 0.5
# What the panel's "+5 min" adds; a lamp's view says whether it still fits (S3).
EXTEND_STEP_S = 300


# Who the record names for a press of the patient's stop button (S24), and the event a blown bulb leaves.
PATIENT = "patient"
BULB_BLOWN = "bulb looks blown"


@dataclass(frozen=True)
class Sensed:
    """S23: a lamp's latest analog readings from the firmware, in the host's units (None: no such sensor,
    or it reads open or shorted); `guard` is "ok", or why the firmware's guard is tripped."""

    temp_c: float | None = None
    amps: float | None = None
    guard: str = "ok"

    def shown(self) -> tuple[object, ...]:
        """What the panel shows of it: a change here is worth a new view."""
        temp = None if self.temp_c is None else round(self.temp_c)
        amps = None if self.amps is None else round(self.amps, 1)
        return temp, amps, self.guard


class LampState(str, Enum):
    OFF = "off"
    ON = "on"
    COOLDOWN = "cooldown"
    FAULT = "fault"


@dataclass
class Session:
    """A running session. Times on the monotonic clock; started_wall only anchors the record (S13)."""

    id: int
    user: str
    started_mono: float
    started_wall: datetime
    planned_s: float
    # Time already used by the sessions this one continues (S18): it counts against max_minutes.
    prior_s: float = 0.0
    continues: int | None = None
    warned_for: float | None = None  # the deadline whose one-minute warning has sounded

    @property
    def deadline(self) -> float:
        return self.started_mono + self.planned_s


@dataclass
class Lamp:
    cfg: LampConfig
    index: int
    state: LampState = LampState.OFF
    session: Session | None = None
    cooldown_until: float = 0.0
    fault_reason: str | None = None
    # A start or an extension waiting for the firmware's reply, outside the lock.
    starting: bool = False
    extending: bool = False
    # Bumped by anything that must cancel a start in flight (stop, stop-all, fault, E-stop) (S11).
    epoch: int = 0
    feedback_bad_since: float | None = None
    # S19: when the latest Stop, Stop all or E-stop of this lamp arrived (monotonic), and the
    # arrival times of starts and extensions that arrived and have not reached the controller yet.
    stopped_at: float | None = None
    arriving: list[float] = field(default_factory=list)
    # S18: when the last session ended (monotonic), and what that patient has used so far.
    last_end: float | None = None
    chain_used_s: float = 0.0
    chain_last_id: int | None = None
    # How the last session ended (its end_reason and why), for the panel's end or alarm.
    last_end_reason: str | None = None
    last_end_why: str | None = None
    # S23: the firmware's latest readings, and whether this session's bulb drew too little.
    sensed: Sensed | None = None
    bulb_low: bool = False

    @property
    def running(self) -> Session:
        """The session of a lamp that is on: `state` ON and `session` are set and cleared together."""
        if self.session is None:
            raise RuntimeError(f"{self.cfg.id} is {self.state.value} with no session")
        return self.session

    def in_rest_window(self, now: float) -> bool:
        window = self.cfg.rest_window_s
        return window > 0 and self.last_end is not None and now - self.last_end < window

    def view_is_timeless(self, now: float) -> bool:
        """Whether make_view gives this lamp the same view at any later time while its fields stay as
        they are: not on or cooling down (their remaining times run) and past its rest window."""
        return self.state is not LampState.ON and self.state is not LampState.COOLDOWN and not self.in_rest_window(now)

    def continue_left_s(self, now: float) -> float | None:
        """Seconds a continuation of the last patient's session may still use, or None outside the window."""
        if self.state is LampState.ON or not self.in_rest_window(now):
            return None
        return round(s3_left_s(self.chain_used_s, self.cfg.max_s), 3)

    def check_startable(self, now: float) -> None:
        name = self.cfg.name
        if self.starting or self.state is LampState.ON:
            raise Refused(f"{name} is already on.", "already-on")
        if self.extending:
            raise Refused(f"{name}'s last extension is still being settled; try again.", "busy")
        if self.state is LampState.COOLDOWN:
            left = max(0.0, self.cooldown_until - now)
            raise Refused(f"{name} is cooling down; it can start again in {fmt_s(left)}.", "cooldown")
        if self.state is LampState.FAULT:
            raise Refused(f"{name} has a latched fault ({self.fault_reason}); an admin must reset it.", "fault")

    def budget(self, seconds: float, now: float, new_patient: bool) -> tuple[float, int | None]:
        """S18: (time already used by the sessions a start continues, the id it continues), or over-limit."""
        if new_patient or not self.in_rest_window(now):
            return 0.0, None
        if not s3_allows(self.chain_used_s + seconds, self.cfg.max_s):
            left = s3_left_s(self.chain_used_s, self.cfg.max_s)
            raise Refused(
                f"{self.cfg.name} has already run {fmt_s(round(self.chain_used_s))} for this patient, so "
                f"{fmt_s(round(left, 1))} of its {fmt_min(self.cfg.max_minutes)} limit is left; "
                "start it for a new patient to begin afresh.",
                "over-limit",
            )
        return self.chain_used_s, self.chain_last_id

    def extended_plan(self, session: Session, seconds: float) -> float:
        """S3: the running session's plan with `seconds` added, or over-limit (the sessions it continues count)."""
        new_planned = session.planned_s + seconds
        if not s3_allows(session.prior_s + new_planned, self.cfg.max_s):
            left = s3_left_s(session.prior_s + session.planned_s, self.cfg.max_s)
            raise Refused(
                f"Extending {self.cfg.name} by {fmt_s(seconds)} would pass its limit of "
                f"{fmt_min(self.cfg.max_minutes)} per patient ({fmt_s(round(left, 1))} left to add).",
                "over-limit",
            )
        return new_planned

    def check_feedback(self, powered: bool | None, now: float) -> tuple[bool, str | None]:
        """S6 stuck relay: the feedback input must agree with the relay within the settle time.

        Returns (keep polling, what is wrong when the mismatch outlasted the settle time).
        """
        if powered is None:
            return False, None
        if self.state is LampState.FAULT and self.feedback_bad_since is not None:
            return True, None
        if powered == (self.state is LampState.ON):
            self.feedback_bad_since = None
        elif self.feedback_bad_since is None:
            self.feedback_bad_since = now
        elif now - self.feedback_bad_since >= FEEDBACK_SETTLE_S:
            return True, (
                "still powered after its relay was switched off (relay stuck closed)"
                if powered
                else "not powered while its relay is on (relay stuck open or bulb failed)"
            )
        return True, None


@dataclass(frozen=True)
class LampView:
    id: str
    name: str
    state: str
    relay_on: bool
    remaining_s: float | None
    session_id: int | None
    max_minutes: float
    presets: tuple[float, ...]
    default_minutes: float
    planned_s: float | None
    user: str | None
    cooldown_remaining_s: float | None
    fault_reason: str | None
    continue_left_s: float | None = None
    continues: int | None = None
    feedback_on: bool | None = None
    extend_left_s: float | None = None  # while on: what may still be added before max_minutes (S3)
    extend_ok: bool = False  # while on: the panel's +5 min (EXTEND_STEP_S) still fits (S3; not in as_dict)
    # Set only on the views a Stop returns: "ended", "cancelled-start" or "already-off" (not in as_dict).
    result: str | None = None
    # How the last session ended: its end_reason ("completed", "stopped", "estop", ...) and why, its id and
    # when (monotonic) (not in as_dict).
    last_end_reason: str | None = None
    last_end_why: str | None = None
    last_session_id: int | None = None
    last_end_mono: float | None = None
    # The couch's inputs (S24, S25) and the firmware's readings (S23); None where the lamp has none.
    patient_pressed: bool | None = None
    tilted: bool | None = None
    temperature_c: float | None = None
    current_a: float | None = None
    guard: str | None = None  # "ok" or why the firmware's guard is tripped
    bulb_blown: bool = False

    def same_patient_s(self, asked_s: float) -> float | None:
        """S18: what a start of `asked_s` for the same patient may run (all of it, or what is left); None
        outside the rest window, where every start is fresh."""
        return None if self.continue_left_s is None else min(asked_s, self.continue_left_s)

    @property
    def heating(self) -> bool:
        """In a session, or its relay still closed: a lamp a Stop would switch off."""
        return self.state == "on" or self.relay_on

    def as_dict(self) -> dict[str, Any]:
        d = {
            k: getattr(self, k)
            for k in (
                "id",
                "name",
                "state",
                "relay_on",
                "remaining_s",
                "session_id",
                "max_minutes",
                "default_minutes",
                "planned_s",
                "user",
                "cooldown_remaining_s",
                "fault_reason",
                "continue_left_s",
                "continues",
                "feedback_on",
                "extend_left_s",
                "patient_pressed",
                "tilted",
                "temperature_c",
                "current_a",
                "guard",
                "bulb_blown",
            )
        }
        d["presets"] = list(self.presets)
        return d


def make_view(
    lamp: Lamp,
    now: float,
    relay_on: bool,
    feedback_on: bool | None,
    patient_pressed: bool = False,
    tilted: bool = False,
) -> LampView:
    session = lamp.session if lamp.state is LampState.ON else None
    sensed = lamp.sensed
    cfg = lamp.cfg
    used = session.prior_s + session.planned_s if session else 0.0
    return LampView(
        id=lamp.cfg.id,
        name=lamp.cfg.name,
        state=lamp.state.value,
        relay_on=relay_on,
        remaining_s=round(max(0.0, session.deadline - now), 3) if session else None,
        session_id=session.id if session else None,
        max_minutes=lamp.cfg.max_minutes,
        presets=lamp.cfg.presets,
        default_minutes=lamp.cfg.default_minutes,
        planned_s=round(session.planned_s, 3) if session else None,
        user=session.user if session else None,
        cooldown_remaining_s=(
            round(max(0.0, lamp.cooldown_until - now), 3) if lamp.state is LampState.COOLDOWN else None
        ),
        fault_reason=lamp.fault_reason if lamp.state is LampState.FAULT else None,
        continue_left_s=lamp.continue_left_s(now),
        continues=session.continues if session else None,
        feedback_on=feedback_on,
        extend_left_s=round(s3_left_s(used, lamp.cfg.max_s), 3) if session else None,
        extend_ok=session is not None and s3_allows(used + EXTEND_STEP_S, lamp.cfg.max_s),
        last_end_reason=lamp.last_end_reason,
        last_end_why=lamp.last_end_why,
        last_session_id=lamp.chain_last_id,
        last_end_mono=lamp.last_end,
        patient_pressed=patient_pressed if cfg.stop_pin is not None else None,
        tilted=tilted if cfg.tilt_pin is not None else None,
        temperature_c=None if sensed is None or sensed.temp_c is None else round(sensed.temp_c, 1),
        current_a=None if sensed is None or sensed.amps is None else round(sensed.amps, 2),
        guard=sensed.guard if sensed is not None else None,
        bulb_blown=lamp.bulb_low,
    )


# How each path words an emergency stop in the record ("emergency stop by ann from the API"):
# the panel reads who and where back from it (web/words.py:fault_text).
ESTOP_VIA = ("from the panel", "from the API", "from the command line", "over MQTT")


def estop_reason(who: str, via: str) -> str:
    if via not in ESTOP_VIA:
        raise ValueError(f"unknown emergency-stop path {via!r}")
    return f"emergency stop by {who} {via}"


def parse_estop_reason(reason: str | None) -> tuple[str, str | None] | None:
    """(who, via) of an emergency stop's reason, via None when the record names no path; else None."""
    text = reason or ""
    if not text.startswith("emergency stop by "):
        return None
    rest = text.removeprefix("emergency stop by ")
    for via in ESTOP_VIA:
        if rest.endswith(" " + via):
            return rest.removesuffix(" " + via), via
    return rest, None


def is_estop(reason: str | None) -> bool:
    """A latch by an emergency stop: from a path (estop_reason) or the E-stop button ("E-stop pressed")."""
    return parse_estop_reason(reason) is not None or (reason or "").lower().startswith("e-stop")
