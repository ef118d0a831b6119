"""Read-only aggregates for the admin pages and exports: usage per lamp and day, per practitioner, end reasons, bulb hours."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from lampctl.core.errors import fmt_s
from lampctl.storage.db import parse_bound, reading

# Share of a bulb's rated life after which the admin pages warn.
BULB_WARN_FRACTION = 0.9


def day_range(days: int, today: date | None = None) -> list[date]:
    """The last `days` local dates, oldest first, ending today."""
    today = today or date.today()
    return [today - timedelta(days=n) for n in range(days - 1, -1, -1)]


def minutes_per_lamp_per_day(path: Path, days: list[date]) -> dict[str, dict[date, float]]:
    """{lamp_id: {local date: minutes}}; a session counts on the local day it started."""
    start, end = parse_bound(days[0].isoformat()), parse_bound(days[-1].isoformat(), upper=True)
    out: dict[str, dict[date, float]] = {}
    with reading(path) as conn:
        rows = conn.execute(
            "SELECT lamp_id, date(started_at, 'localtime') AS day, sum(actual_s) AS s FROM sessions "
            "WHERE started_at >= ? AND started_at <= ? AND actual_s IS NOT NULL GROUP BY lamp_id, day",
            (start, end),
        )
        for row in rows:
            out.setdefault(row["lamp_id"], {})[date.fromisoformat(row["day"])] = row["s"] / 60
    return out


def per_practitioner(path: Path, start: str, end: str) -> list[dict]:
    """Sessions and minutes per user between two bounds (ISO dates or times), busiest first."""
    with reading(path) as conn:
        rows = conn.execute(
            "SELECT user, count(*) AS sessions, coalesce(sum(actual_s), 0) / 60.0 AS minutes FROM sessions "
            "WHERE started_at >= ? AND started_at <= ? GROUP BY user ORDER BY sessions DESC, user",
            (parse_bound(start), parse_bound(end, upper=True)),
        )
        return [dict(r) for r in rows]


def end_reasons(path: Path, start: str, end: str) -> list[dict]:
    """How sessions ended between two bounds; a session still running counts as 'running'."""
    with reading(path) as conn:
        rows = conn.execute(
            "SELECT coalesce(end_reason, 'running') AS reason, count(*) AS sessions FROM sessions "
            "WHERE started_at >= ? AND started_at <= ? GROUP BY reason ORDER BY sessions DESC, reason",
            (parse_bound(start), parse_bound(end, upper=True)),
        )
        return [dict(r) for r in rows]


def session_users(path: Path) -> list[str]:
    """Every name in the session log, removed users included (for the log filter)."""
    # A skip-scan of sessions_by_user: one index seek per name, not a pass over every session.
    with reading(path) as conn:
        return [
            r[0]
            for r in conn.execute(
                "WITH RECURSIVE names(name) AS (SELECT min(user) FROM sessions UNION ALL "
                "SELECT (SELECT min(user) FROM sessions WHERE user > name) FROM names WHERE name IS NOT NULL) "
                "SELECT name FROM names WHERE name IS NOT NULL"
            )
        ]


@dataclass(frozen=True)
class BulbHours:
    lamp_id: str
    name: str
    hours: float
    life_h: float
    replaced_at: str | None
    replaced_by: str | None

    @property
    def fraction(self) -> float:
        return self.hours / self.life_h if self.life_h else 0.0

    @property
    def status(self) -> str:
        """ "ok", "warn" (within 10 % of the rated life) or "over"."""
        if self.hours >= self.life_h:
            return "over"
        return "warn" if self.fraction >= BULB_WARN_FRACTION else "ok"


# What bulb_totals keeps, counted from the sessions: the definition its triggers are tested against.
BULB_SECONDS_SQL = (
    "SELECT coalesce(sum(actual_s), 0) FROM sessions WHERE lamp_id = ? AND started_at >= ? AND actual_s IS NOT NULL"
)


def bulb_hours(path: Path, lamps) -> list[BulbHours]:
    """Hours each lamp's current bulb has burnt: ended sessions started since its last replacement
    (BULB_SECONDS_SQL gives the same sum from the sessions themselves)."""
    out = []
    with reading(path) as conn:
        for lamp in lamps:
            last = conn.execute(
                "SELECT at, who FROM bulb_replacements WHERE lamp_id = ? ORDER BY at DESC, id DESC LIMIT 1", (lamp.id,)
            ).fetchone()
            # Kept as the sessions end (migration 9's triggers): one row, whatever the spread of sessions.
            total = conn.execute("SELECT seconds FROM bulb_totals WHERE lamp_id = ?", (lamp.id,)).fetchone()
            seconds = max(0.0, total[0]) if total else 0.0
            out.append(
                BulbHours(
                    lamp.id,
                    lamp.name,
                    seconds / 3600,
                    lamp.bulb_life_h,
                    last["at"] if last else None,
                    last["who"] if last else None,
                )
            )
    return out


def duration_text(seconds: float | None) -> str:
    """A duration as people read it everywhere, with its unit: "30 s", "4 min 57 s", "75 min" (whole seconds)."""
    if seconds is None:
        return ""
    return fmt_s(round(seconds))


def local_time(text: str | None) -> str:
    """A database timestamp (UTC) as the Pi's local time, to the second, for people to read."""
    if not text:
        return ""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")
