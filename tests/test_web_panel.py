"""The practitioner panel without JavaScript (forms POST and redirect back) and its JSON state for the live countdown."""

from __future__ import annotations

import html as htmllib
import re

import pytest

from tests.conftest import pin_history
from tests.test_web_auth import login, post
from web import create_app
from web.panel import clock_text, preset_label


@pytest.fixture
def web(services, clock, users):
    app = create_app(services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic})
    client = app.test_client()
    login(client, "ann", "2468")
    return client


def flashes(client) -> list[str]:
    html = client.get("/panel/").data.decode()
    return [htmllib.unescape(m) for m in re.findall(r'<p class="flash flash-\w+"[^>]*>([^<]*)</p>', html)]


def act(client, path: str, **data) -> list[str]:
    """POST a panel form as a browser without JavaScript does, follow the redirect, return the flash messages."""
    resp = post(client, path, **data)
    assert resp.status_code == 303 and resp.headers["Location"] == "/panel/"
    return flashes(client)


def region(html: str, lamp_id: str) -> str:
    return re.search(rf'<section class="lamp" id="lamp-{lamp_id}".*?</section>', html, re.S).group(0)


def test_preset_labels_minutes_and_seconds():
    assert [preset_label(p) for p in (10, 15, 0.05, 1.5, 1.25)] == [
        "10 min",
        "15 min",
        "3 s",
        "1 min 30 s",
        "1 min 15 s",
    ]
    assert [clock_text(s) for s in (600, 599.2, 0.2, 0, None)] == ["10:00", "10:00", "0:01", "0:00", "--:--"]


def test_panel_has_a_named_region_per_lamp_with_its_buttons(web):
    html = web.get("/panel/").data.decode()
    assert html.count('<button type="submit" class="btn btn-stop-all">Stop all</button>') == 1
    for lamp_id, name, presets in (
        ("room1", "Room 1", ["10", "15", "20", "30"]),
        ("room2", "Room 2", ["10", "20", "30"]),
    ):
        part = region(html, lamp_id)
        assert f'aria-labelledby="lamp-{lamp_id}-name"' in part
        assert f'<h2 id="lamp-{lamp_id}-name">{name}</h2>' in part
        assert re.findall(r">(\d+) min</button>", part) == presets
        assert ">+5 min</button>" in part and ">Stop</button>" in part
        assert 'role="timer"' in part


def test_panel_start_from_preset_without_js(web, factory, usage_log, controller):
    assert act(web, "/panel/lamps/room1/start", minutes="10") == ["Room 1 started for 10 min."]
    assert pin_history(factory, 17) == [False, True]
    lamp = controller.lamp("room1")
    assert lamp.state == "on" and lamp.user == "ann" and lamp.remaining_s == 600
    [row] = usage_log.sessions()
    assert (row["lamp_id"], row["user"], row["planned_s"]) == ("room1", "ann", 600)
    part = region(web.get("/panel/").data.decode(), "room1")
    assert 'data-state="on"' in part and ">10:00</p>" in part and "Started by ann" in part


def test_panel_start_refuses_a_duration_that_is_not_a_preset(web, factory):
    for minutes in ("11", "60", "abc", ""):
        assert act(web, "/panel/lamps/room1/start", minutes=minutes) == ["Choose one of Room 1's preset durations."]
    assert pin_history(factory, 17) == [False]


def test_panel_extend_adds_five_minutes_and_shows_refusal_past_max(web, controller):
    act(web, "/panel/lamps/room2/start", minutes="20")
    assert act(web, "/panel/lamps/room2/extend") == ["Room 2: 5 min added, 25:00 left."]
    assert controller.lamp("room2").planned_s == 1500
    act(web, "/panel/lamps/room2/extend")
    [message] = act(web, "/panel/lamps/room2/extend")
    assert message.startswith("Extending Room 2 by 5 min would pass its limit of 30 min")
    assert controller.lamp("room2").planned_s == 1800


