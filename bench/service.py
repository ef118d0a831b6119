"""Figures of a real `lampctl serve` on the generated log: start-up, admin pages, CSV, API rate, Stop under load, RSS.

Every figure sits beside a baseline measured in the same run: the raw SQL for the pages,
`sqlite3 -csv` for the export, a minimal Flask+waitress app for the API rate and memory,
an idle service for the Stop, `import gpiozero` alone for exec -> relays OFF.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench import gen
from bench.client import Browser, LoadProcess, timed_post
from bench.stats import median
from lampctl.testing import ServiceProcess, add_users, free_port, service_config, wait_until

# The Pi drives at most 8 relays: the log's other two lamps are retired ones whose history stays.
ROOM_LAMPS = "".join(
    f'\n[[lamps]]\nid = "{lamp}"\nname = "Room {n}"\nrelay_pin = {4 + n}\nmax_minutes = 60\n'
    f"presets = [10, 15, 20, 30]\nbulb_life_h = 2000\n"
    for n, lamp in enumerate(gen.LAMPS[:8])
)
MONTH = ("2025-11-01", "2025-11-30")
SQL_SESSION_COLUMNS = "id, lamp_id, user, started_at, ended_at, planned_s, actual_s, end_reason"


def load_text() -> str:
    """The machine's 1-minute load average, printed beside a figure that moves with it."""
    return f"load {os.getloadavg()[0]:.1f}"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def relays_off_at(svc: ServiceProcess) -> float:
    return float(re.findall(r"relays off: \d+ lamps at monotonic ([\d.]+)", svc.stderr())[-1])


def prepare(tmp: Path, base_db: Path) -> tuple[Path, dict, float]:
    """(config on a migrated copy of the generated log, tokens, seconds the migration took)."""
    config = service_config(tmp, ROOM_LAMPS)
    db = tmp / "var" / "lampctl.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    migrate_s = gen.working_copy(base_db, db)
    return config, add_users(config), migrate_s


def start_up(config: Path, root: Path, starts: int) -> tuple[ServiceProcess, float, float]:
    """(the service, median ms exec -> relays OFF, median s exec -> serving) on the big log; the last one runs on."""
    offs, servings = [], []
    for n in range(starts):
        svc = ServiceProcess(config, root=root).start(timeout=300)
        servings.append(time.monotonic() - svc.spawned_at)
        offs.append((relays_off_at(svc) - svc.spawned_at) * 1000)
        if n < starts - 1:
            svc.stop(timeout=30)
    return svc, median(offs), median(servings)


def raw_month_ms(db: Path, repeat: int) -> float:
    """The baseline for pages: the month's sessions fetched with plain SQL, best of `repeat`."""
    conn = sqlite3.connect(db)
    try:
        best = 1e9
        for _ in range(repeat):
            t0 = time.perf_counter()
            conn.execute(
                f"SELECT {SQL_SESSION_COLUMNS} FROM sessions WHERE started_at >= ? AND started_at <= ? "
                "ORDER BY started_at DESC",
                (MONTH[0], MONTH[1] + "T23:59:59.999Z"),
            ).fetchall()
            best = min(best, time.perf_counter() - t0)
        return best * 1000
    finally:
        conn.close()


def admin_pages(svc: ServiceProcess, db: Path, repeat: int) -> list[dict]:
    browser = Browser(svc.url, "admin", "1234")
    raw = raw_month_ms(db, repeat)
    rows = []
    for key, label, path in (
        ("log_month_ms", "admin log page, one month", f"/admin/log?from={MONTH[0]}&to={MONTH[1]}"),
        ("log_page_ms", "admin log landing page (unfiltered)", "/admin/log"),
        ("bulbs_ms", "bulbs page", "/admin/bulbs"),
    ):
        times = [browser.timed_get(path)[0] for _ in range(repeat)]
        rows.append(
            dict(
                figure=f"{label}, {repeat} loads",
                value=f"median {median(times):.1f} ms",
                baseline=f"raw month query {raw:.1f} ms",
                goal="<= 50 ms",
                json={key: [median(times), raw]},
            )
        )
    return rows


