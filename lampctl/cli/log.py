"""`lampctl log`: date bounds from the command line, and the log as a table (local time or UTC); the CSV is lampctl.cli.store.write_log_csv."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from lampctl.storage.reports import duration_text, local_time

# The log's date bounds: wide enough for any record, narrow enough that no time zone shift
# can overflow Python's datetime (years 1-9999).
FIRST_DAY, LAST_DAY = "1970-01-01", "9998-12-31"
# Only the extended ISO-8601 forms: fromisoformat also takes 20261125 and 2026-W48-3, which
# are easy to mistype and would pass as something the user did not mean.
WHEN_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?", re.ASCII)


@dataclass(frozen=True)
class When:
    """A log bound from the command line: an aware datetime, and whether only a date was given."""

    moment: datetime
    date_only: bool

    def bound(self, *, upper: bool) -> str:
        """An ISO-8601 time in UTC with its offset; a date as an upper bound means the end of that day."""
        moment = self.moment + (timedelta(days=1, milliseconds=-1) if upper and self.date_only else timedelta())
        return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_when(text: str) -> When:
    """A date or time from the command line; ValueError with one sentence when it is not one."""
    try:
        if not WHEN_RE.fullmatch(text):
            raise ValueError
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a date or time such as 2026-03-01 or 2026-03-01T14:30") from None
    if not FIRST_DAY <= moment.date().isoformat() <= LAST_DAY:
        raise ValueError(f"{text!r} is outside the log's range, {FIRST_DAY} to {LAST_DAY}")
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the Pi's local time, as the web log shows
    return When(moment, date_only=len(text) == 10)


def zone_name(utc: bool) -> str:
    """The zone the table's times are in, for its header: "UTC" or e.g. "local, CET/CEST"."""
    return "UTC" if utc else "local, " + "/".join(dict.fromkeys(time.tzname))


def _utc_time(text: str) -> str:
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_table(rows, out, *, utc: bool) -> None:
    """Times to the second, local as on the web log unless utc; the header names the zone."""
    shown = _utc_time if utc else local_time
    started = f"started ({zone_name(utc)})"
    out.write(
        f"{'id':>5}  {'lamp':<10} {'user':<12} {started:<20} {'planned':>12} {'actual':>12}  {'end':<11} "
        f"{'continues':>9}  new patient\n"
    )
    for row in rows:
        actual = duration_text(row["actual_s"])
        continues = "" if row.get("continues") is None else str(row["continues"])
        declared = f"by {row.get('new_patient_by') or '?'}" if row.get("new_patient") else ""
        out.write(
            f"{row['id']:>5}  {row['lamp_id']:<10} {row['user']:<12} {shown(row['started_at']):<20} "
            f"{duration_text(row['planned_s']):>12} {actual:>12}  {row['end_reason'] or 'running':<11} "
            f"{continues:>9}  {declared}".rstrip()
            + "\n"
        )