def test_panel_stop_and_stop_all(web, controller, factory, usage_log, clock):
    act(web, "/panel/lamps/room1/start", minutes="10")
    act(web, "/panel/lamps/room2/start", minutes="10")
    clock.advance(30)
    assert act(web, "/panel/lamps/room1/stop") == ["Room 1 stopped: the session ended and the lamp is off."]
    assert controller.lamp("room1").state == "off"
    assert act(web, "/panel/stop-all") == ["All lamps are off. Sessions ended: Room 2."]
    assert pin_history(factory, 17) == [False, True, False]
    usage_log.flush(2)
    assert [(s["lamp_id"], s["end_reason"], s["actual_s"]) for s in usage_log.sessions()] == [
        ("room1", "stopped", 30.0),
        ("room2", "stopped", 30.0),
    ]
    assert any(e["why"] == "stop all (panel)" and e["who"] == "ann" for e in usage_log.events())


def test_s19_panel_stop_of_an_off_lamp_says_it_was_already_off(web):
    assert act(web, "/panel/lamps/room1/stop") == ["Room 1 was already off."]
    assert act(web, "/panel/stop-all") == ["All lamps are off. None was running."]


def test_panel_actions_answer_json_for_the_script(web, controller):
    resp = web.post(
        "/panel/lamps/room1/start",
        headers={"Accept": "application/json"},
        data={"minutes": "15", "csrf_token": _token(web)},
    )
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["ok"] is True and body["message"] == "Room 1 started for 15 min."
    assert body["lamps"][0]["state"] == "on" and body["lamps"][0]["clock"] == 900
    resp = web.post(
        "/panel/lamps/room1/start",
        headers={"Accept": "application/json"},
        data={"minutes": "15", "csrf_token": _token(web)},
    )
    assert resp.status_code == 409 and resp.get_json() == {
        **resp.get_json(),
        "ok": False,
        "message": "Room 1 is already on.",
    }


def _token(client) -> str:
    with client.session_transaction() as sess:
        return sess["csrf_token"]


def test_panel_state_json_counts_down_with_the_controller_clock(web, clock, controller):
    post(web, "/panel/lamps/room1/start", minutes="10")
    clock.advance(12.5)
    lamps = web.get("/panel/state.json").get_json()["lamps"]
    assert lamps[0]["remaining_s"] == 587.5 and lamps[0]["clock_text"] == "9:48"
    assert lamps[0]["presets"][0] == {"minutes": 10, "label": "10 min"}
    clock.advance(587.5)
    controller.tick()
    lamps = web.get("/panel/state.json").get_json()["lamps"]
    assert lamps[0]["state"] == "off" and lamps[0]["remaining_s"] is None


def test_panel_shows_cooldown_fault_and_firmware_banners(web, services, controller, clock):
    act(web, "/panel/lamps/room2/start", minutes="10")
    act(web, "/panel/lamps/room2/stop")
    part = region(web.get("/panel/").data.decode(), "room2")
    assert 'data-state="cooldown"' in part and "Cooling down" in part and ">1:00</p>" in part
    assert act(web, "/panel/lamps/room2/start", minutes="10")[0].startswith(
        "Room 2 is cooling down; it can start again in"
    )
    controller.fault("Room 1 is still powered after its relay was switched off (relay stuck closed)", "room1")
    part = region(web.get("/panel/").data.decode(), "room1")
    assert 'data-state="fault"' in part and "relay" not in part  # developer words go to the events page
    assert "This lamp may still be powered although it was switched off. Switch it off at the wall now" in part
    assert "Reset fault" not in part  # practitioners cannot reset
    assert "an admin must reset it" in act(web, "/panel/lamps/room1/start", minutes="10")[0]
    services.firmware_status = lambda: "lost"
    html = web.get("/panel/").data.decode()
    assert re.search(
        r'class="banner banner-firmware" role="alert" data-short="[^"]+">The safety controller is not answering', html
    )
    assert web.get("/panel/state.json").get_json()["firmware"] == "lost"


def test_panel_reloads_itself_without_js_only_while_a_timer_runs(web):
    assert b'http-equiv="refresh"' not in web.get("/panel/").data
    post(web, "/panel/lamps/room1/start", minutes="10")
    assert b'<noscript><meta http-equiv="refresh" content="10"></noscript>' in web.get("/panel/").data


