"""One state machine per lamp (off -> on -> cooldown -> off, latched fault) and the deadline scheduler."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Protocol, Sequence

from lampctl.config import LampConfig
from lampctl.safety import is_duration, s3_allows, s7_backstop_ms

log = logging.getLogger(__name__)

# A feedback input may lag its relay by a contact's bounce and a lamp's inrush;
# a mismatch that outlasts this is a stuck relay or a dead lamp (S6).
FEEDBACK_SETTLE_S = 0.5
FEEDBACK_POLL_S = 0.1
# The scheduler wakes at least this often so its liveness can be watched.
MAX_IDLE_S = 1.0


class LampState(str, Enum):
    OFF = "off"
    ON = "on"
    COOLDOWN = "cooldown"
    FAULT = "fault"


class Refused(Exception):
    """An action the lamp's state, the request or the hardware forbids; str() is one sentence."""

    status = 409
    code = "conflict"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code


class UnknownLamp(Refused):
    status = 404
    code = "unknown-lamp"


class BadDuration(Refused):
    status = 400
    code = "bad-duration"


class Unavailable(Refused):
    status = 503
    code = "firmware-unavailable"


class Hardware(Protocol):
    def set(self, index: int, on: bool) -> None: ...
    def all_off(self) -> None: ...
    def is_on(self, index: int) -> bool: ...
    def feedback_on(self, index: int) -> bool | None: ...
    @property
    def estop_pressed(self) -> bool: ...


class Backstop(Protocol):
    """The independent second channel (S7): arm blocks and may raise; release never blocks."""

    grace_s: float

    def arm(self, index: int, ms: int) -> None: ...
    def release(self, index: int) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def wall(self): ...
    def wait(self, condition: threading.Condition, timeout: float | None) -> None: ...


@dataclass
class _Lamp:
    cfg: LampConfig
    index: int
    state: LampState = LampState.OFF
    session_id: int | None = None
    user: str | None = None
    started_mono: float = 0.0
    deadline: float = 0.0
    planned_s: float = 0.0
    cooldown_until: float = 0.0
    fault_reason: str | None = None
    starting: bool = False
    # Bumped by anything that must cancel a start in flight (stop-all, fault, E-stop).
    epoch: int = 0
    feedback_bad_since: float | None = None


@dataclass(frozen=True)
class LampView:
    id: str
    name: str
    state: str
    relay_on: bool
    remaining_s: float | None
    session_id: int | None
    max_minutes: float
    presets: tuple
    default_minutes: float
    planned_s: float | None
    user: str | None
    cooldown_remaining_s: float | None
    fault_reason: str | None
    feedback_on: bool | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (
            "id", "name", "state", "relay_on", "remaining_s", "session_id", "max_minutes",
            "default_minutes", "planned_s", "user", "cooldown_remaining_s", "fault_reason", "feedback_on")}
        d["presets"] = list(self.presets)
        return d


