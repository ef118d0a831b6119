"""Admin pages: session log filters and pages, streamed CSV, usage, bulb hours, events, users, fault reset."""

from __future__ import annotations

import csv
import html as htmllib
import io
import os
import re
from datetime import UTC, date, datetime, timedelta

import pytest

from lampctl.storage import export, reports
from lampctl.storage.store import connect, iso
from tests.csv_cases import FORMULA_CELLS
from tests.test_web_auth import login, post
from web import create_app


@pytest.fixture
def web(services, clock, users):
    app = create_app(
        services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic, "LOG_PAGE_SIZE": 3}
    )
    client = app.test_client()
    login(client, "admin", "1234")
    return client


def flashes(client, path: str) -> list[str]:
    page = client.get(path).data.decode()
    return [htmllib.unescape(m) for m in re.findall(r'<p class="flash flash-\w+"[^>]*>([^<]*)</p>', page)]


def run_sessions(controller, clock, usage_log):
    """Five sessions: ann completes two on room1, admin stops one on room2, ann stops two."""
    for lamp, user, planned, run in (
        ("room1", "ann", 60, None),
        ("room2", "admin", 600, 30),
        ("room1", "ann", 120, None),
        ("room2", "ann", 600, 45),
        ("room1", "ann", 600, 10),
    ):
        controller.start(lamp, planned, user)
        if run is None:
            clock.advance(planned)
            controller.tick()
        else:
            clock.advance(run)
            controller.stop(lamp, user)
        clock.advance(120)  # past room2's cooldown
        controller.tick()
    usage_log.flush(2)


