"""The one oracle of the fault campaign: relay trace, the microcontroller's JSON lines and the database.

Every trial ends with `Oracle(rig).check()`, which asserts, whatever faults were injected:
- no relay on outside a recorded session, no relay on without the firmware armed, every
  relay off when a life ends cleanly, no relay or firmware output on past the lamp's max;
- every firmware output released soon after its relay (or its refused start) ended;
- every acknowledged record (a 200/201 with "recorded": true) on disk exactly once;
- every Stop answered, and the relay off within RELAY_OFF_BOUND_S of the request.
A fault window (service frozen or killed, simulator frozen) stretches only the bounds it
can honestly stretch: a frozen process cannot switch its relay, a killed one cannot answer.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from datetime import datetime

from lampctl.storage.store import END_REASONS
from tests.faults.rig import LAMP_IDS, PIN_LAMP, STOPS, Rig

MAX_S = 60.0  # both lamps: max_minutes = 1
# S10 asks 100 ms from a Stop to its relay; measured from the client's send on a loaded
# 2-core CI machine (seven developers' suites beside it), so the bound here is generous.
RELAY_OFF_BOUND_S = 0.5
# A Stop's answer waits up to 2 s for its record (web/codes.py): answered within this.
STOP_ANSWER_BOUND_S = 5.0
# S2: how late past its deadline a relay may still be on (the scheduler's wake-up on a loaded machine).
OVERSHOOT_S = 0.5
# The record's duration and the relay's may differ by the time between reading the clock
# and switching the relay, which a thread can be descheduled for under load.
RECORD_SLACK_S = 0.5
GRACE_S = 0.1


def _overlap(a0: float, a1: float, windows) -> float:
    return sum(max(0.0, min(a1, w1) - max(a0, w0)) for w0, w1 in windows)


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


class Oracle:
    def __init__(self, rig: Rig, *, relay_off_bound_s: float = RELAY_OFF_BOUND_S):
        self.rig = rig
        self.relay_off_bound_s = relay_off_bound_s
        self.problems: list[str] = []
        end = max([c.t1 or c.t0 for c in rig.calls] + [l.ended or 0 for l in rig.lives] + [0]) + 3600
        self.frozen_svc = [
            (f.t0, f.t1 or end) for f in rig.faults if f.kind.startswith("SIGSTOP") and f.target == "service"
        ]
        self.frozen_sim = [
            (f.t0, f.t1 or end) for f in rig.faults if f.kind.startswith("SIGSTOP") and f.target == "simulator"
        ]
        # Windows in which the service could not answer: frozen, killed, stopping, restarting.
        self.down = [(f.t0, f.t1 or end) for f in rig.faults if f.target == "service"]
        for i, life in enumerate(rig.lives[1:], 1):
            self.down.append((rig.lives[i - 1].ended or life.began, life.serving or end))
        # Lives in which the wall clock was stepped.
        self.stepped = {
            n
            for n, life in enumerate(rig.lives)
            for f in rig.faults
            if f.target == "clock" and life.began <= f.t0 <= (life.ended or end)
        }
        self.relays = self._relay_intervals()
        self.firmware = self._firmware_intervals()

    def fail(self, text: str) -> None:
        if len(self.problems) < 40:
            self.problems.append(text)

    # ---- the three sources, as intervals --------------------------------------------------
    def _relay_intervals(self) -> dict:
        """{(life, lamp): [(on, off, open_at_end)]} from each life's pin trace."""
        out = defaultdict(list)
        for n, life in enumerate(self.rig.lives):
            on_since = {}
            for t, pin, state in life.relay_events():
                lamp = PIN_LAMP.get(pin)
                if lamp is None:
                    continue
                if state and lamp not in on_since:
                    on_since[lamp] = t
                elif not state and lamp in on_since:
                    out[(n, lamp)].append((on_since.pop(lamp), t, False))
            for lamp, t in on_since.items():
                out[(n, lamp)].append((t, life.ended or t, True))
        return out

    def _firmware_intervals(self) -> dict:
        """{lamp index: [(on, off)]} from the simulator's JSON lines."""
        out = defaultdict(list)
        on_since = {}
        for line in list(self.rig.sim.lines):
            lamp, t = line["lamp"], line["t"]
            if line["on"] and lamp not in on_since:
                on_since[lamp] = t
            elif not line["on"] and lamp in on_since:
                out[lamp].append((on_since.pop(lamp), t))
        for lamp, t in on_since.items():
            self.fail(f"firmware output {lamp} still on when the trial ended (since {t:.3f})")
        return out

    def firmware_on_at(self, index: int, t: float) -> bool:
        return any(a <= t <= b for a, b in self.firmware[index])

    # ---- the checks -----------------------------------------------------------------------
    def check(self) -> None:
        self.rows = [dict(r) for r in self.rig.rows("SELECT * FROM sessions ORDER BY id")]
        self.events = [dict(r) for r in self.rig.rows("SELECT * FROM events")]
        self.check_relays()
        self.check_firmware()
        self.check_sessions_match_relays()
        self.check_records()
        self.check_acknowledged()
        self.check_stops()
        assert not self.problems, "the oracle found:\n" + "\n".join(self.problems)

    def check_relays(self) -> None:
        for (life, lamp), intervals in self.relays.items():
            index = LAMP_IDS.index(lamp)
            for on, off, open_at_end in intervals:
                stretch = _overlap(on, off, self.frozen_svc)
                if off - on > MAX_S + OVERSHOOT_S + stretch:
                    self.fail(f"S3: life {life} relay {lamp} on for {off - on:.3f} s (max {MAX_S} s)")
                if not self.firmware_on_at(index, on):
                    self.fail(f"S7/S12: life {life} relay {lamp} on at {on:.3f} without the firmware armed")
                if open_at_end and not self.rig.lives[life].killed:
                    self.fail(f"S1: life {life} ended cleanly with relay {lamp} on")

    def check_firmware(self) -> None:
        bound = MAX_S * 1.10 + GRACE_S + 1.0
        release = self.rig.watchdog_s + 1.5
        for index, intervals in self.firmware.items():
            lamp = LAMP_IDS[index]
            relay = [(on, off) for (_life, l), ivs in self.relays.items() if l == lamp for on, off, _ in ivs]
            for a, b in intervals:
                stretch = _overlap(a, b, self.frozen_sim)
                if b - a > bound + stretch:
                    self.fail(f"S7: firmware output {lamp} on for {b - a:.3f} s (backstop bound {bound:.1f} s)")
                ends = [off for on, off in relay if a - 0.05 <= on <= b]
                last = max([a, *ends])
                if b > last + release + stretch + _overlap(a, b, self.frozen_svc):
                    self.fail(
                        f"S12: firmware output {lamp} on until {b:.3f}, {b - last:.3f} s after its "
                        f"session or refused start ended at {last:.3f}"
                    )

    def check_sessions_match_relays(self) -> None:
        """Per life and lamp, recorded sessions and relay on-intervals pair up in order (S2, S13)."""
        lives = self.rig.lives
        for n, life in enumerate(lives):
            top = lives[n + 1].base_id if n + 1 < len(lives) else float("inf")
            for lamp in LAMP_IDS:
                rows = [r for r in self.rows if life.base_id < r["id"] <= top and r["lamp_id"] == lamp]
                intervals = self.relays.get((n, lamp), [])
                if len(rows) > len(intervals):
                    self.fail(
                        f"S13: life {n} {lamp}: {len(rows)} sessions recorded, relay on only {len(intervals)} times"
                    )
                if len(intervals) > len(rows) and not life.killed:
                    self.fail(f"S2/S9: life {n} {lamp}: relay on {len(intervals)} times, {len(rows)} sessions recorded")
                for row, (on, off, _open) in zip(rows, intervals, strict=False):
                    self._pair(n, row, on, off)

    def _pair(self, life: int, row: dict, on: float, off: float) -> None:
        ran = off - on
        stretch = _overlap(on, off, self.frozen_svc)
        if ran > row["planned_s"] + OVERSHOOT_S + stretch:
            self.fail(f"S2: life {life} session {row['id']} relay on {ran:.3f} s, planned {row['planned_s']} s")
        claim = ran + RECORD_SLACK_S
        if row["end_reason"] == "interrupted" and life in self.stepped:
            # Known limit (docs/faults.md, the S13 gap): a session killed before its first progress
            # mark ends at the last "alive" stamp in wall time, so a forward step can stretch it up to its plan.
            claim = max(claim, row["planned_s"] + 1e-6)
        if row["actual_s"] is not None and row["actual_s"] > claim:
            self.fail(f"S13: session {row['id']} records {row['actual_s']} s, its relay was on {ran:.3f} s")
        honest_end = row["end_reason"] in ("completed", "stopped", "estop", "fault")
        if honest_end and row["actual_s"] < ran - RECORD_SLACK_S - stretch:
            self.fail(
                f"S13: session {row['id']} ({row['end_reason']}) records {row['actual_s']} s, "
                f"its relay was on {ran:.3f} s"
            )

    def check_records(self) -> None:
        by_id = {r["id"]: r for r in self.rows}
        for r in self.rows:
            if r["ended_at"] is None or r["end_reason"] not in END_REASONS:
                self.fail(f"S4: session {r['id']} left open after a clean restart: {r}")
                continue
            if _parse(r["ended_at"]) < _parse(r["started_at"]):
                self.fail(f"S13: session {r['id']} ends before it starts: {r['started_at']} > {r['ended_at']}")
            if r["planned_s"] > MAX_S + 1e-6 or r["actual_s"] > MAX_S + OVERSHOOT_S:
                self.fail(f"S3: session {r['id']} planned {r['planned_s']} s, ran {r['actual_s']} s")
            used, link, seen = 0.0, r, set()
            while link is not None and link["id"] not in seen:
                seen.add(link["id"])
                used += link["actual_s"] if link is not r else link["planned_s"]
                link = by_id.get(link["continues"])
            if used > MAX_S + OVERSHOOT_S:
                self.fail(f"S18: session {r['id']} continues a chain that used {used:.3f} s of {MAX_S} s")

    def check_acknowledged(self) -> None:
        """An acknowledged record is on disk exactly once; nothing is recorded more often than asked."""
        ids = defaultdict(int)
        for r in self.rows:
            ids[r["id"]] += 1
        lamp_of = {r["id"]: r["lamp_id"] for r in self.rows}
        for c in self.rig.calls:
            if c.kind == "start" and c.recorded:
                sid = c.body["session_id"]
                if ids.get(sid) != 1 or lamp_of.get(sid) != c.lamp:
                    self.fail(f"S9: acknowledged session {sid} on {c.lamp} is on disk {ids.get(sid, 0)} times")
        whys = defaultdict(int)
        for e in self.events:
            why = e["why"] or ""
            if why.startswith("extended by"):
                whys["extend"] += 1
            elif why.endswith(": stopped by user") or why in (
                "start cancelled by stop",
                "stop: the lamp was already off",
            ):
                # "<end reason>: stopped by user": `stopped`, or `firmware` when the firmware had cut first (S13);
                # a Stop of a lamp already off is answered 200 and recorded too (S19)
                whys["stop"] += 1
            elif e["lamp_id"] is None and why == "stop all (API)":
                whys["stop-all"] += 1
        for kind in ("extend", "stop", "stop-all"):
            sent = sum(1 for c in self.rig.calls if c.kind == kind)
            acked = sum(1 for c in self.rig.calls if c.kind == kind and c.recorded)
            if not acked <= whys[kind] <= sent:
                self.fail(f"S9: {acked} {kind} acknowledged, {sent} sent, {whys[kind]} recorded")

    def check_stops(self) -> None:
        figures = self.rig.figures
        for c in self.rig.calls:
            if c.kind not in STOPS:
                continue
            excused = _overlap(c.t0, (c.t1 or c.t0) + 0.05, self.down) > 0
            if c.status is None or c.t1 - c.t0 > STOP_ANSWER_BOUND_S:
                if not excused:
                    self.fail(
                        f"S10: {c.kind} {c.lamp or ''} sent at {c.t0:.3f} answered {c.status} after "
                        f"{(c.t1 or c.t0) - c.t0:.3f} s"
                    )
                continue
            figures.stops += 1
            if not excused:
                figures.worst_stop_answer_s = max(figures.worst_stop_answer_s, c.t1 - c.t0)
            lamps = [c.lamp] if c.kind == "stop" else list(LAMP_IDS)
            for lamp in lamps:
                for on, off, _open in self.relays.get((c.life, lamp), []):
                    if on < c.t0 < off:
                        late = off - c.t0
                        if not excused:
                            figures.worst_relay_off_s = max(figures.worst_relay_off_s, late)
                            figures.relay_off_samples.append(late)
                        if late > self.relay_off_bound_s + _overlap(c.t0, off, self.frozen_svc) and not excused:
                            self.fail(f"S10: {c.kind} at {c.t0:.3f}: relay {lamp} off {late * 1000:.0f} ms later")


