"""The firmware second channel as the controller sees it (S7): arm before the relay, OFF after, link loss latches a fault."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from firmware_bridge.bridge import FirmwareLink
from firmware_bridge.errors import FirmwareError, FirmwareTimeout
from lampctl.core.errors import Refused, Unavailable

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
    """

    def __init__(
        self,
        link: FirmwareLink,
        grace_s: float,
        usage_log=None,
        *,
        clock=time.monotonic,
        arm_wait_s: float | None = None,
    ):
        self.grace_s = grace_s
        self._link = link
        link.on_link_change = self._link_changed
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
    def from_config(cls, fw_cfg, lamp_count: int, heartbeat_s: float, usage_log=None, url: str | None = None):
        link = FirmwareLink(
            url or fw_cfg.port,
            lamp_count,
            watchdog_s=fw_cfg.watchdog_s,
            heartbeat_s=heartbeat_s,
            reply_timeout_s=fw_cfg.reply_timeout_s,
        )
        return cls(link, fw_cfg.grace_s, usage_log)

    def attach(self, controller) -> None:
        self._controller = controller
        controller.add_reset_blocker(lambda: None if self._link.up else "the firmware link is still down")

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
        self._submit(job)
        # The link's own reply timeout bounds this; the margin covers queued OFFs.
        wait_s = self._arm_wait_s if self._arm_wait_s is not None else self._link.reply_timeout_s * 4 + 1
        if not job.done.wait(wait_s):
            with self._cond:
                job.abandoned = True  # not sent if still queued
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

    # ---- internals ---------------------------------------------------------------------
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
