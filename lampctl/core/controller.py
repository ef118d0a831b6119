"""One state machine per lamp (off -> on -> cooldown -> off, latched fault) and the deadline scheduler."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING

from lampctl.core.alerts import Alerts, next_due, sounding

if TYPE_CHECKING:
    from lampctl.config import LampConfig
from lampctl.core.carryover import Carried
from lampctl.core.errors import (
    BadDuration,
    Refused,
    Unavailable,
    UnknownLamp,
    backstop_refusal,
    check_duration,
    fmt_min,
    fmt_s,
)
from lampctl.core.lamp import BULB_BLOWN, PATIENT, Lamp, LampState, LampView, Sensed, Session, make_view
from lampctl.core.listeners import Listeners
from lampctl.core.ports import Backstop, Clock, Hardware, UsageRecords
from lampctl.core.safety import s7_arm_holds, s7_backstop_ms, s19_overtaken

__all__ = ["SessionController", "Refused", "UnknownLamp", "BadDuration", "Unavailable", "LampView", "LampState"]

log = logging.getLogger(__name__)

FEEDBACK_POLL_S = 0.1
# A bulb's current is judged this long after the relay closed (an IR bulb's inrush, the sensor's filter).
BULB_SETTLE_S = 2.0
# The scheduler wakes at least this often so its liveness can be watched.
MAX_IDLE_S = 1.0


class SessionController:
    """Starts, extends and ends timed sessions; every path that ends one turns the relay off first."""

    def __init__(
        self,
        lamps: Sequence[LampConfig],
        hardware: Hardware,
        clock: Clock,
        usage_log: UsageRecords,
        backstop: Backstop | None = None,
        *,
        latched: dict[str, str] | None = None,
        carried: dict[str, Carried] | None = None,
        max_lamps_on: int | None = None,
    ) -> None:
        self._lamps = [Lamp(cfg, i) for i, cfg in enumerate(lamps)]
        self._by_id = {lamp.cfg.id: lamp for lamp in self._lamps}
        # Lamp index -> (what its last polled view was made of, the view): see _polled_view.
        self._polled: dict[int, tuple[tuple[object, ...], LampView]] = {}
        self._hw = hardware
        self._clock = clock
        self._log = usage_log
        self._backstop = backstop
        self._alerts = Alerts(hardware)  # buzzers, sounded once the lock is released
        self._cond = threading.Condition(threading.RLock())
        # Guards Lamp.arriving only, so the HTTP server's network thread never waits for _cond.
        self._arrivals = threading.Lock()
        self._reset_blockers: list[Callable[[], str | None]] = []
        # Per lamp (its index): why its latch may not be cleared yet, and what to do, outside the
        # lock, before a reset of it looks (the firmware's guard trip is cleared over the link, S23).
        self._lamp_blockers: list[Callable[[int], str | None]] = []
        self._reset_preparers: list[Callable[[int], None]] = []
        self._max_on = max_lamps_on  # S26: None, every lamp may be on at once
        self.listeners = Listeners()
        self._scheduler: threading.Thread | None = None
        self._stopping = False
        self.last_tick = clock.monotonic()
        for lamp_id, reason in (latched or {}).items():
            self._restore_latch(lamp_id, reason)
        for lamp_id, state in (carried or {}).items():
            self._carry_over(lamp_id, state)

    def _restore_latch(self, lamp_id: str, reason: str) -> None:
        """S17: a fault latched before a restart stays latched until an admin resets it."""
        lamp = self._by_id.get(lamp_id)
        if lamp is None:
            log.warning("latched fault for unknown lamp %r ignored: %s", lamp_id, reason)
            return
        lamp.state, lamp.fault_reason = LampState.FAULT, reason
        self._log.event(
            lamp_id,
            "off",
            "fault",
            "system",
            f"fault still latched from before the restart: {reason}",
            self._clock.wall(),
        )

    def _carry_over(self, lamp_id: str, state: Carried) -> None:
        """S20: the last session's end, its patient's budget and the cooldown outlive a restart.

        The age comes from the record, mapped onto this clock; an untrusted one is 0, so
        the cooldown applies in full and a start within the rest window continues the budget.
        """
        lamp = self._by_id.get(lamp_id)
        if lamp is None:
            return
        now = self._clock.monotonic()
        lamp.last_end = now - max(0.0, state.age_s)
        lamp.chain_used_s, lamp.chain_last_id = state.used_s, state.last_id
        left = lamp.cfg.cooldown_s - max(0.0, state.age_s)
        if left > 0 and lamp.state is LampState.OFF:
            lamp.state, lamp.cooldown_until = LampState.COOLDOWN, now + left
            why = "" if state.trusted else " (the time since it ended cannot be told, so in full)"
            self._log.event(
                lamp_id,
                "off",
                "cooldown",
                "system",
                f"cooling down from session {state.last_id} before the restart: {fmt_s(round(left, 1))} left{why}",
                self._clock.wall(),
            )

    # ---- queries -----------------------------------------------------------------------
    def lamp_ids(self) -> list[str]:
        return [lamp.cfg.id for lamp in self._lamps]

    def lamp(self, lamp_id: str) -> LampView:
        with self._cond:
            return self._polled_view(self._get(lamp_id), self._clock.monotonic())

    def lamps(self) -> list[LampView]:
        with self._cond:
            now = self._clock.monotonic()
            return [self._polled_view(lamp, now) for lamp in self._lamps]

    def _inputs(self, lamp: Lamp) -> tuple[bool, bool | None, bool, bool]:
        """What make_view takes besides the lamp and the time, read now: the relay read back (S6), the
        feedback, the patient's button (S24) and the stand's tilt switch (S25)."""
        i = lamp.index
        return self._hw.is_on(i), self._hw.feedback_on(i), self._hw.patient_pressed(i), self._hw.tilted(i)

    def _view(self, lamp: Lamp, now: float) -> LampView:
        return make_view(lamp, now, *self._inputs(lamp))

    def _polled_view(self, lamp: Lamp, now: float) -> LampView:
        """_view for the polls (held lock): the last view again while nothing it is made of changed.

        The relays, feedback and the couch's inputs are read back every time; the key is them and every field of
        the lamp (by value), so a relay, a state, a fault or a field added later makes a new
        view. Only views that time does not change are kept (Lamp.view_is_timeless).
        """
        inputs = self._inputs(lamp)
        if not lamp.view_is_timeless(now):
            return make_view(lamp, now, *inputs)
        key = (inputs, tuple(vars(lamp).values()))
        kept = self._polled.get(lamp.index)
        if kept is not None and kept[0] == key:
            return kept[1]
        view = make_view(lamp, now, *inputs)
        self._polled[lamp.index] = (key, view)
        return view

    def _get(self, lamp_id: str) -> Lamp:
        try:
            return self._by_id[lamp_id]
        except (KeyError, TypeError):
            raise UnknownLamp(f"There is no lamp {lamp_id!r}; known lamps: {', '.join(self._by_id)}.") from None

    def now(self) -> float:
        """The controller's monotonic time: the arrival stamp of a request that comes by a path
        with no stamp of its own (an MQTT message as it is received)."""
        return self._clock.monotonic()

    # ---- arrivals (S19) ----------------------------------------------------------------
    def note_arrival(self, lamp_id: str, arrived: float) -> None:
        """A start or extension of lamp_id arrived at `arrived` and is queued for the controller.

        Only so that a Stop served ahead of it can say it cancelled a start; what refuses the
        start is its arrival time (s19_overtaken), registered or not.
        """
        lamp = self._by_id.get(lamp_id)
        if lamp is not None:
            with self._arrivals:
                lamp.arriving.append(arrived)

    def drop_arrival(self, lamp_id: str, arrived: float) -> None:
        """That request is answered (or reached the controller); idempotent."""
        lamp = self._by_id.get(lamp_id)
        if lamp is not None:
            with self._arrivals:
                if arrived in lamp.arriving:
                    lamp.arriving.remove(arrived)

    def _arrived(self, lamp: Lamp, arrived: float | None, action: str) -> float:
        """Under the lock: a start or extension reaches the controller; refused if a Stop arrived after it (S19)."""
        now = self._clock.monotonic()
        if arrived is None:
            return now
        self.drop_arrival(lamp.cfg.id, arrived)
        if s19_overtaken(arrived, lamp.stopped_at):
            assert lamp.stopped_at is not None  # only a Stop overtakes
            later = fmt_s(round(lamp.stopped_at - arrived, 3))
            raise Refused(
                f"{lamp.cfg.name} was not {action}: a Stop of it arrived {later} after this request, "
                "and a Stop cancels every start or extension that came before it.",
                "cancelled",
            )
        return arrived

    def _stopping_now(self, lamp: Lamp, arrived: float | None) -> str:
        """Under the lock, before the cut: note the Stop's arrival (S19) and say what it will do to this lamp."""
        at = self._clock.monotonic() if arrived is None else arrived
        lamp.stopped_at = at if lamp.stopped_at is None else max(lamp.stopped_at, at)
        if lamp.state is LampState.ON:
            return "ended"
        with self._arrivals:
            queued = any(t < at for t in lamp.arriving)
        return "cancelled-start" if lamp.starting or queued else "already-off"

    # ---- start and extend --------------------------------------------------------------
    def start(
        self, lamp_id: str, seconds: float, user: str, *, new_patient: bool = False, arrived: float | None = None
    ) -> tuple[int, LampView]:
        """Turn a lamp on for `seconds`; returns (session_id, lamp view).

        Within the lamp's rest window a start continues the last patient's budget (S18)
        unless new_patient is True. `arrived` is when the request arrived (monotonic; None:
        now): a Stop of this lamp that arrived later refuses it (S19).
        """
        lamp = self._get(lamp_id)
        name = f"A start of {lamp.cfg.name}"
        seconds = check_duration(seconds, name)
        with self._cond:
            self._arrived(lamp, arrived, "started")
            # S3: a session no longer than the lamp's limit (checked after S19 may refuse it).
            check_duration(seconds, name, most=(lamp.cfg.max_s, f"its limit of {fmt_min(lamp.cfg.max_minutes)}"))
            if self._stopping:
                raise Refused("The service is shutting down.", "shutting-down")
            lamp.check_startable(self._clock.monotonic())
            self._check_inputs(lamp)
            self._s26_check_max_on()
            # Recorded only where it matters: inside the rest window it waives the budget (S18).
            declared = bool(new_patient) and lamp.in_rest_window(self._clock.monotonic())
            prior, continues = lamp.budget(seconds, self._clock.monotonic(), new_patient)
            lamp.starting = True
            epoch = lamp.epoch
        error = None
        if self._backstop is not None:
            sent, ms = self._clock.monotonic(), s7_backstop_ms(seconds, self._backstop.grace_s)
            try:
                # Armed before the relay closes, outside the lock: a slow reply never delays a Stop.
                self._backstop.arm(lamp.index, ms)
            except Exception as exc:
                error = exc
        with self._cond:
            lamp.starting = False
            if error is None and self._backstop is not None:
                error = self._arm_lapsed(self._backstop, lamp, sent, ms)
            if error is not None or lamp.epoch != epoch or lamp.state is not LampState.OFF:
                # S12: whatever refuses the session, the firmware's last word is OFF (queued
                # after this ARM even if it is still on its way).
                self._release_backstop(lamp)
                if error is not None:
                    raise backstop_refusal(error, f"{lamp.cfg.name} was not started")
                raise Refused(f"{lamp.cfg.name} was not started: it was stopped or faulted meanwhile.", "cancelled")
            return self._begin(lamp, seconds, user, prior, continues, declared)

    def _check_inputs(self, lamp: Lamp) -> None:
        """S24, S25: a start needs the patient's button released and the stand upright (read now)."""
        if self._hw.patient_pressed(lamp.index):
            raise Refused(
                f"{lamp.cfg.name}'s patient stop button is pressed (held down, or its wiring is shorted); "
                "it cannot start until the button is released.",
                "button-held",
            )
        if self._hw.tilted(lamp.index):
            raise Refused(f"{lamp.cfg.name}'s stand is tilted; set it upright first.", "tilted")

    def _s26_check_max_on(self) -> None:
        """S26: no start past service.max_lamps_on, counting the lamps on and those being started (the lock held)."""
        if self._max_on is None:
            return
        busy = sum(1 for l in self._lamps if l.state is LampState.ON or l.starting)
        if busy >= self._max_on:
            lamps = "lamp" if self._max_on == 1 else "lamps"
            raise Refused(
                f"Only {self._max_on} {lamps} may be on at once on this circuit (service.max_lamps_on) and "
                f"{busy} {'is' if busy == 1 else 'are'} on; stop one first.",
                "max-lamps-on",
            )

    def _arm_lapsed(self, backstop: Backstop, lamp: Lamp, sent: float, ms: int) -> Exception | None:
        """S7: the refusal when the ARM confirmed for this start may no longer hold (checked under the lock)."""
        try:
            cut = backstop.cut_at(lamp.index, sent)
        except Exception as exc:
            return exc
        if s7_arm_holds(self._clock.monotonic(), sent, ms, cut):
            return None
        log.warning("start of %s refused: its firmware arm ran out before the relay could close", lamp.cfg.id)
        return Unavailable("its firmware arm ran out before the relay could close (the service was held up); try again")

    def _begin(
        self, lamp: Lamp, seconds: float, user: str, prior: float, continues: int | None, new_patient: bool = False
    ) -> tuple[int, LampView]:
        now, wall = self._clock.monotonic(), self._clock.wall()
        session_id = self._log.new_session_id()
        try:
            self._hw.set(lamp.index, True)
        except Exception as exc:
            self._release_backstop(lamp)  # S12: armed, but no session follows
            self._all_off()
            self._latch(f"relay of {lamp.cfg.name} could not be switched on: {exc}", [lamp], "system")
            raise Refused(f"{lamp.cfg.name} was not started: its relay output failed ({exc}).", "hardware") from None
        lamp.session = Session(session_id, user, now, wall, seconds, prior, continues)
        why = f"started for {fmt_s(seconds)}" + (f", continuing session {continues}" if continues else "")
        if new_patient:
            why += f", declared a new patient by {user} inside the rest window"
        self._set_state(lamp, LampState.ON, user, why)
        self._log.session_started(
            session_id,
            lamp.cfg.id,
            user,
            wall,
            seconds,
            continues=continues,
            new_patient=new_patient,
            new_patient_by=user if new_patient else None,
            started_mono=now,
        )
        self._cond.notify_all()
        return session_id, self._view(lamp, now)

    def extend(self, lamp_id: str, seconds: float, user: str, *, arrived: float | None = None) -> LampView:
        """Add `seconds` to the running session; `arrived` as for start (S19)."""
        lamp = self._get(lamp_id)
        seconds = check_duration(seconds, f"An extension of {lamp.cfg.name}")
        with self._cond:
            self._arrived(lamp, arrived, "extended")
            session = self._running(lamp, "extended")
            if lamp.extending:
                # S13: the plan is reserved by the extension in flight; never last writer wins.
                raise Refused(f"Another extension of {lamp.cfg.name} is being applied; try again.", "busy")
            new_planned = lamp.extended_plan(session, seconds)
            if self._backstop is None:
                return self._apply_extension(lamp, session, new_planned, seconds, user)
            lamp.extending = True
            remaining = session.started_mono + new_planned - self._clock.monotonic()
        error = None
        try:
            self._backstop.arm(lamp.index, s7_backstop_ms(remaining, self._backstop.grace_s))
        except Exception as exc:
            error = exc
        with self._cond:
            lamp.extending = False
            if lamp.session is not session:
                # S12: the session ended during the round trip; no start could slip in
                # (starts wait for `extending`), so this OFF follows the ARM just sent.
                self._release_backstop(lamp)
                raise Refused(f"{lamp.cfg.name} ended before the extension took effect.", "not-running")
            if error is not None:
                raise backstop_refusal(error, f"{lamp.cfg.name} was not extended")
            return self._apply_extension(lamp, session, new_planned, seconds, user)

    def _apply_extension(self, lamp: Lamp, session: Session, new_planned: float, seconds: float, user: str) -> LampView:
        session.planned_s = new_planned
        self._log.event(lamp.cfg.id, "on", "on", user, f"extended by {fmt_s(seconds)}", self._clock.wall())
        self._log.session_extended(session.id, new_planned)
        self._cond.notify_all()
        view = self._view(lamp, self._clock.monotonic())
        self.listeners.publish(view)  # the countdown changed though the state did not
        return view

    # ---- stops (S10: relay first, then the lock) ---------------------------------------
    def stop(self, lamp_id: str, user: str, *, arrived: float | None = None) -> LampView:
        """Turn the lamp off whatever its state; the view's `result` says what the Stop did.

        "ended" a session, "cancelled-start" (a start in flight, or one that arrived before
        this Stop and has not reached the controller: S19), or "already-off". `arrived` is
        when the Stop arrived (monotonic; None: now).
        """
        lamp = self._get(lamp_id)
        self._relay_off(lamp)
        with self._cond:
            now = self._clock.monotonic()
            result = self._stopping_now(lamp, arrived)
            state = lamp.state.value
            if lamp.starting:
                # S11: the start in flight sees the new epoch and answers `cancelled`.
                lamp.epoch += 1
            if result == "ended":
                self._end(lamp, "stopped", user, "stopped by user", now)
            elif result == "cancelled-start":
                self._log.event(lamp.cfg.id, state, state, user, "start cancelled by stop", self._clock.wall())
            else:
                self._log.event(lamp.cfg.id, state, state, user, "stop: the lamp was already off", self._clock.wall())
            return replace(self._view(lamp, now), result=result)

    def stop_all(self, user: str, why: str = "stop all", *, arrived: float | None = None) -> list[LampView]:
        """S5: every relay off at once; running sessions end `stopped`; starts in flight are cancelled."""
        self._all_off()
        with self._cond:
            results = {lamp.cfg.id: self._stopping_now(lamp, arrived) for lamp in self._lamps}
            now = self._cut_all("stopped", user, why)
            self._log.event(None, None, None, user, why, self._clock.wall())
            return [replace(self._view(lamp, now), result=results[lamp.cfg.id]) for lamp in self._lamps]

    @sounding
    def estop(
        self, who: str = "E-stop button", why: str = "E-stop pressed", *, arrived: float | None = None
    ) -> list[LampView]:
        """S5: all off, sessions end `estop`, every lamp latched until an admin reset."""
        self._all_off()
        with self._cond:
            results = {lamp.cfg.id: self._stopping_now(lamp, arrived) for lamp in self._lamps}
            now = self._cut_all("estop", who, why, latch=True)
            self._latch(why, self._lamps, who)
            return [replace(self._view(lamp, now), result=results[lamp.cfg.id]) for lamp in self._lamps]

    @sounding
    def fault(
        self, reason: str, lamp_id: str | None = None, who: str = "system", *, running_only: bool = False
    ) -> list[str]:
        """S6: all relays off; running sessions end `fault`; latched until reset.

        Latches the named lamp, else with running_only the lamps that were on (or being
        started), else every lamp. Returns the ids latched now (not those latched before).
        """
        self._all_off()
        with self._cond:
            if lamp_id:
                targets = [self._get(lamp_id)]
            elif running_only:
                targets = [l for l in self._lamps if l.state is LampState.ON or l.starting]
            else:
                targets = list(self._lamps)
            return self._latch(reason, targets, who)

    @sounding
    def patient_stop(self, index: int, *, arrived: float | None = None) -> LampView:
        """S24: the patient's button at the couch. Relay first (S10), then the session ends `patient`.

        Nothing latches (the practitioner may start again once the button is released); the lamp's
        buzzer calls someone to the couch and the panel says "Stopped by the patient" until acknowledged.
        """
        lamp = self._lamps[index]
        self._relay_off(lamp)
        with self._cond:
            now = self._clock.monotonic()
            result = self._stopping_now(lamp, arrived)
            state = lamp.state.value
            if lamp.starting:
                lamp.epoch += 1  # S11: the start in flight answers `cancelled`
            if result == "ended":
                self._end(lamp, "patient", PATIENT, "the patient pressed the stop button", now)
            else:
                why = "start cancelled by" if result == "cancelled-start" else "the lamp was already off:"
                self._log.event(
                    lamp.cfg.id, state, state, PATIENT, f"{why} the patient's stop button", self._clock.wall()
                )
            if result != "already-off":
                self._alerts.add(lamp.index, "fault")  # someone to the couch
            return replace(self._view(lamp, now), result=result)

    @sounding
    def tilted(self, index: int) -> list[str]:
        """S25: the stand's tilt switch opened: this lamp off at once and latched; the others carry on."""
        lamp = self._lamps[index]
        self._relay_off(lamp)
        with self._cond:
            if not self._hw.tilted(index):
                return []  # a bounce that closed again before the lock was taken; the relay is off, nothing ran
            return self._s25_latch_tilted(lamp)

    def _s25_latch_tilted(self, lamp: Lamp) -> list[str]:
        """S25, the lock held and the relay off: the tilted lamp's session ends `fault` and it latches."""
        return self._latch_own(lamp, "fault", f"the lamp stand of {lamp.cfg.name} tilted", "tilt switch")

    @sounding
    def guard_tripped(self, index: int, end_reason: str, reason: str, cut_at: float | None = None) -> list[str]:
        """S23: the firmware cut this lamp on its analog guard (at `cut_at`, monotonic): relay off, the
        session ends `end_reason` there, and the lamp latches with `reason`. Idempotent."""
        lamp = self._lamps[index]
        self._relay_off(lamp)
        with self._cond:
            if lamp.state is LampState.FAULT and lamp.fault_reason == reason:
                return []
            if lamp.state is LampState.FAULT:
                # Latched already for another cause (the link lost while the host was frozen): the
                # record still says the guard tripped, and when.
                self._log.event(lamp.cfg.id, "fault", "fault", "firmware guard", f"also: {reason}", self._clock.wall())
                return []
            return self._latch_own(lamp, end_reason, reason, "firmware guard", cut_at)

    def sensed(self, index: int, readings: Sensed) -> None:
        """S23: the firmware's latest analog readings of this lamp, for its view (the link's thread)."""
        lamp = self._lamps[index]
        with self._cond:
            changed = lamp.sensed is None or lamp.sensed.shown() != readings.shown()
            lamp.sensed = readings
            low = self._bulb_low(lamp, readings)
            if changed or low:
                view = self._view(lamp, self._clock.monotonic())
        if changed or low:
            self.listeners.publish(view)

    def bulb_replaced(self, lamp_id: str) -> None:
        """A new bulb: the blown-bulb report of the old one no longer stands."""
        lamp = self._get(lamp_id)
        with self._cond:
            lamp.bulb_low = False

    def _bulb_low(self, lamp: Lamp, readings: Sensed) -> bool:
        """A lamp on, past its inrush, drawing under min_amps: its bulb has blown (reported once, and
        shown until a session draws enough again or a new bulb is recorded)."""
        session = lamp.session if lamp.state is LampState.ON else None
        if session is None or readings.amps is None or lamp.cfg.min_amps <= 0:
            return False
        if readings.amps >= lamp.cfg.min_amps:
            lamp.bulb_low = False  # enough current: a blown bulb reported before no longer stands
            return False
        if lamp.bulb_low or self._clock.monotonic() - session.started_mono < BULB_SETTLE_S:
            return False  # reported already, or still in the bulb's inrush
        lamp.bulb_low = True
        self._log.event(
            lamp.cfg.id,
            "on",
            "on",
            "system",
            f"{BULB_BLOWN}: {lamp.cfg.name} drew {readings.amps:.2f} A while on, under its "
            f"{lamp.cfg.min_amps:g} A (session {session.id})",
            self._clock.wall(),
        )
        return True

    @sounding
    def link_lost(self, reason: str, since: float | None) -> list[str]:
        """S6: the firmware link is lost; returns the ids latched ([] when every lamp was off).

        Latches every lamp that was on, or being started, at any moment since `since` (when
        the firmware was last heard, monotonic): what was on while its second channel was
        unverified, whether the link thread, the scheduler or a Stop took this lock first.
        With every lamp off meanwhile nothing latches: starts are refused while the link is
        down (no ARM, no start, S7) and work again once it is back, with no reset.
        """
        self._all_off()
        with self._cond:
            targets = [
                l
                for l in self._lamps
                if l.state is LampState.ON
                or l.starting
                or (since is not None and l.last_end is not None and l.last_end > since)
            ]
            if not targets:
                log.warning("%s: no lamp was on, nothing latched", reason)
                return []
            return self._latch(reason, targets, who="system")

    def shutdown(self, why: str) -> None:
        """Service stopping (S1): relays off, running sessions end `interrupted`. Idempotent."""
        self._all_off()
        with self._cond:
            self._stopping = True
            self._cut_all("interrupted", "system", why, latch=True)
            self._cond.notify_all()

    def reset_fault(self, lamp_id: str, user: str) -> LampView:
        lamp = self._get(lamp_id)
        self._prepare_reset([lamp])
        with self._cond:
            if lamp.state is not LampState.FAULT:
                raise Refused(f"{lamp.cfg.name} has no latched fault to clear.", "no-fault")
            why = self._reset_blocked([lamp])
            if why:
                raise Refused(f"{lamp.cfg.name}'s fault cannot be cleared yet: {why}.", "fault-persists")
            self._clear_fault(lamp, user)
            return self._view(lamp, self._clock.monotonic())

    def latched(self) -> dict[str, str]:
        """{lamp id: fault reason} of every lamp latched now, in config order."""
        with self._cond:
            return {lamp.cfg.id: lamp.fault_reason or "" for lamp in self._lamps if lamp.state is LampState.FAULT}

    def check_reset_all(self, expected: Mapping[str, str] | None = None) -> dict[str, str]:
        """The latches `reset_all` would clear now, or its Refused: none latched, not the ones
        `expected` (what the admin was shown: {lamp id: reason}), or a cause that persists."""
        with self._cond:
            latched = self.latched()
            if not latched:
                raise Refused("No lamp has a latched fault to clear.", "no-fault")
            if expected is not None and dict(expected) != latched:
                # The admin confirmed a list; a lamp latched (or reset) since is not part of that confirmation.
                raise Refused(
                    "The latched faults have changed since they were listed; look at the list again before resetting.",
                    "faults-changed",
                )
            why = self._reset_blocked([self._by_id[lamp_id] for lamp_id in latched])
            if why:
                raise Refused(f"No fault can be cleared yet: {why}.", "fault-persists")
            return latched

    def reset_all(self, user: str, expected: Mapping[str, str] | None = None) -> list[LampView]:
        """Clear every latched fault at once, each recorded as `reset_fault` records it; all or none.

        The same rule as one reset (`_reset_blocked`): while the E-stop is still pressed, or
        another cause persists, nothing is cleared. Returns the views of the lamps cleared.
        """
        self._prepare_reset([lamp for lamp in self._lamps if lamp.state is LampState.FAULT])
        with self._cond:
            ids = self.check_reset_all(expected)
            for lamp_id in ids:
                self._clear_fault(self._by_id[lamp_id], user)
            now = self._clock.monotonic()
            return [self._view(self._by_id[lamp_id], now) for lamp_id in ids]

    def add_listener(self, fn: Callable[[LampView], None]) -> None:
        """fn(view) after every state change, on its own thread, never under this lock."""
        self.listeners.add(fn)

    def add_reset_blocker(self, blocker: Callable[[], str | None]) -> None:
        """blocker() returns why a fault may not be cleared yet, or None."""
        self._reset_blockers.append(blocker)

    def add_lamp_reset_blocker(self, blocker: Callable[[int], str | None], prepare: Callable[[int], None]) -> None:
        """blocker(index): why that lamp's latch may not be cleared yet, or None (called under the lock).
        prepare(index) runs first, outside the lock, and may do I/O (clearing the firmware's trip)."""
        self._lamp_blockers.append(blocker)
        self._reset_preparers.append(prepare)

    # ---- internals ---------------------------------------------------------------------
    def _reset_blocked(self, lamps: Sequence[Lamp]) -> str | None:
        """Why these lamps' latches may not be cleared now (S5, S6, S23, S25), or None: the one rule of every reset."""
        for blocker in [
            lambda: "the E-stop button is still pressed" if self._hw.estop_pressed else None,
            *self._reset_blockers,
        ]:
            why = blocker()
            if why:
                return why
        for lamp in lamps:
            if self._hw.tilted(lamp.index):
                return f"the lamp stand of {lamp.cfg.name} is still tilted"
            for lamp_blocker in self._lamp_blockers:
                why = lamp_blocker(lamp.index)
                if why:
                    return why
        return None

    def _prepare_reset(self, lamps: Sequence[Lamp]) -> None:
        """Before a reset looks (outside the lock: this may wait for the firmware): clear what can be cleared."""
        for lamp in lamps:
            for prepare in self._reset_preparers:
                try:
                    prepare(lamp.index)
                except Exception:  # the blocker then says why the latch stays
                    log.exception("preparing the reset of %s failed", lamp.cfg.id)

    def _clear_fault(self, lamp: Lamp, user: str) -> None:
        """Unlatch one lamp (the lock held): off and ready, the event and the latch's deletion recorded (S17)."""
        cleared = lamp.fault_reason
        lamp.fault_reason = None
        lamp.feedback_bad_since = None
        self._set_state(lamp, LampState.OFF, user, f"fault cleared ({cleared})")
        self._log.fault_cleared(lamp.cfg.id)

    def _relay_off(self, lamp: Lamp) -> None:
        try:
            self._hw.set(lamp.index, False)
        except Exception:  # _end retries under the lock and latches the fault
            log.exception("relay of %s could not be switched off", lamp.cfg.id)

    def _all_off(self) -> None:
        try:
            self._hw.all_off()
        except Exception:  # still end the sessions; each _end retries its own relay
            log.exception("all_off failed")

    def _running(self, lamp: Lamp, what: str) -> Session:
        if lamp.state is not LampState.ON or lamp.session is None:
            raise Refused(
                f"{lamp.cfg.name} is not running ({lamp.state.value}), so it cannot be {what}.", "not-running"
            )
        return lamp.session

    def _cut_all(self, end_reason: str, who: str, why: str, *, latch: bool = False) -> float:
        """End each running session (relays already off) and cancel every start in flight."""
        now = self._clock.monotonic()
        for lamp in self._lamps:
            lamp.epoch += 1
            if lamp.state is LampState.ON and now >= lamp.running.deadline:
                # Its time was up before this came (a late scheduler, a frozen process): it
                # ended as the scheduler would have ended it, whichever got the lock first.
                self._end(lamp, "completed", "system", "time up", now, latch=latch)
            elif lamp.state is LampState.ON:
                self._end(lamp, end_reason, who, why, now, latch=latch)
        return now

    def _latch_own(self, lamp: Lamp, end_reason: str, reason: str, who: str, cut_at: float | None = None) -> list[str]:
        """Latch one lamp for a cause of its own (S23, S25), its relay already off: its session ends
        `end_reason` (at `cut_at` when the firmware cut it earlier), its start in flight is cancelled,
        and the other lamps carry on."""
        now = self._clock.monotonic()
        lamp.epoch += 1
        if lamp.state is LampState.ON:
            self._end(lamp, end_reason, who, reason, now, latch=True, cut_at=cut_at)
        if lamp.state is LampState.FAULT:
            log.warning("%s: %s was latched already (%s)", reason, lamp.cfg.id, lamp.fault_reason)
            return []
        self._mark_latched(lamp, reason, who)
        log.error("fault latched on %s: %s", lamp.cfg.id, reason)
        return [lamp.cfg.id]

    def _mark_latched(self, lamp: Lamp, reason: str, who: str) -> None:
        lamp.fault_reason = reason
        self._set_state(lamp, LampState.FAULT, who, reason)
        self._log.fault_latched(lamp.cfg.id, reason, self._clock.wall())
        self._alerts.add(lamp.index, "fault")

    def _latch(self, reason: str, targets: list[Lamp], who: str) -> list[str]:
        """End every session and start in flight, latch each target not latched already; the ids latched."""
        self._cut_all("fault", who, reason, latch=True)
        latched = []
        for lamp in targets:
            if lamp.state is not LampState.FAULT:
                self._mark_latched(lamp, reason, who)
                latched.append(lamp.cfg.id)
        if latched:
            log.error("fault latched on %s: %s", ", ".join(latched), reason)
        else:  # say what happened: the log is read after an incident
            log.warning(
                "%s: nothing latched (%s)",
                reason,
                "already latched: " + ", ".join(l.cfg.id for l in targets) if targets else "no lamp concerned",
            )
        return latched

    def _end(
        self, lamp: Lamp, reason: str, who: str, why: str, now: float, latch: bool = False, cut_at: float | None = None
    ) -> None:
        """End the running session: relay OFF first, then the records (S13: monotonic durations).

        `cut_at`: when the firmware cut the lamp on a guard of its own (S23), where the session ended."""
        session = lamp.running
        relay_error = None
        try:
            self._hw.set(lamp.index, False)
        except Exception as exc:  # the record must still be written; the fault follows
            relay_error = exc
            self._all_off()
        if cut_at is not None:
            end = min(now, max(cut_at, session.started_mono))
        else:
            reason, end = self._firmware_cut(lamp, session, reason, now)
        self._release_backstop(lamp)
        actual = max(0.0, end - session.started_mono)
        self._log.session_ended(session.id, session.started_wall + timedelta(seconds=actual), actual, reason)
        lamp.last_end, lamp.chain_used_s, lamp.chain_last_id = end, session.prior_s + actual, session.id
        lamp.last_end_reason, lamp.last_end_why = reason, why
        if latch or lamp.cfg.cooldown_s <= 0:
            nxt = LampState.OFF
        else:
            nxt = LampState.COOLDOWN
            lamp.cooldown_until = now + lamp.cfg.cooldown_s
        lamp.session = None
        self._set_state(lamp, nxt, who, f"{reason}: {why}")
        self._alerts.ended(lamp.index, reason)
        if relay_error is not None:
            self._latch(f"relay of {lamp.cfg.name} could not be switched off: {relay_error}", [lamp], "system")

    def _firmware_cut(self, lamp: Lamp, session: Session, reason: str, now: float) -> tuple[str, float]:
        """S13: if the firmware surely cut the lamp before now, the session ended there, `firmware`."""
        if self._backstop is None:
            return reason, now
        try:
            cut = self._backstop.cut_at(lamp.index, session.started_mono)
        except Exception:
            log.exception("backstop cut_at failed")
            return reason, now
        if cut is not None and cut < now:
            return "firmware", max(cut, session.started_mono)
        return reason, now

    def _release_backstop(self, lamp: Lamp) -> None:
        if self._backstop is not None:
            try:
                self._backstop.release(lamp.index)
            except Exception:
                log.exception("backstop release failed")

    def _set_state(self, lamp: Lamp, new: LampState, who: str, why: str) -> None:
        old = lamp.state
        lamp.state = new
        self._log.event(lamp.cfg.id, old.value, new.value, who, why, self._clock.wall())
        if self.listeners:
            self.listeners.publish(self._view(lamp, self._clock.monotonic()))

    # ---- deadlines and the scheduler ---------------------------------------------------
    @sounding
    def tick(self, now: float | None = None) -> float | None:
        """Act on every due deadline; return the next time something is due (monotonic)."""
        with self._cond:
            now = self._clock.monotonic() if now is None else now
            self.last_tick = now
            nxt: float | None = None
            for lamp in self._lamps:
                if lamp.state is LampState.ON and now >= lamp.running.deadline:
                    self._end(lamp, "completed", "system", "time up", now)
                if lamp.state is LampState.COOLDOWN and now >= lamp.cooldown_until:
                    self._set_state(lamp, LampState.OFF, "system", "cooldown over")
                if lamp.state is LampState.ON:
                    # S4/S13: the monotonic time run so far, kept in memory; the writer saves the newest.
                    self._log.session_progress(lamp.running.id, now - lamp.running.started_mono)
                    self._alerts.warn_if_due(lamp.index, lamp.running, now)
                    nxt = next_due(lamp.running) if nxt is None else min(nxt, next_due(lamp.running))
                elif lamp.state is LampState.COOLDOWN:
                    nxt = lamp.cooldown_until if nxt is None else min(nxt, lamp.cooldown_until)
                if self._hw.tilted(lamp.index) and lamp.state is not LampState.FAULT:
                    # S25: an opening the input's callback missed (a bounce, a switch open at start).
                    self._relay_off(lamp)
                    self._s25_latch_tilted(lamp)
                poll, fault = lamp.check_feedback(self._hw.feedback_on(lamp.index), now)
                if fault:
                    self._all_off()
                    self._latch(f"{lamp.cfg.name} is {fault}", [lamp], "system")
                if poll:
                    nxt = min(nxt, now + FEEDBACK_POLL_S) if nxt is not None else now + FEEDBACK_POLL_S
            return nxt

    def start_scheduler(self) -> threading.Thread:
        """Start the one thread that waits on the lock's condition for the earliest deadline and runs tick()."""
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
        """The scheduler's loop: tick() at each deadline, and a fault latched if it dies (S6)."""
        try:
            with self._cond:
                while not self._stopping:
                    nxt = self.tick()
                    if self._alerts.sound_unlocked(self._cond):  # S10: the lock is free meanwhile; look again
                        continue
                    now = self._clock.monotonic()
                    limit = now + MAX_IDLE_S
                    self._clock.wait(self._cond, max(0.0, min(nxt or limit, limit) - now))
        except BaseException as exc:
            # S6: a dead scheduler could miss a deadline, so nothing may stay on.
            self.fault(f"scheduler died: {type(exc).__name__}: {exc}")
            self._alerts.sound()  # this thread's own fault(): the decorator leaves sounding to it
            raise