def bulbs_spreads(db: Path, tmp: Path, repeat: int) -> list[dict]:
    """The bulb-hours query (reports.bulb_hours, what the bulbs page reads) on two spreads of the same log.

    As generated: sessions even over 10 lamps, each bulb replaced every 2,000 h. Skewed: a
    copy where room1 also has the sessions of three other lamps and no bulb was ever
    replaced, so a page sums 40 % of the log for one lamp.
    """
    import shutil

    from lampctl.storage import reports

    skewed = tmp / "skewed.db"
    shutil.copy(db, skewed)
    conn = sqlite3.connect(skewed)
    with conn:
        conn.execute("DELETE FROM bulb_replacements")
        conn.execute("UPDATE sessions SET lamp_id = 'room1' WHERE lamp_id IN ('room2', 'room3', 'room4')")
    conn.close()
    lamps = [_Lamp(lamp, f"Room {n}", 2000) for n, lamp in enumerate(gen.LAMPS[:8])]
    figures = {}
    for label, path in (("as generated", db), ("skewed", skewed)):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            reports.bulb_hours(path, lamps)
            times.append((time.perf_counter() - t0) * 1000)
        figures[label] = median(times)
    skewed.unlink()
    return [
        dict(
            figure=f"bulb hours of 8 lamps (the bulbs page's query), {repeat} reads",
            value=f"as generated {figures['as generated']:.1f} ms, skewed {figures['skewed']:.1f} ms",
            baseline="",
            goal="<= 50 ms on any spread",
            json={"bulbs_query_ms": [figures["skewed"], figures["as generated"]]},  # the worst beside the even spread
        )
    ]


class _Lamp:
    def __init__(self, lamp_id: str, name: str, life_h: float):
        self.id, self.name, self.bulb_life_h = lamp_id, name, life_h


def _timed(cmd: list[str], out=subprocess.DEVNULL, cwd=None) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of a command, through /usr/bin/time."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd], stdout=out, stderr=subprocess.PIPE, text=True, cwd=cwd, check=True
    )
    took = time.perf_counter() - t0
    return took, int(proc.stderr.strip().splitlines()[-1]) / 1024


def csv_exports(svc: ServiceProcess, config: Path, db: Path, root: Path, repeat: int) -> list[dict]:
    """The CLI and web exports against `sqlite3 -csv`, interleaved `repeat` times, best of each."""
    sql = f"SELECT {SQL_SESSION_COLUMNS} FROM sessions ORDER BY started_at, id"
    cli = [sys.executable, "-m", "lampctl", "log", "--csv", "--config", str(config)]
    runs = {"base": [], "cli": [], "web": []}
    for _ in range(repeat):
        runs["base"].append(_timed(["sqlite3", "-csv", "-header", str(db), sql]))
        runs["cli"].append(_timed(cli, cwd=root))
        web_ms, size = Browser(svc.url, "admin", "1234").timed_get("/admin/log.csv")
        runs["web"].append((web_ms / 1000, 0.0))
    (base_s, base_mb), (cli_s, cli_mb), (web_s, _) = (min(runs[k]) for k in ("base", "cli", "web"))
    cli_mb = max(mb for _, mb in runs["cli"])
    _, day_mb = _timed([*cli[:-2], "--from", MONTH[0], "--to", MONTH[0], *cli[-2:]], cwd=root)
    return [
        dict(
            figure=f"full CSV export, CLI (lampctl log --csv), best of {repeat}",
            value=f"{cli_s:.2f} s, peak RSS {cli_mb:.0f} MiB",
            baseline=f"sqlite3 -csv {base_s:.2f} s ({base_mb:.0f} MiB)",
            goal="<= 1.5x sqlite3",
            json={"log_csv_s": [cli_s, base_s], "log_csv_peak_mb": [cli_mb, day_mb]},
        ),
        dict(
            figure="CSV export memory (CLI peak RSS)",
            value=f"full log {cli_mb:.0f} MiB",
            baseline=f"one day {day_mb:.0f} MiB",
            goal="flat",
            json={},
        ),
        dict(
            figure=f"full CSV export, web (/admin/log.csv, {size / 1e6:.0f} MB), best of {repeat}",
            value=f"{web_s:.2f} s",
            baseline=f"sqlite3 -csv {base_s:.2f} s",
            goal="<= 1.5x sqlite3",
            json={"log_csv_web_s": [web_s, base_s]},
        ),
    ]


def open_sessions_ms(db: Path) -> float:
    """What start-up reads to close sessions left open (S4), with plain SQL: best of 3, ms."""
    conn = sqlite3.connect(db)
    try:
        best = 1e9
        for _ in range(3):
            t0 = time.perf_counter()
            conn.execute("SELECT id, started_at, planned_s FROM sessions WHERE ended_at IS NULL").fetchall()
            best = min(best, time.perf_counter() - t0)
        return best * 1000
    finally:
        conn.close()


def minimal_app(seconds: float, clients: int) -> tuple[float, float, float]:
    """(req/s, p99 ms, RSS MiB after the load) of the minimal Flask+waitress app."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.minimal_app", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout.readline().strip() == "serving"
        wait_until(lambda: _answers(port), 30, "the minimal app")
        with LoadProcess(port, "/api/lamps", None, clients, seconds) as load:
            got = load.result()
        return got["rate"], got["p99_ms"], rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def minimal_stop(seconds: float, clients: int, trials: int) -> tuple[float, float]:
    """(idle, loaded) p50 ms of POST /api/stop-all on the minimal Flask+waitress app: what waitress alone gives."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.minimal_app", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout.readline().strip() == "serving"
        wait_until(lambda: _answers(port), 30, "the minimal app")
        idle = [timed_post(port, "/api/stop-all", "-") for _ in range(trials)]
        with LoadProcess(port, "/api/lamps", None, clients, seconds) as load:
            time.sleep(seconds / 4)
            loaded = [timed_post(port, "/api/stop-all", "-") for _ in range(trials)]
            load.result()
        return median(idle), median(loaded)
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def _answers(port: int) -> bool:
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/api/lamps")
        conn.getresponse().read()
        conn.close()
        return True
    except OSError:
        return False


