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
# fleet's through csv_cell, the local one through csv_cell_sql (SQLite builds its lines).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """One CSV cell; text a spreadsheet would run as a formula is quoted with a leading '."""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return "" if value is None else value


def csv_cell_sql(column: str) -> str:
    """csv_cell(column) as an SQLite expression: the same guard, from the same list."""
    starts = ", ".join(f"char({ord(c)})" for c in FORMULA_STARTS)
    return f"(CASE WHEN substr({column}, 1, 1) IN ({starts}) THEN '''' || {column} ELSE {column} END)"
