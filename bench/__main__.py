"""`python -m bench [--quick]`: every figure beside its baseline from the same run, a table, one JSON line.

Full run: a generated log of about a million sessions (10 lamps, 10 years; generated once
into var/bench/ in 10-20 s), 400 timed sessions, 600 E-stop presses. --quick: 20,000
sessions and a tenth of the repeats, under a minute. --instructions: instructions per
request counted by valgrind's callgrind (bench/instructions.py). Benchmarks print figures; they never
fail on one (CI does not run them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small log and few repeats (under a minute)")
    ap.add_argument("--sessions", type=int, help="sessions in the generated log (default 1,000,000; --quick 20,000)")
    ap.add_argument("--api-seconds", type=float, help="length of each request-rate load (default 10; --quick 2)")
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per request under valgrind's callgrind (adds about 30 s; --quick fewer requests)",
    )
    args = ap.parse_args(argv)
    if args.sessions is not None and not 100 <= args.sessions <= 10_000_000:
        ap.error("--sessions must be between 100 and 10000000")
    if args.api_seconds is not None and not 0.5 <= args.api_seconds <= 600:
        ap.error("--api-seconds must be between 0.5 and 600")
    return args


def _service_rows(tmp: Path, sessions: int, quick: bool, api_seconds: float) -> list[dict]:
    from bench import gen, service

    t0 = time.perf_counter()
    base = gen.cached(ROOT, sessions)
    generated = time.perf_counter() - t0
    config, tokens, migrate_s = service.prepare(tmp, base)
    db = tmp / "var" / "lampctl.db"
    scan_ms = service.open_sessions_ms(db)
    svc, off_ms, serving_s = service.start_up(config, ROOT, 1 if quick else 3)
    rows = [
        dict(
            figure=f"log of {sessions:,} sessions: schema migration to this lampctl (once)",
            value=f"{migrate_s:.2f} s",
            baseline=f"generating it {generated:.1f} s (cached after)",
            goal="",
            json={},
        ),
        dict(
            figure=f"start-up with the {sessions:,}-session log",
            value=f"serving after {serving_s:.2f} s",
            baseline=f"relays OFF after {off_ms:.0f} ms",
            goal="serving <= 0.5 s; relays OFF unaffected",
            json={"startup_serving_s": [serving_s, off_ms / 1000]},
        ),
        dict(
            figure="start-up's read of open sessions (S4), plain SQL",
            value=f"{scan_ms:.2f} ms",
            baseline="",
            goal="",
            json={"open_sessions_ms": [scan_ms, 0.0]},
        ),
    ]
    try:
        repeat = 3 if quick else 10
        rows += service.admin_pages(svc, db, repeat)
        rows += service.bulbs_spreads(db, tmp, repeat)
        rows += service.csv_exports(svc, config, db, ROOT, 1 if quick else 3)
        rows += service.api_and_stop(svc, tokens, api_seconds, 5 if quick else 20)
    finally:
        svc.stop(timeout=30)
    return rows


def run(args) -> list[dict]:
    from bench import inproc, service

    quick = args.quick
    sessions = args.sessions or (20_000 if quick else 1_000_000)
    api_seconds = args.api_seconds or (2.0 if quick else 10.0)
    rows = inproc.run(quick)
    with tempfile.TemporaryDirectory() as small, tempfile.TemporaryDirectory() as big:
        rows.append(service.exec_to_off(Path(small), ROOT, 3 if quick else 10))
        rows += _service_rows(Path(big), sessions, quick, api_seconds)
    if args.instructions:
        from bench import instructions

        try:
            rows += instructions.run(quick, service.ROOM_LAMPS)
        except Exception as exc:  # the other figures still print
            rows.append(
                dict(figure="instructions per request", value=f"failed: {exc!r}"[:200], baseline="", goal="", json={})
            )
    return rows


def print_table(rows: list[dict], out) -> None:
    widths = [max(len(r[k]) for r in rows) for k in ("figure", "value", "baseline")]
    head = ("figure", "measured", "baseline, same run")
    out.write("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  goal\n")
    for r in rows:
        out.write("  ".join(r[k].ljust(w) for k, w in zip(("figure", "value", "baseline"), widths, strict=True)))
        out.write(f"  {r['goal']}\n")


def summary(rows: list[dict], quick: bool, took: float) -> dict:
    figures = {}
    for r in rows:
        for key, (value, baseline) in r["json"].items():
            figures[key] = {"value": round(value, 3), "baseline": round(baseline, 3)}
    return {
        "quick": quick,
        "cores": os.cpu_count(),
        "load1": round(os.getloadavg()[0], 2),
        "seconds": round(took, 1),
        **figures,
    }


def main(argv=None) -> int:
    args = _args(argv)
    # The controller logs every latch the E-stop figure causes; the figures are the output here.
    logging.getLogger("lampctl").addHandler(logging.NullHandler())
    logging.getLogger("lampctl").propagate = False
    t0 = time.perf_counter()
    rows = run(args)
    print_table(rows, sys.stdout)
    print(json.dumps(summary(rows, args.quick, time.perf_counter() - t0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