def _stops(svc: ServiceProcess, tokens: dict, trials: int) -> list[float]:
    """POST stop-all on a new connection, each with a session running on room1."""
    out = []
    for _ in range(trials):
        timed_post(svc.port, "/api/lamps/room1/start", tokens["ann"], b'{"minutes": 10, "new_patient": true}')
        out.append(timed_post(svc.port, "/api/stop-all", tokens["ann"]))
    return out


def api_and_stop(svc: ServiceProcess, tokens: dict, seconds: float, trials: int, clients: int = 50) -> list[dict]:
    idle = _stops(svc, tokens, trials)
    with LoadProcess(svc.port, "/api/lamps", tokens["ann"], clients, seconds) as load:
        time.sleep(seconds / 4)
        loaded = _stops(svc, tokens, trials)
        stop_load = load_text()
        got = load.result()
    rss = rss_mib(svc.proc.pid)
    base_rate, base_p99, base_rss = minimal_app(seconds, clients)
    floor_idle, floor_loaded = minimal_stop(seconds, clients, trials)
    return [
        dict(
            figure=f"POST stop-all while {clients} keep-alive clients poll, {trials} stops",
            value=f"p50 {median(loaded):.1f} ms ({median(loaded) / median(idle):.1f}x), max {max(loaded):.1f} ms",
            baseline=f"idle p50 {median(idle):.1f} ms, {stop_load}",
            goal="<= 3x idle",
            json={"stop_under_load_ms": [median(loaded), median(idle)]},
        ),
        dict(
            figure=f"the same POST on the minimal Flask+waitress app, {clients} clients polling it",
            value=f"p50 {floor_loaded:.1f} ms ({floor_loaded / floor_idle:.1f}x)",
            baseline=f"idle p50 {floor_idle:.1f} ms, {load_text()}",
            goal="(waitress's own floor)",
            json={"minimal_stop_under_load_ms": [floor_loaded, floor_idle]},
        ),
        dict(
            figure=f"GET /api/lamps, {clients} keep-alive connections, {seconds:g} s",
            value=f"{got['rate']:.0f} req/s, p99 {got['p99_ms']:.0f} ms ({got['errors']} errors)",
            baseline=f"minimal Flask+waitress {base_rate:.0f} req/s, p99 {base_p99:.0f} ms",
            goal=">= 0.9x",
            json={"api_rps": [got["rate"], base_rate], "api_p99_ms": [got["p99_ms"], base_p99]},
        ),
        dict(
            figure="service RSS after the traffic above (8 lamps)",
            value=f"{rss:.1f} MiB",
            baseline=f"minimal app {base_rss:.1f} MiB, {load_text()}",
            goal="<= 40 MiB",
            json={"rss_mb": [rss, base_rss]},
        ),
    ]


def compile_as_installed(root: Path) -> None:
    """Bytecode for lampctl's own modules, as pip writes it when it installs the Pi's package.

    gpiozero (the baseline) is installed with its bytecode; run from a checkout with
    PYTHONDONTWRITEBYTECODE set, lampctl's modules were compiled from source at every start,
    which alone made exec -> relays OFF 1.2-1.7x instead of what a Pi sees.
    """
    packages = [str(root / name) for name in ("lampctl", "firmware_bridge", "web")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True, stdout=subprocess.DEVNULL)


def exec_to_off(tmp: Path, root: Path, starts: int) -> dict:
    """exec -> relays OFF of `lampctl serve` on an empty log, against `python -c "import gpiozero"`, both with bytecode."""
    compile_as_installed(root)
    config = service_config(tmp, ROOM_LAMPS)
    figures, baseline = [], []
    for _ in range(starts):
        svc = ServiceProcess(config, root=root).start(timeout=120)
        figures.append((relays_off_at(svc) - svc.spawned_at) * 1000)
        svc.stop()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import gpiozero"], check=True)
        baseline.append((time.perf_counter() - t0) * 1000)
    return dict(
        figure=f"exec to relays OFF, {starts} starts (bytecode as installed)",
        value=f"median {median(figures):.0f} ms",
        baseline=f"import gpiozero alone {median(baseline):.0f} ms ({median(figures) / median(baseline):.2f}x), {load_text()}",
        goal="<= 1.1x",
        json={"start_to_safe_ms": [median(figures), median(baseline)]},
    )
