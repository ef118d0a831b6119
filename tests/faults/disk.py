"""A small loop-mounted ext4 filesystem for the database, to fill, freeze, make read-only or lock."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

SIZE_MB = 24


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


class LoopDisk:
    """An ext4 image mounted with -o loop (the loop device goes with the mount)."""

    def __init__(self, tmp_path: Path):
        self.image = tmp_path / "disk.img"
        self.mount = tmp_path / "disk"
        self.mounted = False
        self.frozen = False

    def __enter__(self) -> LoopDisk:
        if os.geteuid() != 0:
            pytest.skip("mounting a loop filesystem needs root")
        for tool in ("mkfs.ext4", "mount", "umount", "fsfreeze", "chattr"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} is not installed")
        self.mount.mkdir()
        with open(self.image, "wb") as fh:
            fh.truncate(SIZE_MB << 20)
        # 4 KiB blocks, as mkfs gives an SD card: on a filesystem this small it would choose 1 KiB,
        # and SQLite, which allocates its mapped -shm file by writing one byte per 4 KiB page, would
        # leave holes there that a full disk turns into SIGBUS (a fault of the rig, not of a Pi).
        made = _run("mkfs.ext4", "-q", "-F", "-b", "4096", str(self.image))
        if made.returncode != 0:
            pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
        mounted = _run("mount", "-o", "loop", str(self.image), str(self.mount))
        if mounted.returncode != 0:
            pytest.skip(f"this machine refuses a loop mount ({mounted.stderr.strip()})")
        self.mounted = True
        return self

    def __exit__(self, *exc) -> None:
        self.thaw()
        self.writable()
        if self.mounted:
            if _run("umount", str(self.mount)).returncode != 0:
                _run("umount", "-l", str(self.mount))
            self.mounted = False

    @property
    def database(self) -> Path:
        return self.mount / "lampctl.db"

    # ---- the faults ----------------------------------------------------------------------
    def fill(self) -> None:
        """Every free block taken by one file (the database cannot grow, its WAL cannot append).

        The WAL is first checkpointed and cut to nothing: a WAL that has grown before is
        rewritten from its start after each checkpoint, in blocks it already owns, so a full
        disk could go unnoticed for a thousand commits. Cut, its next commits must take new
        blocks, and the first that finds none fails.
        """
        self.truncate_wal()
        with open(self.mount / "filler", "wb") as fh:
            chunk = b"\0" * (1 << 20)
            try:
                while True:
                    fh.write(chunk)
                    fh.flush()
            except OSError:
                pass
        small = 1 << 12
        with open(self.mount / "filler2", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * small)
            except OSError:
                pass

    def truncate_wal(self, attempts: int = 50) -> None:
        """PRAGMA wal_checkpoint(TRUNCATE), retried while the service's writers keep it busy."""
        if not self.database.exists():
            return
        conn = sqlite3.connect(self.database, timeout=5, isolation_level=None)
        try:
            for _ in range(attempts):
                busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return
        finally:
            conn.close()

    def unfill(self) -> None:
        for name in ("filler", "filler2"):
            (self.mount / name).unlink(missing_ok=True)

    def freeze(self) -> None:
        """fsfreeze: every write blocks until thawed, as on a hung SD card or NFS server."""
        done = _run("fsfreeze", "-f", str(self.mount))
        if done.returncode != 0:
            pytest.skip(f"fsfreeze refused: {done.stderr.strip()}")
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            _run("fsfreeze", "-u", str(self.mount))
            self.frozen = False

    def read_only(self) -> None:
        """The database, its WAL and its directory made immutable: every write fails (EPERM).

        A true read-only remount is refused while the service holds files open for writing
        (EBUSY), and SQLite's -shm file is mapped: making it unwritable kills the process
        by SIGBUS (tested on its own), so it is left writable here.
        """
        names = [str(self.database), str(self.database) + "-wal", str(self.mount)]
        done = _run("chattr", "+i", *[n for n in names if os.path.exists(n)])
        if done.returncode != 0:
            pytest.skip(f"chattr +i refused: {done.stderr.strip()}")

    def shared_memory_unwritable(self) -> None:
        """Everything read-only, SQLite's mapped -shm file included (a filesystem remounted
        read-only after an I/O error leaves a mapping that faults the same way): SIGBUS."""
        self.read_only()
        shm = str(self.database) + "-shm"
        _run("chattr", "+i", shm)
        # Written back, its pages are clean and write-protected: SQLite's next write to the
        # mapping faults in the kernel, which cannot make an immutable page writable.
        fd = os.open(shm, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def writable(self) -> None:
        if self.mounted:
            for name in (str(self.database), str(self.database) + "-wal", str(self.database) + "-shm", str(self.mount)):
                if os.path.exists(name):
                    _run("chattr", "-i", name)


class DatabaseLock:
    """Another process's exclusive transaction on the database: the writer's BEGIN waits, then fails busy."""

    def __init__(self, database: Path):
        self.conn = sqlite3.connect(database, timeout=30, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()
