"""`python -m bench --quick` runs end to end on a tiny log and ends with the JSON line the contract names.

Figures are not checked: benchmarks never gate CI, and this machine's load is not the Pi's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lampctl.testing import ROOT

CONTRACT_KEYS = {
    "cutoff_p99_ms",
    "cutoff_max_ms",
    "estop_p99_ms",
    "stop_under_load_ms",
    "start_to_safe_ms",
    "api_rps",
    "api_p99_ms",
    "log_month_ms",
    "log_page_ms",
    "bulbs_ms",
    "log_csv_s",
    "log_csv_peak_mb",
    "rss_mb",
}


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_bench_quick_prints_a_table_and_one_json_line_with_every_figure_and_baseline():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--sessions", "2000", "--api-seconds", "0.5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=580,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("figure") and "baseline, same run" in lines[0]
    figures = json.loads(lines[-1])
    assert figures.keys() >= CONTRACT_KEYS
    for key in CONTRACT_KEYS:
        assert set(figures[key]) == {"value", "baseline"}, key
        assert all(isinstance(v, int | float) and v >= 0 for v in figures[key].values()), key
    assert figures["quick"] is True and figures["cores"] >= 1


def test_bench_refuses_a_bad_argument_with_one_sentence():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--sessions", "5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and "--sessions must be between" in proc.stderr and "Traceback" not in proc.stderr