def test_root_redirects_to_the_panel(web):
    assert web.get("/").headers["Location"] == "/panel/"


def test_s18_panel_form_accepts_new_patient(web, controller, clock, usage_log):
    for _ in range(2):  # room1's limit is 60 min: two sessions of 30 for one patient
        act(web, "/panel/lamps/room1/start", minutes="30", new_patient="0")
        clock.advance(30 * 60)
        controller.tick()
    assert act(web, "/panel/lamps/room1/start", minutes="10", new_patient="0")[0].startswith(
        "Room 1 has already run 60 min for this patient"
    )
    assert act(web, "/panel/lamps/room1/start", minutes="10", new_patient="1", confirmed="1") == [
        "Room 1 started for 10 min for a new patient (recorded)."
    ]
    assert act(web, "/panel/lamps/room2/start", minutes="10", new_patient="maybe") == [
        "The new patient field must be 1 or 0."
    ]
    assert [s["continues"] for s in usage_log.sessions()] == [None, 1, None]
    assert [s["new_patient_by"] for s in usage_log.sessions()] == [None, None, "ann"]


def test_s18_panel_new_patient_in_the_rest_window_takes_a_second_step(web, controller, clock, usage_log):
    act(web, "/panel/lamps/room1/start", minutes="30")
    clock.advance(30 * 60)
    controller.tick()
    resp = post(web, "/panel/lamps/room1/start", minutes="10", new_patient="1")  # the first tap on "New patient"
    assert resp.status_code == 303 and resp.headers["Location"] == "/panel/?ask=room1&minutes=10&step=new"
    assert controller.lamp("room1").state == "off"
    html = web.get(resp.headers["Location"]).data.decode()
    assert "Room 1: really a new patient?" in html and "The last patient has 30 min left." in html
    yes = html.index(">Yes, a new patient: start 10 min</button>")
    assert html.index('name="confirmed" value="1"') < yes < html.index(">Same patient (30 min left)</button>")
    resp = web.post(
        "/panel/lamps/room1/start",
        headers={"Accept": "application/json"},
        data={"csrf_token": _token(web), "minutes": "10", "new_patient": "1"},
    )
    assert resp.status_code == 200 and resp.get_json()["ask"]["step"] == "new"  # the script's way: same question
    assert controller.lamp("room1").state == "off"
    # Outside the rest window there is no question: "new patient" starts at once.
    clock.advance(3600)
    assert act(web, "/panel/lamps/room1/start", minutes="10", new_patient="1") == ["Room 1 started for 10 min."]


def test_s18_panel_same_patient_offers_what_is_left_when_the_preset_is_longer(web, controller, clock, usage_log):
    act(web, "/panel/lamps/room1/start", minutes="30")
    clock.advance(30 * 60)
    controller.tick()
    act(web, "/panel/lamps/room1/start", minutes="20", new_patient="0")
    clock.advance(15 * 60)
    act(web, "/panel/lamps/room1/stop")  # 45 min used of room1's 60: 15 min left, and a 20 min preset asked
    resp = post(web, "/panel/lamps/room1/start", minutes="20")
    html = web.get(resp.headers["Location"]).data.decode()
    same = re.search(r"<form[^>]*>(?:(?!</form>).)*btn-same(?:(?!</form>).)*</form>", html, re.S).group(0)
    assert ">Same patient: 15 min, all that is left</button>" in same and "disabled" not in same
    assert 'name="fit" value="1"' in same
    assert act(web, "/panel/lamps/room1/start", minutes="20", new_patient="0", fit="1") == [
        "Room 1 started for 15 min, what the same patient had left."
    ]
    view = controller.lamp("room1")
    assert view.planned_s == 15 * 60 and view.continues == 2
    usage_log.flush(5)
    assert usage_log.sessions()[-1]["new_patient"] in (0, False)