def session_ids(page: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr data-session="(\d+)">', page)]


def pager(page: str) -> dict[str, str]:
    """{"Newest"|"Newer"|"Older": href} of a log page."""
    return {
        text: htmllib.unescape(href)
        for href, text in re.findall(
            r'<a class="btn btn-quiet" href="([^"]*)">'
            r"(Newest|Newer|Older)</a>",
            page,
        )
    }


def test_log_lists_newest_first_in_keyset_pages(web, controller, clock, usage_log):
    run_sessions(controller, clock, usage_log)
    page1 = web.get("/admin/log").data.decode()
    assert session_ids(page1) == [5, 4, 3] and "5 sessions, newest first" in page1
    assert pager(page1) == {"Older": "/admin/log?before=3"}
    page2 = web.get(pager(page1)["Older"]).data.decode()
    assert session_ids(page2) == [2, 1]
    assert pager(page2) == {"Newest": "/admin/log", "Newer": "/admin/log?after=2"}
    back = web.get(pager(page2)["Newer"]).data.decode()
    assert session_ids(back) == [5, 4, 3] and pager(back) == {"Newest": "/admin/log", "Older": "/admin/log?before=3"}


def test_log_page_keeps_its_place_when_sessions_are_added(web, controller, clock, usage_log):
    # An offset would shift every page by the sessions started since; the keyset does not.
    run_sessions(controller, clock, usage_log)
    controller.start("room1", 60, "ann")
    usage_log.flush(2)
    assert session_ids(web.get("/admin/log?before=3").data.decode()) == [2, 1]
    newest = web.get("/admin/log?after=4").data.decode()
    assert session_ids(newest) == [6, 5] and "Newer" not in pager(newest)


def test_log_pages_sessions_with_equal_start_times_by_id(web, usage_log):
    conn = connect(usage_log.path)
    conn.executemany(
        "INSERT INTO sessions (lamp_id, user, started_at, planned_s) VALUES ('room1', 'ann', ?, 60)",
        [("2026-01-05T10:00:00.000Z",)] * 5 + [("2026-01-04T10:00:00.000Z",)],
    )
    conn.close()
    seen, href = [], "/admin/log"
    while href:
        page = web.get(href).data.decode()
        seen += session_ids(page)
        href = pager(page).get("Older")
    assert seen == [5, 4, 3, 2, 1, 6]


def test_log_page_key_that_is_not_a_session_is_a_400_sentence(web, controller, clock, usage_log):
    run_sessions(controller, clock, usage_log)
    for query, sentence in (
        ("before=abc", "is not a session number"),
        ("after=-1", "is not a session number"),
        ("before=99", "There is no session 99 in the log"),
        ("after=" + "9" * 30, "is not a session number"),
    ):
        resp = web.get(f"/admin/log?{query}")
        assert resp.status_code == 400 and sentence in resp.data.decode(), query


def test_log_count_stops_at_its_cap(web, controller, clock, usage_log, monkeypatch):
    from web import admin

    run_sessions(controller, clock, usage_log)
    monkeypatch.setattr(admin, "COUNT_CAP", 4)
    assert "More than 4 sessions, newest first" in web.get("/admin/log").data.decode()
    assert "2 sessions, newest first" in web.get("/admin/log?lamp=room2").data.decode()


def test_log_filters_by_lamp_user_reason_and_dates(web, controller, clock, usage_log):
    run_sessions(controller, clock, usage_log)
    assert session_ids(web.get("/admin/log?lamp=room2").data.decode()) == [4, 2]
    assert session_ids(web.get("/admin/log?user=admin").data.decode()) == [2]
    assert session_ids(web.get("/admin/log?reason=completed").data.decode()) == [3, 1]
    assert session_ids(web.get("/admin/log?user=ann&reason=stopped").data.decode()) == [5, 4]
    assert session_ids(web.get("/admin/log?from=2026-01-06").data.decode()) == []
    assert session_ids(web.get("/admin/log?from=2026-01-04&to=2026-01-05&lamp=room1").data.decode()) == [5, 3, 1]
    resp = web.get("/admin/log?from=yesterday")
    assert resp.status_code == 400 and b"is not an ISO-8601 date" in resp.data
    assert web.get("/admin/log?reason=melted").status_code == 400


def test_log_csv_streams_rows_matching_the_log(web, controller, clock, usage_log):
    run_sessions(controller, clock, usage_log)
    resp = web.get("/admin/log.csv?lamp=room2")
    assert resp.is_streamed
    assert resp.mimetype == "text/csv"
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="lampctl-sessions-')
    text = resp.get_data(as_text=True)
    resp.close()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == export.SESSION_COLUMNS
    db = usage_log.sessions(lamp="room2")
    cell = {None: "", True: "true", False: "false"}
    assert rows[1:] == [
        [cell.get(r[c], str(r[c])) if not isinstance(r[c], float) else str(r[c]) for c in export.SESSION_COLUMNS]
        for r in db
    ]
    assert [r[7] for r in rows[1:]] == ["stopped", "stopped"]


def test_log_csv_generator_reads_the_database_a_row_at_a_time(web, controller, clock, usage_log):
    run_sessions(controller, clock, usage_log)
    resp = web.get("/admin/log.csv")
    chunks = resp.response  # the generator itself: nothing read until iterated
    first = next(iter(chunks))
    assert first.startswith(b"id,lamp_id,user,")
    resp.close()  # closes the generator and so its database cursor


def test_log_csv_quotes_cells_a_spreadsheet_would_run(web, usage_log, accounts, controller):
    accounts.add_user("-bob", "practitioner", "1357")
    controller.start("room1", 60, "-bob")
    usage_log.flush(2)
    resp = web.get("/admin/log.csv")
    text = resp.get_data(as_text=True)
    resp.close()
    assert list(csv.reader(io.StringIO(text)))[1][2] == "'-bob"
    assert export.csv_cell("=1+1") == "'=1+1" and export.csv_cell(None) == "" and export.csv_cell(-3) == -3


def test_log_csv_fast_path_escapes_and_quotes_free_text_like_csv_writer(web, usage_log):
    # Names no form accepts today, written straight into the file: the export must still be safe.
    names = [*(name for name, _ in FORMULA_CELLS), "a,b", 'say "hi"', "two\nlines", "cr\rhere", "plain"]
    conn = connect(usage_log.path)
    conn.executemany(
        "INSERT INTO sessions (lamp_id, user, started_at, ended_at, planned_s, actual_s, end_reason) "
        "VALUES (?, ?, '2026-01-05T10:00:00.000Z', NULL, 60.5, NULL, NULL)",
        [("-room", name) for name in names],
    )
    conn.close()
    resp = web.get("/admin/log.csv")
    text = resp.get_data(as_text=True)
    resp.close()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert [r[2] for r in rows[1:]] == [
        *(cell for _, cell in FORMULA_CELLS),
        "a,b",
        'say "hi"',
        "two\nlines",
        "cr\rhere",
        "plain",
    ]
    assert {r[1] for r in rows[1:]} == {"'-room"}
    assert rows[1][3:] == ["2026-01-05T10:00:00.000Z", "", "60.5", "", "", "", "false", ""]


def test_log_csv_with_a_bad_filter_redirects_with_the_sentence(web):
    resp = web.get("/admin/log.csv?from=soon")
    assert resp.status_code == 303
    assert "is not an ISO-8601 date" in flashes(web, "/admin/log")[0]


def test_usage_queries_and_chart(web, controller, clock, usage_log):
    run_sessions(controller, clock, usage_log)
    day = date(2026, 1, 5)
    per_day = reports.minutes_per_lamp_per_day(usage_log.path, reports.day_range(30, day))
    assert per_day["room1"][day] == pytest.approx(3 + 10 / 60)
    assert per_day["room2"][day] == pytest.approx(75 / 60)
    people = reports.per_practitioner(usage_log.path, "2026-01-01", "2026-01-31")
    assert [(p["user"], p["sessions"]) for p in people] == [("ann", 4), ("admin", 1)]
    reasons = reports.end_reasons(usage_log.path, "2026-01-01", "2026-01-31")
    assert {r["reason"]: r["sessions"] for r in reasons} == {"completed": 2, "stopped": 3}
    page = web.get("/admin/usage").data.decode()
    assert '<svg class="chart"' in page and "Minutes per lamp per day" in page


def test_usage_page_counts_todays_sessions(web, usage_log):
    now = datetime.now(UTC)
    conn = connect(usage_log.path)
    conn.execute(
        "INSERT INTO sessions (lamp_id, user, started_at, ended_at, planned_s, actual_s, end_reason) "
        "VALUES ('room1', 'ann', ?, ?, 600, 600, 'completed')",
        (iso(now), iso(now + timedelta(minutes=10))),
    )
    conn.close()
    page = web.get("/admin/usage").data.decode()
    assert "Room 1: 10 min" in page
    assert re.search(r"<title>Room 1, [0-9-]+: 10 min</title>", page)
    assert '<td>ann</td><td class="num">1</td>' in page


def _add_burnt_hours(usage_log, lamp_id: str, hours: float, at: str = "2026-01-01T08:00:00.000Z"):
    conn = connect(usage_log.path)
    conn.execute(
        "INSERT INTO sessions (lamp_id, user, started_at, ended_at, planned_s, actual_s, end_reason) "
        "VALUES (?, 'ann', ?, ?, ?, ?, 'completed')",
        (lamp_id, at, at, hours * 3600, hours * 3600),
    )
    conn.close()


def test_bulb_hours_warn_within_ten_percent_and_replacement_resets(web, usage_log, cfg):
    _add_burnt_hours(usage_log, "room1", 4499)
    _add_burnt_hours(usage_log, "room2", 4501)
    page = web.get("/admin/bulbs").data.decode()
    assert '<tr data-lamp="room1" class="bulb-ok">' in page
    assert '<tr data-lamp="room2" class="bulb-warn">' in page and "Within 10 % of its rated life" in page
    resp = post(web, "/admin/bulbs/room2/replaced", confirm="1")
    assert resp.status_code == 303
    assert flashes(web, "/admin/bulbs") == [
        "Room 2: bulb replacement recorded after 4501.0 h; its count starts again at 0."
    ]
    [b1, b2] = reports.bulb_hours(usage_log.path, cfg.lamps)
    assert (b1.hours, b1.status) == (4499, "ok") and (b2.hours, b2.status, b2.replaced_by) == (0, "ok", "admin")
    usage_log.flush(2)
    assert any(
        e["lamp_id"] == "room2" and e["who"] == "admin" and e["why"] == "bulb replaced after 4501.0 h"
        for e in usage_log.events()
    )
    _add_burnt_hours(usage_log, "room1", 600)
    assert reports.bulb_hours(usage_log.path, cfg.lamps)[0].status == "over"
    assert "Past its rated life" in web.get("/admin/bulbs").data.decode()


def test_bulb_replaced_for_an_unknown_lamp_is_refused(web):
    post(web, "/admin/bulbs/attic/replaced")
    assert flashes(web, "/admin/bulbs") == ["There is no lamp 'attic'."]


def test_events_page_lists_the_audit_log(web, controller, usage_log):
    controller.start("room1", 60, "admin")
    controller.stop("room1", "admin")
    usage_log.flush(2)
    page = web.get("/admin/events?lamp=room1").data.decode()
    assert "stopped: stopped by user" in page and "started for 1 min" in page
    assert "logged in to the panel" not in page  # filtered to the lamp


def test_users_add_reset_pin_role_and_remove(web, accounts, usage_log, clock):
    assert post(web, "/admin/users", name="bea", role="practitioner", pin="1111").status_code == 303
    assert flashes(web, "/admin/users") == ["bea added as practitioner."]
    resp = post(web, "/admin/users", name="bea", role="practitioner", pin="1111")
    assert resp.status_code == 400 and b"A user named &#39;bea&#39; already exists." in resp.data
    resp = post(web, "/admin/users", name="cy", role="practitioner", pin="12")
    assert resp.status_code == 400 and b"A PIN must be 4 to 8 digits." in resp.data
    post(web, "/admin/users/bea/pin", pin="2222")
    assert flashes(web, "/admin/users") == ["New PIN set for bea; their logins have ended."]
    assert accounts.check_pin("bea", "2222") and not accounts.check_pin("bea", "1111")
    post(web, "/admin/users/bea/role", role="admin")
    assert accounts.user("bea")["role"] == "admin"
    post(web, "/admin/users/bea/role", role="king")
    assert flashes(web, "/admin/users")[-1] == "Role 'king' is not one of: practitioner, admin."
    post(web, "/admin/users/bea/remove", confirm="1")
    assert accounts.user("bea") is None
    usage_log.flush(2)
    whys = [e["why"] for e in usage_log.events() if e["who"] == "admin"]
    for why in ("user bea added as practitioner", "PIN of bea reset", "role of bea set to admin", "user bea removed"):
        assert whys.count(why) == 1
    assert not any("2222" in w or "1111" in w for w in whys)  # never a PIN in the log


def _add_error(resp) -> str:
    return htmllib.unescape(
        re.search(r'<p class="flash flash-error" role="alert" id="add-error">([^<]*)</p>', resp.data.decode()).group(1)
    )


def test_users_add_names_of_any_script_and_refuse_bad_ones_with_a_sentence(web, accounts):
    page = web.get("/admin/users").data.decode()
    name_input = re.search(r'<input id="new-name"[^>]*>', page).group(0)
    assert "pattern=" not in name_input and "maxlength" not in name_input  # the server's sentence is what shows
    for name in ("Dr. Müller", "王医生", "maria schmidt", "O'Brien", "Anne-Marie"):
        assert post(web, "/admin/users", name=name, role="practitioner", pin="1111").status_code == 303, name
        assert flashes(web, "/admin/users") == [f"{name} added as practitioner."]
        assert accounts.user(name)["role"] == "practitioner"
    assert 'data-user="王医生"' in web.get("/admin/users").data.decode()
    for name, sentence in [
        ("a@b", "A name may hold letters, digits, spaces and . - ' _ only: 'a@b' has '@'."),
        ("x" * 33, f"A name may have at most 32 characters: '{'x' * 33}' has 33."),
        ("x  y", "A name may not hold two spaces in a row: 'x  y'."),
        ("a\x07b", "A name may hold letters, digits, spaces and . - ' _ only: 'a\\x07b' has U+0007."),
        (
            "maria",
            "A user named 'Maria' already exists; 'maria' differs only in case, and names count as the "
            "same whatever their case.",
        ),
        (
            "MARIA SCHMIDT",
            "A user named 'maria schmidt' already exists; 'MARIA SCHMIDT' differs only in case, and "
            "names count as the same whatever their case.",
        ),
    ]:
        if name == "maria":
            post(web, "/admin/users", name="Maria", role="practitioner", pin="1111")
        resp = post(web, "/admin/users", name=name, role="practitioner", pin="1111")
        assert resp.status_code == 400 and _add_error(resp) == sentence, name
    # The empty name gets its sentence from the server too (the browser's `required` says it first).
    resp = post(web, "/admin/users", name="", role="practitioner", pin="1111")
    assert resp.status_code == 400 and _add_error(resp).startswith("Enter a name:")
    # Like the login form, the page trims what a phone keyboard adds around a word: "  x" is kept as "x".
    assert post(web, "/admin/users", name="  x ", role="practitioner", pin="1111").status_code == 303
    assert accounts.user("x") is not None
    assert sorted(u["name"] for u in accounts.users()) == sorted(
        ["admin", "ann", "Dr. Müller", "王医生", "maria schmidt", "O'Brien", "Anne-Marie", "Maria", "x"]
    )


def test_users_refused_name_is_said_in_the_page_language(web):
    web.set_cookie("lampctl_lang", "de")
    resp = post(web, "/admin/users", name="a@b", role="practitioner", pin="1111")
    assert resp.status_code == 400
    assert (
        _add_error(resp)
        == "Ein Name darf nur Buchstaben, Ziffern, Leerzeichen und . - ' _ enthalten: 'a@b' enthält '@'."
    )


def test_users_your_own_account_in_another_case_is_still_yours(web, accounts):
    post(web, "/admin/users/ADMIN/remove", confirm="1")
    assert flashes(web, "/admin/users") == ["You cannot remove or demote your own account here; ask another admin."]
    post(web, "/admin/users/Admin/role", role="practitioner")
    assert flashes(web, "/admin/users") == ["You cannot remove or demote your own account here; ask another admin."]
    assert accounts.user("admin")["role"] == "admin"


def test_users_page_marks_cli_and_refuses_changing_it_or_yourself(web, accounts):
    accounts.replace_system_token()
    page = web.get("/admin/users").data.decode()
    assert "Built-in account of the command line" in page
    assert 'action="/admin/users/cli/remove"' not in page
    post(web, "/admin/users/cli/remove")
    assert flashes(web, "/admin/users") == ["cli is the built-in account of the command line; it cannot be removed."]
    post(web, "/admin/users/cli/pin", pin="1234")
    assert flashes(web, "/admin/users") == [
        "cli is the built-in account of the command line; it cannot be given a PIN."
    ]
    post(web, "/admin/users/cli/role", role="practitioner")
    assert flashes(web, "/admin/users")[0].startswith("cli is the built-in account")
    resp = post(web, "/admin/users", name="cli", role="admin", pin="1234")
    assert resp.status_code == 400 and b"it cannot be added" in resp.data
    assert accounts.check_pin("cli", "1234") is None
    post(web, "/admin/users/admin/remove")
    assert flashes(web, "/admin/users") == ["You cannot remove or demote your own account here; ask another admin."]
    assert accounts.user("cli")["role"] == "admin" and accounts.user("admin")


def test_admin_pages_answer_503_with_a_sentence_when_the_log_file_is_gone(web, usage_log, users):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{usage_log.path}{suffix}"):
            os.unlink(f"{usage_log.path}{suffix}")
    for path in ("/admin/log", "/admin/log.csv", "/admin/usage", "/admin/bulbs", "/admin/events"):
        resp = web.get(path)
        assert resp.status_code == 503, path
        assert "cannot be opened" in resp.data.decode(), path
    resp = web.get("/api/sessions", headers={"Authorization": f"Bearer {users['admin']}"})
    assert resp.status_code == 503 and resp.get_json()["code"] == "log-unavailable"
    assert web.get("/panel/").status_code == 200  # auth comes from memory; the panel still works
    assert not usage_log.path.exists()  # no reader made a new empty file


def test_fault_reset_from_the_lamps_page(web, controller, usage_log):
    controller.fault("relay of Room 1 is stuck closed", "room1")
    page = web.get("/admin/lamps").data.decode()
    assert "relay of Room 1 is stuck closed" in page and 'aria-label="Reset fault of Room 1"' in page
    assert post(web, "/admin/lamps/room1/reset", confirm="1").headers["Location"] == "/admin/lamps"
    assert controller.lamp("room1").state == "off"
    assert flashes(web, "/admin/lamps") == ["Room 1: fault cleared; the lamp is off and ready."]
    post(web, "/admin/lamps/room1/reset", next="panel", confirm="1")
    assert flashes(web, "/panel/") == ["Room 1 has no latched fault to clear."]
    usage_log.flush(2)
    assert any(e["why"].startswith("fault cleared") and e["who"] == "admin" for e in usage_log.events())


def _confirm_fields(html: str) -> dict[str, str]:
    """The hidden fields a confirmation page posts back (confirm=1 and what it listed)."""
    return {
        htmllib.unescape(k): htmllib.unescape(v)
        for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html)
        if k != "csrf_token"
    }