class SessionController:
    """Starts, extends and ends timed sessions; every path that ends one turns the relay off first."""

    def __init__(self, lamps: Sequence[LampConfig], hardware: Hardware, clock: Clock, usage_log,
                 backstop: Backstop | None = None):
        self._lamps = [_Lamp(cfg, i) for i, cfg in enumerate(lamps)]
        self._by_id = {lamp.cfg.id: lamp for lamp in self._lamps}
        self._hw = hardware
        self._clock = clock
        self._log = usage_log
        self._backstop = backstop
        self._cond = threading.Condition(threading.RLock())
        self._reset_blockers: list[Callable[[], str | None]] = []
        self._scheduler: threading.Thread | None = None
        self._stopping = False
        self.last_tick = clock.monotonic()

    # ---- queries -----------------------------------------------------------------------
    def lamp_ids(self) -> list[str]:
        return [lamp.cfg.id for lamp in self._lamps]

    def lamp(self, lamp_id: str) -> LampView:
        with self._cond:
            return self._view(self._get(lamp_id), self._clock.monotonic())

    def lamps(self) -> list[LampView]:
        with self._cond:
            now = self._clock.monotonic()
            return [self._view(lamp, now) for lamp in self._lamps]

    def _view(self, lamp: _Lamp, now: float) -> LampView:
        on = lamp.state is LampState.ON
        return LampView(
            id=lamp.cfg.id, name=lamp.cfg.name, state=lamp.state.value,
            relay_on=self._hw.is_on(lamp.index),
            remaining_s=round(max(0.0, lamp.deadline - now), 3) if on else None,
            session_id=lamp.session_id if on else None,
            max_minutes=lamp.cfg.max_minutes, presets=lamp.cfg.presets,
            default_minutes=lamp.cfg.default_minutes,
            planned_s=round(lamp.planned_s, 3) if on else None,
            user=lamp.user if on else None,
            cooldown_remaining_s=(round(max(0.0, lamp.cooldown_until - now), 3)
                                  if lamp.state is LampState.COOLDOWN else None),
            fault_reason=lamp.fault_reason if lamp.state is LampState.FAULT else None,
            feedback_on=self._hw.feedback_on(lamp.index),
        )

    def _get(self, lamp_id: str) -> _Lamp:
        try:
            return self._by_id[lamp_id]
        except KeyError:
            raise UnknownLamp(f"There is no lamp {lamp_id!r}; known lamps: {', '.join(self._by_id)}.") from None

    # ---- actions -----------------------------------------------------------------------
    def start(self, lamp_id: str, seconds: float, user: str) -> tuple[int, LampView]:
        """Turn a lamp on for `seconds`; returns (session_id, lamp view)."""
        with self._cond:
            lamp = self._get(lamp_id)
            _check_seconds(seconds)
            if not s3_allows(seconds, lamp.cfg.max_s):
                raise BadDuration(
                    f"{_fmt_s(seconds)} is longer than {lamp.cfg.name}'s limit of {_fmt_min(lamp.cfg.max_minutes)}.",
                    "too-long")
            self._check_startable(lamp)
            lamp.starting = True
            epoch = lamp.epoch
        try:
            if self._backstop is not None:
                # Arm the second channel before the relay closes, outside the lock so
                # a slow serial reply never delays another lamp's cutoff.
                self._backstop.arm(lamp.index, s7_backstop_ms(seconds, self._backstop.grace_s))
        except Exception as exc:
            with self._cond:
                lamp.starting = False
            raise _backstop_refusal(exc, f"{lamp.cfg.name} was not started") from None
        with self._cond:
            lamp.starting = False
            if lamp.epoch != epoch or lamp.state is not LampState.OFF:
                self._release_backstop(lamp)
                raise Refused(f"{lamp.cfg.name} was not started: it was stopped or faulted meanwhile.", "cancelled")
            now = self._clock.monotonic()
            session_id = self._log.new_session_id()
            lamp.session_id, lamp.user = session_id, user
            lamp.started_mono, lamp.planned_s, lamp.deadline = now, seconds, now + seconds
            try:
                self._hw.set(lamp.index, True)
            except Exception as exc:
                lamp.session_id = None
                self._latch(f"relay of {lamp.cfg.name} could not be switched on: {exc}", [lamp], "system")
                raise Refused(f"{lamp.cfg.name} was not started: its relay output failed ({exc}).", "hardware") from None
            self._set_state(lamp, LampState.ON, user, f"started for {_fmt_s(seconds)}")
            self._log.session_started(session_id, lamp.cfg.id, user, self._clock.wall(), seconds)
            self._cond.notify_all()
            return session_id, self._view(lamp, now)

    def extend(self, lamp_id: str, seconds: float, user: str) -> LampView:
        with self._cond:
            lamp = self._get(lamp_id)
            _check_seconds(seconds)
            if lamp.state is not LampState.ON:
                raise Refused(f"{lamp.cfg.name} is not running ({lamp.state.value}), so it cannot be extended.",
                              "not-running")
            new_planned = lamp.planned_s + seconds
            if not s3_allows(new_planned, lamp.cfg.max_s):
                left = max(0.0, lamp.cfg.max_s - lamp.planned_s)
                raise Refused(
                    f"Extending {lamp.cfg.name} by {_fmt_s(seconds)} would pass its limit of "
                    f"{_fmt_min(lamp.cfg.max_minutes)} per session ({_fmt_s(left)} left to add).", "over-limit")
            session_id = lamp.session_id
            new_deadline = lamp.started_mono + new_planned
        if self._backstop is not None:
            try:
                remaining = new_deadline - self._clock.monotonic()
                self._backstop.arm(lamp.index, s7_backstop_ms(remaining, self._backstop.grace_s))
            except Exception as exc:
                raise _backstop_refusal(exc, f"{lamp.cfg.name} was not extended") from None
        with self._cond:
            if lamp.state is not LampState.ON or lamp.session_id != session_id:
                raise Refused(f"{lamp.cfg.name} ended before the extension took effect.", "not-running")
            lamp.planned_s, lamp.deadline = new_planned, new_deadline
            self._log.event(lamp.cfg.id, "on", "on", user, f"extended by {_fmt_s(seconds)}", self._clock.wall())
            self._log.session_extended(session_id, new_planned)
            self._cond.notify_all()
            return self._view(lamp, self._clock.monotonic())

    def stop(self, lamp_id: str, user: str) -> LampView:
        with self._cond:
            lamp = self._get(lamp_id)
            if lamp.state is not LampState.ON:
                raise Refused(f"{lamp.cfg.name} is not running ({lamp.state.value}).", "not-running")
            now = self._clock.monotonic()
            self._end(lamp, "stopped", user, "stopped by user", now)
            return self._view(lamp, now)

    def stop_all(self, user: str, why: str = "stop all") -> list[LampView]:
        """S5: every relay off at once; running sessions end `stopped`."""
        with self._cond:
            now = self._cut_all("stopped", user, why, latch=False)
            self._log.event(None, None, None, user, why, self._clock.wall())
            return [self._view(lamp, now) for lamp in self._lamps]

    def estop(self, who: str = "E-stop button") -> None:
        """S5: the physical E-stop: all off, sessions end `estop`, every lamp latched until reset."""
        with self._cond:
            self._cut_all("estop", who, "E-stop pressed", latch=True)
            self._latch("E-stop pressed", self._lamps, who)

    def fault(self, reason: str, lamp_id: str | None = None, who: str = "system", *,
              running_only: bool = False) -> list[str]:
        """S6: all relays off; running sessions end `fault`; latched until reset.

        Latches the named lamp, else with running_only the lamps that were on (or being
        started), else every lamp. Returns the ids latched.
        """
        with self._cond:
            if lamp_id:
                targets = [self._by_id[lamp_id]]
            elif running_only:
                targets = [l for l in self._lamps if l.state is LampState.ON or l.starting]
            else:
                targets = list(self._lamps)
            self._latch(reason, targets, who)
            return [l.cfg.id for l in targets]

    def _cut_all(self, end_reason: str, who: str, why: str, *, latch: bool) -> float:
        """Every relay off at once, then each running session ended; cancels starts in flight."""
        try:
            self._hw.all_off()
        except Exception:  # still end the sessions; each _end retries its own relay
            log.exception("all_off failed")
        now = self._clock.monotonic()
        for lamp in self._lamps:
            lamp.epoch += 1
            if lamp.state is LampState.ON:
                self._end(lamp, end_reason, who, why, now, latch=latch)
        return now

    def _latch(self, reason: str, targets: list[_Lamp], who: str) -> None:
        self._cut_all("fault", who, reason, latch=True)
        for lamp in targets:
            if lamp.state is not LampState.FAULT:
                lamp.fault_reason = reason
                self._set_state(lamp, LampState.FAULT, who, reason)
        log.error("fault latched: %s", reason)

    def reset_fault(self, lamp_id: str, user: str) -> LampView:
        with self._cond:
            lamp = self._get(lamp_id)
            if lamp.state is not LampState.FAULT:
                raise Refused(f"{lamp.cfg.name} has no latched fault to clear.", "no-fault")
            for blocker in [lambda: "the E-stop button is still pressed" if self._hw.estop_pressed else None,
                            *self._reset_blockers]:
                why = blocker()
                if why:
                    raise Refused(f"{lamp.cfg.name}'s fault cannot be cleared yet: {why}.", "fault-persists")
            cleared = lamp.fault_reason
            lamp.fault_reason = None
            lamp.feedback_bad_since = None
            self._set_state(lamp, LampState.OFF, user, f"fault cleared ({cleared})")
            return self._view(lamp, self._clock.monotonic())

    def add_reset_blocker(self, blocker: Callable[[], str | None]) -> None:
        """blocker() returns why a fault may not be cleared yet, or None."""
        self._reset_blockers.append(blocker)

    def shutdown(self, why: str) -> None:
        """Service stopping (S1): relays off, running sessions end `interrupted`. Idempotent."""
        with self._cond:
            self._stopping = True
            self._cut_all("interrupted", "system", why, latch=True)
            self._cond.notify_all()

    # ---- internals ---------------------------------------------------------------------
    def _check_startable(self, lamp: _Lamp) -> None:
        if self._stopping:
            raise Refused("The service is shutting down.", "shutting-down")
        if lamp.starting:
            raise Refused(f"{lamp.cfg.name} is already being started.", "already-on")
        if lamp.state is LampState.ON:
            raise Refused(f"{lamp.cfg.name} is already on.", "already-on")
        if lamp.state is LampState.COOLDOWN:
            left = max(0.0, lamp.cooldown_until - self._clock.monotonic())
            raise Refused(f"{lamp.cfg.name} is cooling down; it can start again in {_fmt_s(left)}.", "cooldown")
        if lamp.state is LampState.FAULT:
            raise Refused(f"{lamp.cfg.name} has a latched fault ({lamp.fault_reason}); an admin must reset it.",
                          "fault")

    def _end(self, lamp: _Lamp, reason: str, who: str, why: str, now: float, latch: bool = False) -> None:
        """End the running session: relay OFF first, then the records."""
        relay_error = None
        try:
            self._hw.set(lamp.index, False)
        except Exception as exc:  # the record must still be written; the fault follows
            relay_error = exc
            self._hw.all_off()
        self._release_backstop(lamp)
        actual = max(0.0, now - lamp.started_mono)
        self._log.session_ended(lamp.session_id, self._clock.wall(), actual, reason)
        if latch or lamp.cfg.cooldown_s <= 0:
            nxt = LampState.OFF
        else:
            nxt = LampState.COOLDOWN
            lamp.cooldown_until = now + lamp.cfg.cooldown_s
        self._set_state(lamp, nxt, who, f"{reason}: {why}")
        lamp.session_id = lamp.user = None
        if relay_error is not None:
            self._latch(f"relay of {lamp.cfg.name} could not be switched off: {relay_error}", [lamp], "system")

    def _release_backstop(self, lamp: _Lamp) -> None:
        if self._backstop is not None:
            try:
                self._backstop.release(lamp.index)
            except Exception:
                log.exception("backstop release failed")

    def _set_state(self, lamp: _Lamp, new: LampState, who: str, why: str) -> None:
        old = lamp.state
        lamp.state = new
        self._log.event(lamp.cfg.id, old.value, new.value, who, why, self._clock.wall())

    def tick(self, now: float | None = None) -> float | None:
        """Act on every due deadline; return the next time something is due (monotonic)."""
        with self._cond:
            now = self._clock.monotonic() if now is None else now
            self.last_tick = now
            nxt: float | None = None
            for lamp in self._lamps:
                if lamp.state is LampState.ON and now >= lamp.deadline:
                    self._end(lamp, "completed", "system", "time up", now)
                if lamp.state is LampState.COOLDOWN and now >= lamp.cooldown_until:
                    self._set_state(lamp, LampState.OFF, "system", "cooldown over")
                if lamp.state is LampState.ON:
                    nxt = _earliest(nxt, lamp.deadline)
                elif lamp.state is LampState.COOLDOWN:
                    nxt = _earliest(nxt, lamp.cooldown_until)
                if self._check_feedback(lamp, now):
                    nxt = _earliest(nxt, now + FEEDBACK_POLL_S)
            return nxt

    def _check_feedback(self, lamp: _Lamp, now: float) -> bool:
        """S6 stuck relay: the feedback input must agree with the relay within the settle time."""
        powered = self._hw.feedback_on(lamp.index)
        if powered is None:
            return False
        if lamp.state is LampState.FAULT and lamp.feedback_bad_since is not None:
            return True
        wanted = lamp.state is LampState.ON
        if powered == wanted:
            lamp.feedback_bad_since = None
        elif lamp.feedback_bad_since is None:
            lamp.feedback_bad_since = now
        elif now - lamp.feedback_bad_since >= FEEDBACK_SETTLE_S:
            what = "still powered after its relay was switched off (relay stuck closed)" if powered else \
                "not powered while its relay is on (relay stuck open or bulb failed)"
            self._latch(f"{lamp.cfg.name} is {what}", [lamp], "system")
        return True

    # ---- scheduler ---------------------------------------------------------------------
    def start_scheduler(self) -> threading.Thread:
        self._scheduler = threading.Thread(target=self._run_scheduler, name="lamp-scheduler", daemon=True)
        self._scheduler.start()
        return self._scheduler

    def stop_scheduler(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._scheduler is not None and self._scheduler is not threading.current_thread():
            self._scheduler.join(5)

    @property
    def scheduler_alive(self) -> bool:
        return self._scheduler is not None and self._scheduler.is_alive()

    def _run_scheduler(self) -> None:
        try:
            with self._cond:
                while not self._stopping:
                    nxt = self.tick()
                    now = self._clock.monotonic()
                    limit = now + MAX_IDLE_S
                    self._clock.wait(self._cond, max(0.0, min(nxt or limit, limit) - now))
        except BaseException as exc:
            # S6: a dead scheduler could miss a deadline, so nothing may stay on.
            self.fault(f"scheduler died: {type(exc).__name__}: {exc}")
            raise


def _backstop_refusal(exc: Exception, what: str) -> Refused:
    """The backstop's own Refused (409 refused, 503 no answer) keeps its code; anything else is 503."""
    detail = str(exc).rstrip(".")
    if isinstance(exc, Refused):
        return type(exc)(f"{what}: {detail[:1].lower()}{detail[1:]}.", exc.code)
    return Unavailable(f"{what}: the safety microcontroller did not accept it ({detail}).")


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def _check_seconds(seconds) -> None:
    if not is_duration(seconds):
        raise BadDuration(f"A duration must be a number of seconds greater than 0, got {seconds!r}.")


def _fmt_s(seconds: float) -> str:
    if seconds >= 60 and abs(seconds / 60 - round(seconds / 60)) < 1e-6:
        return f"{round(seconds / 60)} min"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:g} s"


def _fmt_min(minutes: float) -> str:
    return _fmt_s(minutes * 60)
