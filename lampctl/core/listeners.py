"""Hands lamp views to listeners (the MQTT side) from their own thread, outside the controller's lock."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lampctl.core.lamp import LampView

log = logging.getLogger(__name__)


class Listeners:
    """A FIFO of lamp views, emptied by one daemon thread that calls each listener in turn.

    `publish` never blocks (an unbounded SimpleQueue), so the controller can call it under its
    lock; the listeners run on the dispatch thread, never holding that lock, in change order.
    A listener that raises is logged and the others still run.
    """

    def __init__(self) -> None:
        self._fns: list[Callable[[LampView], None]] = []
        # Views, drain()'s events, and None from close().
        self._queue: queue.SimpleQueue[LampView | threading.Event | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def __bool__(self) -> bool:
        return bool(self._fns)

    def add(self, fn: Callable[[LampView], None]) -> None:
        self._fns.append(fn)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lamp-listeners", daemon=True)
            self._thread.start()

    def publish(self, view: LampView) -> None:
        if self._fns:
            self._queue.put(view)

    def close(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def drain(self, timeout: float = 2.0) -> None:
        """Wait until every view published so far has been handed out (tests)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            for fn in list(self._fns):
                try:
                    fn(item)
                except Exception:
                    log.exception("a lamp listener failed; the lamps are not affected")