def _reset_all_error(resp) -> str:
    return htmllib.unescape(
        re.search(r'<p class="flash flash-error" role="alert" id="lamps-error">([^<]*)</p>', resp.data.decode()).group(
            1
        )
    )


def test_s17_reset_all_clears_every_latch_after_one_confirmation_and_records_each(
    web, controller, usage_log, factory, cfg, relays, clock
):
    controller.fault("relay of Room 1 is stuck closed", "room1")
    factory.pin(27).drive_low()  # the E-stop button: every other lamp latches too
    factory.pin(27).drive_high()  # and is released
    assert controller.latched() == {"room1": "relay of Room 1 is stuck closed", "room2": "E-stop pressed"}
    usage_log.flush(2)
    page = web.get("/admin/lamps").data.decode()
    assert ">Reset all faults (2 lamps)</button>" in page
    asked = post(web, "/admin/lamps/reset-all")
    html = asked.data.decode()
    assert asked.status_code == 200 and '<h1 id="confirm-q">Reset the faults of all 2 latched lamps?</h1>' in html
    items = [htmllib.unescape(i) for i in re.findall(r"<li>([^<]*)</li>", html)]
    assert [re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:?\d*", "T", i) for i in items] == [
        "Room 1, latched since T: relay of Room 1 is stuck closed",
        "Room 2, latched since T: E-stop pressed",
    ]
    assert ">Yes, reset all 2 faults</button>" in html
    assert [l.state for l in controller.lamps()] == ["fault", "fault"]  # asking changed nothing
    resp = post(web, "/admin/lamps/reset-all", **_confirm_fields(html))
    assert resp.status_code == 303 and resp.headers["Location"] == "/admin/lamps"
    assert flashes(web, "/admin/lamps") == ["Faults cleared on Room 1, Room 2; the lamps are off and ready."]
    assert [(l.state, l.relay_on) for l in controller.lamps()] == [("off", False), ("off", False)]
    usage_log.flush(2)
    cleared = sorted((e["lamp_id"], e["who"], e["why"]) for e in usage_log.events() if e["why"].startswith("fault cl"))
    assert cleared == [
        ("room1", "admin", "fault cleared (relay of Room 1 is stuck closed)"),
        ("room2", "admin", "fault cleared (E-stop pressed)"),
    ]  # as one reset records it, per lamp
    assert usage_log.latched_faults() == {}
    from lampctl.core.controller import SessionController

    restarted = SessionController(cfg.lamps, relays, clock, usage_log, latched=usage_log.latched_faults())
    assert [l.state for l in restarted.lamps()] == ["off", "off"]  # S17: cleared for good, not back after a restart
    assert ">Reset all faults" not in web.get("/admin/lamps").data.decode()


