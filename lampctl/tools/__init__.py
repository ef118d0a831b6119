"""Maintenance tools: backup and restore, doctor, firmware check and flash.

Each is a library the command line (lampctl.cli.tools) calls; a tool that cannot go on raises
ToolFailed with one sentence, which the command line prints before it exits 1.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager

from lampctl import config as config_mod


class ToolFailed(Exception):
    """A maintenance step refused or failed at run time: str() is the one sentence a user reads."""


def service_answers(cfg: config_mod.Config, timeout: float = 0.5) -> bool:
    """Whether something accepts connections on the service's port (a running `lampctl serve`)."""
    host = cfg.service.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, cfg.service.port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def service_stopped(cfg: config_mod.Config, what: str):
    """Hold the service's own S16 lock while `what` runs, so no `lampctl serve` uses the database
    or the board meanwhile (nor starts); refuse if one is running (its lock, or its port answering)."""
    from lampctl.platform.runtime import AlreadyRunning, InstanceLock

    advice = f"stop it before {what} (sudo systemctl stop lampctl), then start it again"
    try:
        lock = InstanceLock(cfg.service.database).acquire()
    except AlreadyRunning as exc:
        raise ToolFailed(f"{exc}: {advice}") from None
    except OSError as exc:
        raise ToolFailed(f"cannot take the service's lock beside {cfg.service.database}: {exc.strerror}") from None
    try:
        if service_answers(cfg):
            raise ToolFailed(f"the service answers on port {cfg.service.port}: {advice}")
        yield
    finally:
        lock.release()
