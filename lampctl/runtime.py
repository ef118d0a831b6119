"""Files the service keeps beside its database: the CLI's token, its address, the cookie key, the one-service lock (S16)."""
from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

# The built-in admin account the local command line acts as; it has no PIN.
CLI_USER = "cli"
CLI_TOKEN_FILE = "cli.token"
# Where the running service really listens (service.bind may say port 0, or a demo another port).
ADDRESS_FILE = "service.address"
LOCK_SUFFIX = ".lock"


class AlreadyRunning(RuntimeError):
    """Another `lampctl serve` holds this database (S16)."""


def write_secret_file(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600 from creation, no window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def cli_token_path(database: Path) -> Path:
    return Path(database).parent / CLI_TOKEN_FILE


def address_path(database: Path) -> Path:
    return Path(database).parent / ADDRESS_FILE


def _started(pid: int) -> str | None:
    """When process pid started (clock ticks since boot, from /proc), or None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    # A pid is reused after its process ends: the start time tells the two apart.
    return started is None or _started(pid) in (None, started)


def write_address(database: Path, host: str, port: int) -> None:
    """Record where this process serves, for the CLI (mode 0600, like cli.token)."""
    pid = os.getpid()
    write_secret_file(address_path(database), json.dumps(
        {"pid": pid, "started": _started(pid), "host": host, "port": port}) + "\n")


def remove_address(database: Path) -> None:
    """Remove the address file if it is this process's own (a clean exit); idempotent."""
    path = address_path(database)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def read_address(database: Path) -> tuple[str, int] | None:
    """(host, port) of the service running on this database, or None.

    None when there is no file, it cannot be read or parsed, or the process that wrote it
    has ended (killed -9, power loss) or its pid now belongs to another process: a stale
    file is never trusted.
    """
    try:
        data = json.loads(address_path(database).read_text())
        pid, started, host, port = data["pid"], data.get("started"), data["host"], data["port"]
    except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError):
        return None
    if (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(host, str) or not host
            or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536
            or not (started is None or isinstance(started, str))):
        return None
    return (host, port) if _alive(pid, started) else None


def lock_path(database: Path) -> Path:
    database = Path(database)
    return database.with_name(database.name + LOCK_SUFFIX)


class InstanceLock:
    """An fcntl lock on `<database>.lock`, held for the life of the service (S16).

    Taken before the relays, the records, the tokens or the serial port are touched,
    so a second service on the same database leaves the first one's lamps and files
    alone. The kernel drops the lock when the process dies, even by kill -9, so a
    crash never leaves a stale lock behind. The file holds the owner's pid, for the message.
    """

    def __init__(self, database: Path):
        self.path = lock_path(database)
        self._fd: int | None = None

    def acquire(self) -> InstanceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            who = f" (pid {owner})" if owner.isdigit() else ""
            raise AlreadyRunning(f"another lampctl serve{who} is already using {self.path.with_suffix('')}; "
                                 f"stop it first (one service per database)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Idempotent. The file stays: removing it would race a service starting now."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