def test_s5_s17_reset_all_refused_while_the_estop_is_pressed_and_nothing_is_reset(web, controller, usage_log, factory):
    factory.pin(27).drive_low()  # pressed, and still held down
    sentence = "No fault can be cleared yet: the E-stop button is still pressed."
    resp = post(web, "/admin/lamps/reset-all")  # refused before asking
    assert resp.status_code == 409 and _reset_all_error(resp) == sentence
    fields = {"confirm": "1", **{f"latched-{k}": v for k, v in controller.latched().items()}}
    resp = post(web, "/admin/lamps/reset-all", **fields)  # a confirmation from before it was pressed again
    assert resp.status_code == 409 and _reset_all_error(resp) == sentence
    assert [l.state for l in controller.lamps()] == ["fault", "fault"]
    usage_log.flush(2)
    assert set(usage_log.latched_faults()) == {"room1", "room2"}
    assert not [e for e in usage_log.events() if e["why"].startswith("fault cleared")]
    factory.pin(27).drive_high()
    assert post(web, "/admin/lamps/reset-all", **fields).status_code == 303
    assert [l.state for l in controller.lamps()] == ["off", "off"]


def test_reset_all_resets_only_what_the_confirmation_listed(web, controller):
    controller.fault("relay of Room 1 is stuck closed", "room1")
    html = post(web, "/admin/lamps/reset-all").data.decode()
    assert '<h1 id="confirm-q">Reset the fault of 1 lamp?</h1>' in html
    controller.fault("Room 2 is still powered although it was switched off", "room2")  # latched after it was shown
    resp = post(web, "/admin/lamps/reset-all", **_confirm_fields(html))
    assert resp.status_code == 409 and _reset_all_error(resp) == (
        "The latched faults have changed since they were listed; look at the list again before resetting."
    )
    resp = post(web, "/admin/lamps/reset-all", confirm="1")  # a confirmation that listed nothing
    assert resp.status_code == 409 and "have changed since they were listed" in _reset_all_error(resp)
    assert [l.state for l in controller.lamps()] == ["fault", "fault"]
    assert (
        post(
            web, "/admin/lamps/reset-all", **_confirm_fields(post(web, "/admin/lamps/reset-all").data.decode())
        ).status_code
        == 303
    )
    resp = post(web, "/admin/lamps/reset-all")
    assert resp.status_code == 409 and _reset_all_error(resp) == "No lamp has a latched fault to clear."