def test_panel_estop_latches_every_lamp_and_answers_recorded(web, controller, factory, usage_log):
    act(web, "/panel/lamps/room1/start", minutes="10")
    resp = web.post("/panel/estop", headers={"Accept": "application/json"}, data={"csrf_token": _token(web)})
    body = resp.get_json()
    assert resp.status_code == 200 and body["ok"] is True and body["recorded"] is True
    assert [l["state"] for l in body["lamps"]] == ["fault", "fault"]
    assert controller.lamp("room2").fault_reason == "emergency stop by ann from the panel"
    assert pin_history(factory, 17) == [False, True, False]
    assert [s["end_reason"] for s in usage_log.sessions()] == ["estop"]
    assert web.post("/panel/estop").status_code == 303  # S21: no CSRF token needed for a Stop


# ---- the continuation question (S18), the limit, the idle lock, the quick switch ---------------------------
def test_s18_panel_asks_same_or_new_patient_once_without_js(web, controller, clock, usage_log):
    act(web, "/panel/lamps/room1/start", minutes="10")
    clock.advance(600)
    controller.tick()
    resp = post(web, "/panel/lamps/room1/start", minutes="30")
    assert resp.status_code == 303 and resp.headers["Location"] == "/panel/?ask=room1&minutes=30"
    assert controller.lamp("room1").state == "off"  # nothing starts before the answer
    html = web.get(resp.headers["Location"]).data.decode()
    assert 'role="dialog"' in html and "Room 1, 30 min: same patient or a new patient?" in html
    assert ">Same patient (50 min left)</button>" in html and ">New patient…</button>" in html
    assert 'http-equiv="refresh"' not in html  # the question waits for its answer
    assert act(web, "/panel/lamps/room1/start", minutes="30", new_patient="0") == ["Room 1 started for 30 min."]
    assert usage_log.sessions()[-1]["continues"] == 1


def test_s18_panel_question_disables_same_patient_only_when_nothing_is_left(web, controller, clock):
    act(web, "/panel/lamps/room2/start", minutes="20")  # room2: limit 30 min, cooldown 60 s
    clock.advance(1200)
    controller.tick()
    clock.advance(60)
    controller.tick()
    html = web.get("/panel/?ask=room2&minutes=20").data.decode()  # 10 min left: offered, not refused
    assert re.search(
        r'<button type="submit" class="btn btn-ask btn-same" >Same patient: 10 min, all that is left', html
    )
    act(web, "/panel/lamps/room2/start", minutes="20", new_patient="0", fit="1")
    clock.advance(600)
    controller.tick()
    clock.advance(60)
    controller.tick()
    html = web.get("/panel/?ask=room2&minutes=20").data.decode()
    assert re.search(
        r'<button type="submit" class="btn btn-ask btn-same" disabled[^>]*>Same patient \(0 s left\)', html
    )
    assert "The same patient has used the whole 30 min limit." in html
    body = web.post(
        "/panel/lamps/room2/start",
        headers={"Accept": "application/json"},
        data={"minutes": "20", "csrf_token": _token(web)},
    ).get_json()
    assert body["ask"]["same_ok"] is False and 'role="dialog"' in body["ask_html"]


def test_panel_bad_question_query_is_a_400_sentence(web):
    resp = web.get("/panel/?ask=room9&minutes=10")
    assert resp.status_code == 400 and b"There is no lamp &#39;room9&#39;" in resp.data
    resp = web.get("/panel/?ask=room1&minutes=11")
    assert resp.status_code == 400 and b"Choose one of Room 1&#39;s preset durations." in resp.data


def test_s3_panel_disables_plus_five_at_the_limit(web):
    act(web, "/panel/lamps/room2/start", minutes="20")
    lamp = web.get("/panel/state.json").get_json()["lamps"][1]
    assert lamp["extend_ok"] is True and "10 min more may be added" in lamp["note"]
    act(web, "/panel/lamps/room2/extend")
    act(web, "/panel/lamps/room2/extend")
    lamp = web.get("/panel/state.json").get_json()["lamps"][1]
    assert lamp["extend_ok"] is False and "at its 30 min limit: no more time can be added" in lamp["note"]
    assert re.search(
        r'class="btn btn-extend" data-ok="extend_ok" disabled>\+5 min',
        region(web.get("/panel/").data.decode(), "room2"),
    )