def summary(rig: Rig, oracle: Oracle) -> dict:
    """What a trial did, for the campaign's figures (docs/faults.md)."""
    kinds = defaultdict(lambda: defaultdict(int))
    for c in rig.calls:
        kinds[c.kind][str(c.status)] += 1
    f = rig.figures
    samples = sorted(f.relay_off_samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] if samples else 0.0
    figures = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
        "lives": len(rig.lives),
        "faults": len(rig.faults),
        "fault_kinds": sorted({f.kind.split(" to ")[0] for f in rig.faults}),
        "calls": {k: dict(v) for k, v in kinds.items()},
        "sessions_on_disk": len(oracle.rows),
        "relay_on_intervals": sum(len(v) for v in oracle.relays.values()),
        "firmware_on_intervals": sum(len(v) for v in oracle.firmware.values()),
        "acknowledged_lost": 0 if not oracle.problems else None,
        "stops_measured": len(f.relay_off_samples),
        "worst_relay_off_ms": round(f.worst_relay_off_s * 1000, 1),
        "p99_relay_off_ms": round(p99 * 1000, 1),
        "worst_stop_answer_ms": round(f.worst_stop_answer_s * 1000, 1),
    }
    if os.environ.get("FAULT_FIGURES"):  # the soak run collects every trial's figures for docs/faults.md
        with open(os.environ["FAULT_FIGURES"], "a") as fh:
            fh.write(json.dumps(figures) + "\n")
    return figures