def test_reset_all_needs_an_admin_and_the_form_token(web, services, clock, controller):
    controller.estop("ann", "emergency stop by ann")
    fields = {"confirm": "1", **{f"latched-{k}": v for k, v in controller.latched().items()}}
    resp = web.post("/admin/lamps/reset-all", data=fields)  # no CSRF token
    assert resp.status_code == 400
    practitioner = create_app(
        services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic}
    ).test_client()
    login(practitioner, "ann", "2468")
    assert post(practitioner, "/admin/lamps/reset-all", **fields).status_code == 403
    assert [l.state for l in controller.lamps()] == ["fault", "fault"]


def test_panel_offers_admins_a_fault_reset(web, controller):
    controller.fault("E-stop pressed", "room2")
    page = web.get("/panel/").data.decode()
    assert page.count(">Reset fault</button>") == 2  # one per lamp, shown only on the faulted one
    assert re.search(r'data-show="fault"\s*>', page)  # room2's is visible


def test_api_sessions_extreme_compact_or_bad_bounds_never_500(web, controller, clock, usage_log, users):
    run_sessions(controller, clock, usage_log)
    auth = {"Authorization": f"Bearer {users['admin']}"}

    def ids(query):
        resp = web.get(f"/api/sessions{query}", headers=auth)
        assert resp.status_code == 200, (query, resp.get_json())
        return [s["id"] for s in resp.get_json()["sessions"]]

    assert ids("?from=0001-01-01") == [1, 2, 3, 4, 5]
    assert ids("?to=9999-12-31T23:59:59-10:00") == [1, 2, 3, 4, 5]
    assert ids("?from=0001-01-01&to=9999-12-31") == [1, 2, 3, 4, 5]
    assert ids("?to=20260105") == ids("?to=2026-01-05") == [1, 2, 3, 4, 5]  # the whole day, not its first instant
    assert ids("?from=20260106") == []
    for query in ("?from=soon", "?to=2026-13-01", "?from=%00", "?to=" + "9" * 400, "?reason=melted"):
        resp = web.get(f"/api/sessions{query}", headers=auth)
        assert resp.status_code == 400 and resp.get_json()["code"] == "bad-query", query
        assert resp.get_json()["error"].endswith("."), query
    assert web.get("/admin/log?from=0001-01-01&to=9999-12-31").status_code == 200
    assert web.get("/admin/log?to=" + "9" * 400).status_code == 400


