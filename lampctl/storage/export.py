"""The CSV exports' shape: the session columns, and the formula guard the node's and the fleet's exports share."""

from __future__ import annotations

# The last three came later and stay at the end, so a reader of older exports finds the first eight where they were.
SESSION_COLUMNS = [
    "id",
    "lamp_id",
    "user",
    "started_at",
    "ended_at",
    "planned_s",
    "actual_s",
    "end_reason",
    "continues",
    "new_patient",
    "new_patient_by",
]


# The first characters that make a spreadsheet run a cell as a formula: = + - @ start one, a
# leading tab or CR can hide one (OWASP CSV injection). The one list both exports use: the
# fleet's cell by cell, the local one for each name in the log (queries.csv_text; SQLite builds its lines).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """One CSV cell; text a spreadsheet would run as a formula is quoted with a leading '."""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return "" if value is None else value
