"""Files the service keeps beside its database: the CLI's token, its address, the cookie key, the one-service lock (S16)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from pathlib import Path

# The built-in admin account the local command line acts as; it has no PIN.
CLI_USER = "cli"
CLI_TOKEN_FILE = "cli.token"
# Where the running service really listens (service.bind may say port 0, or a demo another port).
ADDRESS_FILE = "service.address"
LOCK_SUFFIX = ".lock"


class DamagedFile(RuntimeError):
    """A file lampctl keeps beside the database cannot be used; str() says which and what to do."""


class AlreadyRunning(RuntimeError):
    """Another `lampctl serve` holds this database (S16)."""


PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(folder: Path) -> None:
    """Create folder (and its parents) as 0700 whatever the umask; an existing folder is left as it is.

    The files in it are private on their own (private_file), so a database put in /tmp or a
    home directory never has that folder's mode changed under it.
    """
    folder = Path(folder)
    if folder.is_dir():
        return
    private_dir(folder.parent)
    try:
        folder.mkdir(mode=PRIVATE_DIR)
    except FileExistsError:
        return  # made meanwhile by another process, or a file: the caller's open says which
    os.chmod(folder, PRIVATE_DIR)  # mkdir's mode passes through the umask; 000 would leave 0777


def private_file(path: Path) -> None:
    """Make path exist with mode 0600 whatever the umask; an existing file of ours loses group and other access.

    A database created this way before SQLite opens it gives its -wal and -shm files the
    same mode (SQLite copies the database's permissions onto them). An existing file is
    changed by its path only: opening and closing a database SQLite holds open in this
    process would drop SQLite's POSIX locks on it.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        private_if_present(path)
        return
    except OSError:
        return  # a missing or read-only directory: the caller's open reports it in its own words
    os.close(fd)


def private_if_present(*paths: Path) -> None:
    """Take group and other access from those of paths that are files (an older lampctl made them 0644)."""
    for path in paths:
        try:
            mode = os.stat(path).st_mode
            if stat.S_ISREG(mode) and mode & 0o077:
                os.chmod(path, mode & PRIVATE_FILE)
        except OSError:
            pass  # gone, or another user's file (read by a CLI as that user): not ours to change


def write_secret_file(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600 from creation, no window)."""
    private_dir(path.parent)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), PRIVATE_FILE)  # a .tmp left by a crash keeps its old mode otherwise
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
    fields = stat[stat.rfind(")") + 2 :].split()
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
    write_secret_file(
        address_path(database), json.dumps({"pid": pid, "started": _started(pid), "host": host, "port": port}) + "\n"
    )


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
    if (
        not isinstance(pid, int)
        or isinstance(pid, bool)
        or pid <= 0
        or not isinstance(host, str)
        or not host
        or not isinstance(port, int)
        or isinstance(port, bool)
        or not 0 < port < 65536
        or not (started is None or isinstance(started, str))
    ):
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
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            who = f" (pid {owner})" if owner.isdigit() else ""
            raise AlreadyRunning(
                f"another lampctl serve{who} is already using {self.path.with_suffix('')}; "
                f"stop it first (one service per database)"
            ) from None
        private_if_present(self.path)  # a lock file an older lampctl left 0644
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Idempotent. The file stays: removing it would race a service starting now."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