def test_bulb_remove_and_reset_ask_first_without_javascript(web, controller, accounts, usage_log):
    controller.fault("firmware link lost: no reply for 1.50 s", "room1")
    usage_log.flush(2)
    page = web.get("/admin/lamps").data.decode()
    assert re.search(r"<time datetime=[^>]+>\d{4}-\d\d-\d\d \d\d:\d\d[^<]*</time>: firmware link lost", page)
    for path, question, button in (
        ("/admin/lamps/room1/reset", "Reset the fault of Room 1?", "Yes, reset fault"),
        ("/admin/bulbs/room2/replaced", "Record a new bulb in Room 2?", "Yes, bulb replaced"),
        ("/admin/users/ann/remove", "Remove ann?", "Yes, remove ann"),
    ):
        resp = post(web, path)
        html = resp.data.decode()
        assert resp.status_code == 200 and f'<h1 id="confirm-q">{question}</h1>' in html, path
        assert '<input type="hidden" name="confirm" value="1">' in html and f">{button}</button>" in html
    assert "Latched since" in post(web, "/admin/lamps/room1/reset").data.decode()
    assert controller.lamp("room1").state == "fault" and accounts.user("ann") is not None
    assert "bulb replaced" not in [e["why"][:13] for e in usage_log.events()]


