"""The scheduler thread of the controller: runs tick() at each deadline, and latches a fault if it dies (S6)."""
from __future__ import annotations

import threading

# The scheduler wakes at least this often so its liveness can be watched.
MAX_IDLE_S = 1.0


class SchedulerThread:
    """Mixed into SessionController: the one thread that waits on its condition for the earliest deadline.

    Uses the controller's _cond, _stopping, _clock, _alerts, tick() and fault().
    """

    _scheduler: threading.Thread | None = None

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
