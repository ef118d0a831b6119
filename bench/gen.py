"""Generates a clinic's usage log: 10 lamps over 10 years of realistic days, about a million sessions.

The database is written at schema version 3 (the last before the log's indexes) and cached
under var/bench/, keyed by its size; each run copies it and lets the lampctl under test
migrate the copy, so the same data serves the code before and after a schema change.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lampctl.storage.db import MIGRATIONS, _statements, iso, open_database

BASE_VERSION = 3
LAMPS = [f"room{n}" for n in range(1, 11)]
YEARS = 10
# Sessions per lamp on a working day at full scale: 10 lamps x ~3,100 days x 32 = ~1M.
FULL_PER_DAY = 32
PRESETS_S = (600, 900, 1200, 1800)
# How sessions end, as a clinic's log shows it: most run out, some are stopped early.
REASONS = (
    ("completed", 0.86),
    ("stopped", 0.12),
    ("interrupted", 0.008),
    ("firmware", 0.006),
    ("fault", 0.004),
    ("estop", 0.002),
)
BULB_LIFE_S = 2000 * 3600
STAFF = [
    "ann",
    "bob",
    "carla",
    "dev",
    "eve",
    "farid",
    "gita",
    "hugo",
    "ines",
    "jon",
    "kim",
    "lea",
    "-mo",
    "=nils",
]  # two names a spreadsheet would run as formulas


def _reason(rng: random.Random) -> str:
    x = rng.random()
    for reason, share in REASONS:
        if x < share:
            return reason
        x -= share
    return "completed"


def _staff_on(day_index: int, days: int) -> list[str]:
    """About five practitioners at a time; staff come and go over the decade."""
    first = day_index * (len(STAFF) - 4) // days
    return STAFF[first : first + 5]


def _day_sessions(rng, day, day_index, days, per_day, burnt):
    """The sessions of one working day on every lamp, in start order, and any bulb replacements."""
    rows, bulbs = [], []
    staff = _staff_on(day_index, days)
    opening = datetime(day.year, day.month, day.day, 8, tzinfo=UTC)
    for lamp in LAMPS:
        at = opening + timedelta(seconds=rng.randrange(0, 1800))
        for _ in range(rng.randint(per_day * 3 // 4, per_day * 5 // 4) if per_day > 1 else 1):
            planned = rng.choice(PRESETS_S)
            reason = _reason(rng)
            actual = planned if reason == "completed" else round(rng.uniform(5, planned), 3)
            ended = at + timedelta(seconds=actual)
            rows.append((lamp, rng.choice(staff), iso(at), iso(ended), float(planned), float(actual), reason))
            burnt[lamp] += actual
            if burnt[lamp] >= BULB_LIFE_S:
                bulbs.append((lamp, iso(ended + timedelta(minutes=5)), "admin", burnt[lamp] / 3600))
                burnt[lamp] = 0.0
            at = ended + timedelta(seconds=rng.randrange(60, 300))
    rows.sort(key=lambda r: r[2])
    return rows, bulbs


def _base_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")
    for number in range(BASE_VERSION):
        for statement in _statements(MIGRATIONS[number]):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {BASE_VERSION}")
    conn.execute("COMMIT")


def generate(path: Path, sessions: int, seed: int = 12) -> int:
    """Write about `sessions` sessions to a new database at path; returns how many were written."""
    rng = random.Random(seed)
    start = datetime(2016, 1, 4, tzinfo=UTC)
    days = [start + timedelta(days=n) for n in range(YEARS * 365) if (start + timedelta(days=n)).weekday() < 6]
    per_day = max(1, round(sessions / (len(days) * len(LAMPS))))
    if per_day == 1:
        days = days[-max(1, sessions // len(LAMPS)) :]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        _base_schema(conn)
        conn.execute("BEGIN")
        burnt = dict.fromkeys(LAMPS, 0.0)
        total = 0
        for index, day in enumerate(days):
            rows, bulbs = _day_sessions(rng, day, index, len(days), per_day, burnt)
            conn.executemany(
                "INSERT INTO sessions (lamp_id, user, started_at, ended_at, planned_s, actual_s, "
                "end_reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany("INSERT INTO bulb_replacements (lamp_id, at, who, hours) VALUES (?, ?, ?, ?)", bulbs)
            total += len(rows)
        # One session left open by a power cut, for start-up to close (S4).
        conn.execute(
            "INSERT INTO sessions (lamp_id, user, started_at, planned_s) VALUES ('room1', 'ann', ?, 600)",
            (iso(days[-1] + timedelta(hours=19)),),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return total + 1


def cached(root: Path, sessions: int) -> Path:
    """The base database of this size, generated on first use."""
    path = root / "var" / "bench" / f"sessions-{sessions}-v{BASE_VERSION}.db"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two runs at once each write their own
        generate(tmp, sessions)
        tmp.rename(path)
    return path


def working_copy(base: Path, dest: Path) -> float:
    """Copy the base database to dest and migrate it with the lampctl under test; returns the migration's seconds."""
    shutil.copyfile(base, dest)
    t0 = time.perf_counter()
    open_database(dest)
    return time.perf_counter() - t0