def test_admin_pages_warn_while_the_clock_is_not_synchronised(services, clock, users):
    synced = {"now": False}
    services.clock_synchronised = lambda: synced["now"]
    app = create_app(services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic})
    client = app.test_client()
    login(client, "admin", "1234")
    for page in ("/admin/log", "/admin/usage", "/admin/lamps"):
        assert b"The system clock is not synchronised" in client.get(page).data, page
    # The page keeps its own translatable copy of the command line's sentence: the two say the same in English.
    from lampctl.platform.clocksync import describe

    assert htmllib.escape(describe(False), quote=False) in client.get("/admin/log").data.decode()
    synced["now"] = True
    assert b"The system clock is not synchronised" not in client.get("/admin/log").data


def test_log_page_durations_carry_their_unit(web, controller, clock, usage_log):
    """Item 17.9: a 30 s session read "0:30" under an h:mm:ss heading; now one format, the panel's, with its unit."""
    run_sessions(controller, clock, usage_log)
    page = web.get("/admin/log").data.decode()
    cells = re.findall(r'<td class="num" data-label="(Planned|Actual)">([^<]*)</td>', page)
    assert cells[:6] == [
        ("Planned", "10 min"),
        ("Actual", "10 s"),
        ("Planned", "10 min"),
        ("Actual", "45 s"),
        ("Planned", "2 min"),
        ("Actual", "2 min"),
    ]
    assert "durations are in minutes and seconds" in page and "h:mm:ss" not in page
    page = web.get("/admin/log", headers={"Accept-Language": "de"}).data.decode()
    # The narrow-screen labels speak the page's language too.
    assert ("Ist", "45 s") in re.findall(r'<td class="num" data-label="(Soll|Ist)">([^<]*)</td>', page)
