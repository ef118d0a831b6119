"""The firmware second channel as the controller sees it (S7): arm before the relay, OFF after, link loss latches a fault."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from firmware_bridge import protocol
from firmware_bridge.bridge import FirmwareLink
from firmware_bridge.errors import FirmwareError, FirmwareTimeout
from lampctl.core import sensors
from lampctl.core.errors import Refused, Unavailable
from lampctl.core.lamp import Sensed

log = logging.getLogger(__name__)


class FirmwareBackstop:
    """Adapts a FirmwareLink to the controller's Backstop protocol.

    Every command goes through one worker thread in order, so an OFF queued when a
    session ends can never reach the firmware after the ARM of the next session on
    that lamp. arm() waits for its turn and the reply; release() returns at once,
    because it is called while the controller holds its lock. An arm() that gives
    up withdraws its ARM if it is still queued, else the caller's release() queues
    an OFF after the ARM on the wire: either way the firmware's last word for that
    lamp is OFF (S12).

    With analog guards (S23) it also hands the firmware's readings to the controller as
    each SENSE heartbeat brings them, a trip the moment it is first seen, and clears a
    trip over the link (in the same queue) before an admin's reset looks at it.
    """

    def __init__(
        self,
        link: FirmwareLink,
        grace_s: float,
        usage_log=None,
        *,
        clock=time.monotonic,
        arm_wait_s: float | None = None,
        lamps=(),
    ):
        self.grace_s = grace_s
        self._link = link
        link.on_link_change = self._link_changed
        # S23: the guard channels, in the firmware's order; each one's latest trip side, and
        # whether that trip has been handed to the controller.
        self._lamps = list(lamps)
        self._channels = sensors.channels(self._lamps)
        self._trips = [0] * len(self._channels)
        self._told = [False] * len(self._channels)
        if self._channels:
            link.on_guard = self._sensed
        self._log = usage_log
        self._clock = clock
        self._arm_wait_s = arm_wait_s
        self._controller = None
        self._jobs: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        # index -> monotonic time by which the firmware has surely cut that lamp by its own
        # timer, from the last ARM it confirmed (S13); dropped by the OFF that follows.
        self._armed: dict[int, float] = {}
        self._worker = threading.Thread(target=self._run, name="firmware-commands", daemon=True)

    @classmethod
    def from_config(cls, fw_cfg, lamp_count: int, heartbeat_s: float, usage_log=None, url: str | None = None, lamps=()):
        """`lamps`: the lamps' configs, whose analog guards the board must have been flashed with (S23)."""
        link = FirmwareLink(
            url or fw_cfg.port,
            lamp_count,
            watchdog_s=fw_cfg.watchdog_s,
            heartbeat_s=heartbeat_s,
            reply_timeout_s=fw_cfg.reply_timeout_s,
            guards=sensors.guard_table(lamps),
        )
        return cls(link, fw_cfg.grace_s, usage_log, lamps=lamps)

    def attach(self, controller) -> None:
        self._controller = controller
        controller.add_reset_blocker(lambda: None if self._link.up else "the firmware link is still down")
        if self._channels:
            controller.add_lamp_reset_blocker(self._guard_blocks, self._clear_guard)

    def start(self, wait_s: float) -> bool:
        """Start the link and the command worker; wait up to wait_s for the link. Returns whether it is up."""
        self._worker.start()
        self._link.start()
        return self._link.wait_up(wait_s)

    def status(self) -> str:
        return "ok" if self._link.up else "lost"

    # ---- the controller's Backstop protocol ---------------------------------------------
    def arm(self, index: int, ms: int) -> None:
        job = _Job("arm", index, ms)
        if not self._run_and_wait(job):
            raise Unavailable("The safety microcontroller did not answer in time.", "firmware-unavailable")
        if job.error is not None:
            raise job.error

    def release(self, index: int) -> None:
        self._submit(_Job("off", index))

    def cut_at(self, index: int, since: float) -> float | None:
        """S13: when the firmware has surely cut lamp `index` by itself (monotonic), or None. Lock-free."""
        cuts = [c for c in (self._armed.get(index), self._link.silent_cut_at(since)) if c is not None]
        return min(cuts) if cuts else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(5)
        self._link.close()

    # ---- the analog guards (S23) ---------------------------------------------------------
    def _sensed(self, readings: list[protocol.Sense]) -> None:
        """A SENSE reply, on the link's thread: trips first (relay off, latch), then the readings."""
        controller = self._controller
        if controller is None or len(readings) != len(self._channels):
            return
        at = self._link.readings_at or self._clock()
        shown: dict[int, dict] = {}
        for i, (channel, reading) in enumerate(zip(self._channels, readings, strict=True)):
            lamp = self._lamps[channel.lamp]
            values = shown.setdefault(channel.lamp, {"temp_c": None, "amps": None, "guard": "ok"})
            if channel.kind == "thermistor":
                values["temp_c"] = sensors.thermistor_c(lamp, reading["raw"])
            else:
                values["amps"] = sensors.current_a(lamp, reading["raw"])
            self._trips[i] = reading["trip"]
            if not reading["trip"]:
                self._told[i] = False
                continue
            end_reason, reason = sensors.trip_words(lamp, channel, reading["trip"], reading["trip_raw"])
            values["guard"] = reason
            if not self._told[i]:
                self._told[i] = True
                log.error("firmware guard tripped on %s: %s", lamp.id, reason)
                controller.guard_tripped(channel.lamp, end_reason, reason, at - reading["trip_ago_ms"] / 1000)
        for index, values in shown.items():
            controller.sensed(index, Sensed(**values))

    def _guard_blocks(self, index: int) -> str | None:
        """Why lamp `index`'s latch may not be cleared: its guard is still tripped on the firmware."""
        for i, channel in enumerate(self._channels):
            if channel.lamp == index and self._trips[i]:
                return (
                    f"the firmware's guard of {self._lamps[index].name} is still tripped; it clears once its "
                    "reading is back in range"
                )
        return None

    def _clear_guard(self, index: int) -> None:
        """Before a reset (outside the controller's lock): ask the firmware to clear this lamp's trips."""
        if not any(channel.lamp == index and self._trips[i] for i, channel in enumerate(self._channels)):
            return
        job = _Job("clear", index)
        if not self._run_and_wait(job):
            return
        if job.error is not None:
            log.warning("firmware guard of lamp %d not cleared: %s", index, job.error)

    # ---- internals ---------------------------------------------------------------------
    def _run_and_wait(self, job) -> bool:
        """Queue a job whose caller waits for its reply; False (and not sent, if still queued) when none came."""
        self._submit(job)
        # The link's own reply timeout bounds this; the margin covers queued OFFs.
        wait_s = self._arm_wait_s if self._arm_wait_s is not None else self._link.reply_timeout_s * 4 + 1
        if job.done.wait(wait_s):
            return True
        with self._cond:
            job.abandoned = True  # not sent if still queued
        return False

    def _submit(self, job) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                if job.abandoned:
                    continue
            if job.kind == "arm":
                job.error = self._send_arm(job.index, job.ms)
                job.done.set()
            elif job.kind == "clear":
                try:
                    self._link.clear(job.index)
                except FirmwareError as exc:  # still out of range: the blocker says why the latch stays
                    job.error = exc
                else:
                    for i, channel in enumerate(self._channels):
                        if channel.lamp == job.index:
                            self._trips[i], self._told[i] = 0, False
                job.done.set()
            else:
                self._armed.pop(job.index, None)
                try:
                    self._link.off(job.index)
                except FirmwareError as exc:
                    # The Pi's relay is already off; the firmware's own deadline follows.
                    log.warning("firmware OFF for lamp %d not confirmed: %s", job.index, exc)

    def _send_arm(self, index: int, ms: int) -> Exception | None:
        """ARM on the wire; the refusal to hand to arm()'s caller, or None."""
        try:
            self._link.arm(index, ms)
        except FirmwareTimeout as exc:
            # It may have been obeyed all the same: the cut is then no sooner than this.
            self._armed[index] = max(self._armed.get(index, 0.0), self._clock() + ms / 1000)
            return Unavailable(f"the safety microcontroller did not answer ({exc})", "firmware-unavailable")
        except FirmwareError as exc:
            return Refused(f"the safety microcontroller refused it ({exc})", "firmware-refused")
        except Exception as exc:  # anything unexpected must still refuse the start
            return Unavailable(f"the firmware link failed ({exc})", "firmware-unavailable")
        self._armed[index] = self._clock() + ms / 1000
        return None

    def _link_changed(self, up: bool, reason: str) -> None:
        if up:
            log.info("firmware link up: %s", reason)
            if self._log is not None:
                self._log.event(None, None, None, "system", f"firmware link up: {reason}")
            return
        log.error("firmware link lost: %s", reason)
        if self._controller is not None:
            for index in sorted({channel.lamp for channel in self._channels}):
                self._controller.sensed(index, Sensed(guard="unknown"))  # no reading is better than a stale one
        latched: list[str] = []
        if self._controller is not None:
            # S6: a lamp on without its second channel must not stay on. Whatever was on since
            # the firmware was last heard latches, whichever thread got to the lamp first.
            latched = self._controller.link_lost(f"firmware link lost: {reason}", self._link.last_heard)
        if self._log is not None and not latched:
            self._log.event(
                None, None, None, "system", f"firmware link lost: {reason} No lamp was on: nothing latched."
            )


class _Job:
    """One command for the worker; an ARM carries its caller's wait and outcome."""

    __slots__ = ("kind", "index", "ms", "done", "error", "abandoned")

    def __init__(self, kind: str, index: int, ms: int | None = None):
        self.kind, self.index, self.ms = kind, index, ms
        self.done = threading.Event()
        self.error: Exception | None = None
        self.abandoned = False