def test_s3_panel_says_what_may_still_be_added_when_only_plus_five_no_longer_fits(web, controller):
    """Item 17.9: "at its limit" was said while 3 min could still be added."""
    act(web, "/panel/lamps/room2/start", minutes="20")
    act(web, "/panel/lamps/room2/extend")  # 25 of 30 min: +5 fits once more
    controller.extend("room2", 120, "ann")  # 27 of 30 min: 3 min left, +5 min does not fit
    lamp = web.get("/panel/state.json").get_json()["lamps"][1]
    assert lamp["extend_ok"] is False
    assert "only 3 min more may be added, too little for +5 min" in lamp["note"]
    assert "no more time can be added" not in lamp["note"]


@pytest.fixture
def locking(services, cfg):
    from lampctl.config.record import replace

    services.config = replace(cfg, panel=replace(cfg.panel, lock_after_s=120))
    return services


def test_panel_idle_lock_refuses_starts_but_never_a_stop(locking, web, controller, clock, factory):
    act(web, "/panel/lamps/room1/start", minutes="10")
    clock.advance(121)
    assert web.get("/panel/state.json").get_json()["locked"] is True
    [message] = act(web, "/panel/lamps/room2/start", minutes="10")
    assert message.startswith("The panel is locked")
    assert act(web, "/panel/lamps/room1/extend")[0].startswith("The panel is locked")
    assert act(web, "/panel/lamps/room1/stop") == ["Room 1 stopped: the session ended and the lamp is off."]
    assert pin_history(factory, 17) == [False, True, False]
    assert web.get("/panel/state.json").get_json()["locked"] is True  # a Stop does not unlock
    assert controller.lamp("room2").state == "off"


def test_panel_quick_switch_unlocks_under_the_new_name(locking, web, accounts, controller, clock):
    accounts.add_user("bob", "practitioner", "1357")
    clock.advance(121)
    page = web.get("/switch").data.decode()
    assert "Unlock the panel" in page and 'value="bob"' in page and 'value="ann" required checked' in page
    resp = post(web, "/switch", name="bob", pin="0000")
    assert resp.status_code == 401 and b"That name and PIN do not match (4 tries left" in resp.data
    resp = post(web, "/switch", name="bob", pin="1357")
    assert resp.status_code == 303 and resp.headers["Location"] == "/panel/"
    assert flashes(web) == ["The panel now works under bob."]
    assert act(web, "/panel/lamps/room1/start", minutes="10") == ["Room 1 started for 10 min."]
    assert controller.lamp("room1").user == "bob"


def test_panel_start_that_arrives_too_late_is_refused(web, controller):
    import time

    for sent_at, code in ((time.time() - 30, 409), ("soon", 400)):
        resp = web.post(
            "/panel/lamps/room1/start",
            headers={"Accept": "application/json"},
            data={"minutes": "10", "csrf_token": _token(web), "sent_at": sent_at},
        )
        assert resp.status_code == code
    assert controller.lamp("room1").state == "off"
    resp = web.post(
        "/panel/lamps/room1/start",
        headers={"Accept": "application/json"},
        data={"minutes": "10", "csrf_token": _token(web), "sent_at": time.time()},
    )
    assert resp.status_code == 200


def test_panel_fault_words_for_people(web, controller):
    controller.fault("firmware link lost: The firmware on socket://127.0.0.1:37363 sent nothing for 1.50 s", "room1")
    note = web.get("/panel/state.json").get_json()["lamps"][0]["note"]
    assert note == (
        "The safety controller stopped answering, so this lamp was switched off. It stays off until an admin resets it."
    )
    assert "socket" not in web.get("/panel/").data.decode()


