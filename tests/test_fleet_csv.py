"""The collector's /log.csv streams the central log a batch at a time, byte for byte what the whole-in-memory CSV was."""

from __future__ import annotations

import csv
import io
import tracemalloc

import pytest

from lampctl.fleet.central_log import CentralLog, check_record
from lampctl.storage import export
from tests.csv_cases import FORMULA_CELLS
from tests.test_collector import fleet_client, session

COLUMNS = (
    "node",
    "id",
    "lamp_id",
    "user",
    "started_at",
    "ended_at",
    "planned_s",
    "actual_s",
    "end_reason",
    "continues",
    "origin",  # last: a record's database of origin (docs/fleet.md)
)


def whole_in_memory(central: CentralLog, **filters) -> bytes:
    """The CSV as /log.csv built it before it streamed: every row read, then one string."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in central.sessions(**filters):
        writer.writerow([export.csv_cell(row[c]) for c in COLUMNS])
    return buf.getvalue().encode("utf-8")


def _fill(central: CentralLog, nodes: int, per_node: int) -> None:
    names = [name for name, _ in FORMULA_CELLS]
    rows = []
    for n in range(nodes):
        for i in range(1, per_node + 1):
            rows.append(
                (
                    "session",
                    check_record(
                        "session",
                        f"n{n}",
                        session(
                            i,
                            user=names[i % len(names)],
                            actual_s=(0.1 + 0.2) * i if i % 3 else None,
                            ended_at=None if i % 7 == 0 else session(i)["ended_at"],
                            end_reason=None if i % 7 == 0 else "stopped",
                            continues=i - 1 if i % 4 == 0 else None,
                            started_at=f"2026-11-{1 + i % 28:02d}T10:{i % 60:02d}:00.000Z",
                        ),
                    ),
                )
            )
    central.write(rows)


@pytest.mark.parametrize(
    "query, filters",
    [
        ("", {}),
        ("?node=n1", {"node": "n1"}),
        ("?from=2026-11-10&to=2026-11-12", {"start": "2026-11-10T00:00:00.000Z", "end": "2026-11-12T23:59:59.999Z"}),
        ("?node=nobody", {"node": "nobody"}),
    ],
)
def test_fleet_csv_bytes_equal_the_whole_in_memory_output(tmp_path, query, filters):
    central = CentralLog(tmp_path / "central.db")
    _fill(central, 3, 700)  # more than one batch per node
    try:
        client = fleet_client(central)
        got = client.get("/log.csv" + query).get_data()
        assert got == whole_in_memory(central, **filters)
        assert got.count(b"\r\n") == 1 + len(central.sessions(**filters))
    finally:
        central.close()


@pytest.mark.timeout(300)
def test_fleet_csv_of_a_large_central_log_streams_in_flat_memory(tmp_path):
    central = CentralLog(tmp_path / "central.db")
    _fill(central, 20, 3000)  # 60 000 sessions
    try:
        client = fleet_client(central)
        tracemalloc.start()
        try:
            resp = client.get("/log.csv", buffered=False)
            chunks = total = 0
            for chunk in resp.response:  # as the server sends it, one chunk at a time
                chunks += 1
                total += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        resp.close()
        assert total > 5_000_000
        assert chunks > 100  # the first chunk leaves long before the last row is read
        assert peak < 2_000_000, f"peak {peak / 1e6:.1f} MB for a {total / 1e6:.1f} MB CSV"
    finally:
        central.close()