@pytest.mark.parametrize(
    ("via", "words"),
    [
        ("from the API", "Emergency stop from the API by ann."),
        ("from the panel", "Emergency stop from the panel by ann."),
        ("over MQTT", "Emergency stop over MQTT (home automation) by ann."),
        ("from the command line", "Emergency stop from the command line on the controller."),
    ],
)
def test_panel_says_where_an_emergency_stop_came_from_and_who(web, controller, via, words):
    controller.estop("ann", f"emergency stop by ann {via}")
    body = web.get("/panel/state.json").get_json()
    assert body["lamps"][0]["note"] == words + " Every lamp stays off until an admin resets it."
    assert [b["kind"] for b in body["banners"]] == ["estop"] and body["banners"][0]["text"].startswith(words)
    assert body["lamps"][0]["estop"] is True


def test_panel_an_abnormal_end_is_an_alarm_and_a_normal_one_is_not(web, controller, clock):
    def end_alarm():
        return web.get("/panel/state.json").get_json()["lamps"][0]["end_alarm"]

    act(web, "/panel/lamps/room1/start", minutes="10")
    clock.advance(600)
    controller.tick()
    assert end_alarm() is None  # time up
    clock.advance(3600)
    act(web, "/panel/lamps/room1/start", minutes="10", new_patient="1")
    act(web, "/panel/lamps/room1/stop")
    assert end_alarm() is None  # stopped by a practitioner
    clock.advance(3600)
    act(web, "/panel/lamps/room1/start", minutes="10", new_patient="1")
    controller.fault("firmware link lost: sent nothing for 1.50 s", "room1")
    assert end_alarm() == (
        "Room 1: the session was cut short. The safety controller stopped answering, so this "
        "lamp was switched off. It stays off until an admin resets it."
    )
    assert web.get("/panel/state.json").get_json()["lamps"][0]["estop"] is False


def test_panel_in_german_and_chinese(web):
    html = web.get("/panel/", headers={"Accept-Language": "de-DE,de;q=0.9"}).data.decode()
    assert '<html lang="de">' in html and ">Alle stoppen</button>" in html
    html = web.get("/panel/", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).data.decode()
    assert '<html lang="zh">' in html and ">全部停止</button>" in html
    resp = web.get("/language/de?next=/panel/")
    assert resp.status_code == 303 and resp.headers["Location"] == "/panel/"
    assert '<html lang="de">' in web.get("/panel/").data.decode()
    assert web.get("/language/fr").status_code == 404


def test_panel_marks_the_last_minute_of_a_session(web, clock):
    act(web, "/panel/lamps/room1/start", minutes="10")
    clock.advance(539)
    assert web.get("/panel/state.json").get_json()["lamps"][0]["warning"] is False
    clock.advance(1)
    assert web.get("/panel/state.json").get_json()["lamps"][0]["warning"] is True
    assert '<section class="lamp warning" id="lamp-room1"' in web.get("/panel/").data.decode()


def test_secure_cookies_setting_marks_the_login_cookie_secure(services, cfg, users):
    from lampctl.config.record import replace

    services.config = replace(cfg, service=replace(cfg.service, secure_cookies=True))
    app = create_app(services, {"TESTING": True, "SECRET_KEY": "k"})
    assert app.config["SESSION_COOKIE_SECURE"] is True
    client = app.test_client()
    client.get("/login")
    with client.session_transaction() as sess:
        token = sess["csrf_token"]
    resp = client.post("/login", data={"name": "ann", "pin": "2468", "csrf_token": token})
    assert resp.status_code == 303 and "Secure" in resp.headers["Set-Cookie"]


def test_panel_labels_worded_once_follow_each_requests_language(web):
    # The presets, the limit and the idle words are kept per language: three languages in turn, twice.
    for _ in range(2):
        for accept, state_label, preset in (
            ("en", "Off · ready", "10 min"),
            ("de-DE,de;q=0.9", "Aus · bereit", "10 Min."),
            ("zh-CN,zh;q=0.9", "关 · 就绪", "10 分钟"),
        ):
            lamp = web.get("/panel/state.json", headers={"Accept-Language": accept}).get_json()["lamps"][0]
            assert (lamp["label"], lamp["presets"][0]["label"]) == (state_label, preset), accept
