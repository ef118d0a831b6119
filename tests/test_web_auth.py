"""Browser-page security: PIN login, lockout, login required everywhere, admin role, CSRF, cookies, headers, secret key."""

from __future__ import annotations

import re
import stat
import threading
import time

import pytest

from lampctl.storage.accounts import Accounts
from lampctl.storage.db import connect
from tests.conftest import pin_history
from tests.procs import wait_until
from web import CSP, Services, create_app
from web.auth import LoginGuard

PUBLIC = {"auth.login", "static", "api.health", "api.openapi", "i18n.language", "panel.running_json"}
# S21: Stops are carried out whatever the credentials (tested in test_s21_* below).
STOPS = {"api.stop", "api.stop_all", "api.estop", "panel.stop", "panel.stop_all", "panel.estop"}


def csrf_from(html: bytes) -> str:
    return re.search(rb'name="csrf_token" value="([^"]+)"', html).group(1).decode()


def login(client, name: str, pin: str, **extra):
    token = csrf_from(client.get("/login").data)
    return client.post("/login", data={"name": name, "pin": pin, "csrf_token": token, **extra})


def session_csrf(client) -> str:
    with client.session_transaction() as sess:
        return sess["csrf_token"]


def post(client, path: str, **data):
    """A form POST as the page sends it, with the session's CSRF token."""
    return client.post(path, data={"csrf_token": session_csrf(client), **data})


@pytest.fixture
def web_app(services, clock):
    return create_app(services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic})


@pytest.fixture
def web(web_app, users):
    return web_app.test_client()


def test_login_form_fields_are_labelled_name_and_pin(web):
    html = web.get("/login").data.decode()
    assert '<label for="name">Name</label>' in html and '<label for="pin">PIN</label>' in html
    assert 'id="name" name="name"' in html and 'id="pin" name="pin" type="password"' in html


def test_login_logout_roundtrip_is_logged(web, usage_log):
    resp = login(web, "ann", "2468")
    assert resp.status_code == 303 and resp.headers["Location"] == "/panel/"
    assert web.get("/panel/").status_code == 200
    resp = post(web, "/logout")
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    assert web.get("/panel/").status_code == 302
    usage_log.flush(2)
    whys = [e["why"] for e in usage_log.events() if e["who"] == "ann"]
    assert whys == ["logged out", "logged in to the panel"]


def test_login_wrong_pin_is_refused_with_one_sentence(web):
    resp = login(web, "ann", "0000")
    assert resp.status_code == 401
    assert b"That name and PIN do not match (4 tries left" in resp.data
    assert web.get("/panel/").status_code == 302


def test_login_locks_name_after_five_wrong_pins_even_for_right_pin(web, clock, usage_log):
    for _ in range(4):
        assert login(web, "ann", "1111").status_code == 401
    resp = login(web, "ann", "1111")
    assert resp.status_code == 429 and b"locked for 5 minutes" in resp.data
    resp = login(web, "ann", "2468")  # the right PIN, still refused
    assert resp.status_code == 429 and b"Too many wrong PINs for ann" in resp.data
    assert web.get("/panel/").status_code == 302
    # Other names are not affected.
    assert login(web, "admin", "1234").status_code == 303
    post(web, "/logout")
    usage_log.flush(2)
    locked = [e for e in usage_log.events() if e["why"] == "login locked out after 5 wrong PINs"]
    assert [(e["who"], e["lamp_id"]) for e in locked] == [("ann", None)]
    clock.advance(299)
    assert login(web, "ann", "2468").status_code == 429
    clock.advance(2)
    assert login(web, "ann", "2468").status_code == 303


def test_login_failures_outside_the_window_do_not_add_up(web, clock):
    for _ in range(4):
        login(web, "ann", "1111")
    clock.advance(301)
    for _ in range(4):
        assert login(web, "ann", "1111").status_code == 401
    assert login(web, "ann", "2468").status_code == 303


def test_login_guard_unit_counts_per_name_case_blind():
    now = [0.0]
    guard = LoginGuard(lambda: now[0])

    def wrong(name):
        assert guard.reserve(name) == 0
        return guard.failed(name)

    assert [wrong("Ann") for _ in range(4)] == [(4, False), (3, False), (2, False), (1, False)]
    assert wrong("ann") == (0, True)
    assert guard.locked_for("ANN") == 300 and guard.reserve("aNN") == 300
    now[0] = 300
    assert guard.locked_for("ann") == 0


def test_login_finds_the_name_whatever_its_case_or_unicode_spelling(web, accounts):
    import unicodedata

    accounts.add_user("Dr. Müller", "practitioner", "1357")
    for typed in ("dr. müller", "DR. MÜLLER", unicodedata.normalize("NFD", "dr. Müller"), " Dr. Müller "):
        client = web.application.test_client()
        assert login(client, typed, "1357").status_code == 303, typed
        page = client.get("/panel/").data.decode()
        assert "Dr. Müller" in page, typed  # works under the name as kept, not as typed


def test_login_lockout_counts_every_spelling_of_a_name_as_one(web, accounts, usage_log):
    import unicodedata

    accounts.add_user("Müller", "practitioner", "1357")
    for typed in ("müller", "MÜLLER", unicodedata.normalize("NFD", "Müller"), "mÜller"):
        assert login(web, typed, "0000").status_code == 401, typed
    resp = login(web, "MüLLER", "0000")
    assert resp.status_code == 429 and b"locked for 5 minutes" in resp.data
    assert login(web, "Müller", "1357").status_code == 429  # the right PIN, by any spelling, waits too


def test_login_guard_reserves_attempts_before_the_check():
    guard = LoginGuard(lambda: 0.0)
    assert [guard.reserve("ann") for _ in range(7)] == [0, 0, 0, 0, 0, 300, 300]
    assert guard.failed("ann") == (0, True)
    assert guard.failed("ann") == (0, False)  # the other four in flight: locked once, logged once


def test_login_builtin_cli_account_can_never_log_in(web, accounts):
    accounts.replace_system_token()
    for pin in ("!", "0000", "1234"):
        assert login(web, "cli", pin).status_code in (400, 401, 429)
    assert web.get("/admin/log").status_code == 302


def test_login_next_only_redirects_within_the_site(web):
    assert login(web, "ann", "2468", next="https://evil.example/").headers["Location"] == "/panel/"
    post(web, "/logout")
    assert login(web, "ann", "2468", next="/panel/?x=1").headers["Location"] == "/panel/?x=1"


def test_removed_user_loses_access_on_next_request(web, accounts):
    login(web, "ann", "2468")
    assert web.get("/panel/").status_code == 200
    accounts.remove_user("ann")
    assert web.get("/panel/").status_code == 302
    assert web.get("/panel/state.json").status_code == 401


def test_role_change_applies_on_next_request(web, accounts):
    login(web, "ann", "2468")
    assert web.get("/admin/log").status_code == 403
    accounts.set_role("ann", "admin")
    assert web.get("/admin/log").status_code == 200


def _example_url(rule) -> str:
    values = {arg: {"lamp_id": "room1", "name": "ann"}.get(arg, "x") for arg in rule.arguments}
    return rule.build(values, append_unknown=False)[1]


def test_every_route_but_login_static_and_health_rejects_the_anonymous(web_app):
    client = web_app.test_client()
    checked = 0
    for rule in web_app.url_map.iter_rules():
        if rule.endpoint in PUBLIC | STOPS:
            continue
        url = _example_url(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            resp = client.open(url, method=method)
            checked += 1
            if rule.endpoint.startswith("api."):
                assert resp.status_code == 401, (method, url)
                assert resp.get_json()["code"] == "unauthorized"
            elif resp.status_code == 302:
                assert resp.headers["Location"].startswith("/login"), (method, url)
            else:
                assert resp.status_code in (401, 403), (method, url, resp.status_code)
    assert checked > 20


def test_practitioner_gets_403_on_every_admin_page(web, web_app):
    login(web, "ann", "2468")
    token = session_csrf(web)
    admin_rules = [r for r in web_app.url_map.iter_rules() if r.endpoint.startswith("admin.")]
    assert len(admin_rules) >= 10
    for rule in admin_rules:
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            resp = web.open(_example_url(rule), method=method, data={"csrf_token": token})
            assert resp.status_code == 403, (method, rule.rule)
    assert b"ask an admin" in web.get("/admin/users").data


def test_csrf_post_without_token_is_400_and_changes_nothing(web, factory, controller):
    login(web, "ann", "2468")
    before = pin_history(factory, 17)
    for data in ({"minutes": "10"}, {"minutes": "10", "csrf_token": "forged"}):
        resp = web.post("/panel/lamps/room1/start", data=data)
        assert resp.status_code == 400
        assert b"security token" in resp.data
    assert pin_history(factory, 17) == before == [False]
    assert controller.lamp("room1").state == "off"


def test_csrf_login_without_token_is_400(web):
    resp = web.post("/login", data={"name": "ann", "pin": "2468"})
    assert resp.status_code == 400
    assert web.get("/panel/").status_code == 302


def test_session_cookie_is_httponly_and_samesite_strict(web):
    resp = login(web, "ann", "2468")
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("lampctl_session=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_pages_send_csp_without_inline_script_and_other_headers(web):
    login(web, "admin", "1234")
    for path in ("/login", "/panel/", "/admin/log", "/admin/usage", "/api/health"):
        resp = web.get(path)
        assert resp.headers["Content-Security-Policy"] == CSP
        assert "'unsafe-inline'" not in CSP
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        html = resp.data.decode()
        assert "style=" not in html
        assert re.search(r"<script(?![^>]*\ssrc=)", html) is None  # every script is a file
        assert re.search(r"<[^>]*\son[a-z]+=", html) is None  # no inline event handlers either


def test_secret_key_generated_on_first_run_with_mode_0600_and_reused(cfg, controller, usage_log, accounts):
    services = Services(controller=controller, usage_log=usage_log, config=cfg, accounts=accounts)
    path = cfg.service.database.parent / "secret.key"
    assert not path.exists()
    first = create_app(services, {"TESTING": True})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.config["SECRET_KEY"]) >= 64
    second = create_app(services, {"TESTING": True})
    assert second.config["SECRET_KEY"] == first.config["SECRET_KEY"]


def test_unknown_page_is_html_404_and_unknown_api_url_json_404(web):
    resp = web.get("/nowhere")
    assert resp.status_code == 404 and b"There is no such page." in resp.data
    resp = web.get("/api/nowhere")
    assert resp.status_code == 404 and resp.get_json()["code"] == "not-found"


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\t/evil.example/",
        "/\r\n/evil.example/",
        "/\n/evil.example",
        "/\\evil.example/",
        "\\\\evil.example/",
        "/ /evil.example/",
        "/\x00/evil",
        "/\x0b/evil.example/",
        "/\u2028/evil.example/",
        "/\u200b/evil.example/",
        "/\u00a0/evil.example/",
        "javascript:alert(1)",
        "http:/evil.example",
        "/panel/\t",
        "panel/",
        "",
        "https:///evil.example",
    ],
)
def test_login_next_never_leaves_the_site(web, target):
    resp = login(web, "ann", "2468", next=target)
    assert resp.status_code == 303 and resp.headers["Location"] == "/panel/", target
    assert not web.get("/panel/").headers.get("Location")


def test_login_next_keeps_paths_on_this_site(web):
    for target in ("/panel/?x=1", "/admin/log?from=2026-01-01&lamp=room1", "/panel/#room1"):
        assert login(web, "admin", "1234", next=target).headers["Location"] == target
        post(web, "/logout")


def test_login_parallel_wrong_pins_never_pass_the_limit(web_app, accounts, usage_log, monkeypatch):
    checked, release = [], threading.Event()
    real_check = accounts.check_pin

    def slow_check(name, pin):  # the hash is slow: every guess is in flight at once
        checked.append(pin)
        release.wait(30)
        return real_check(name, pin)

    monkeypatch.setattr(accounts, "check_pin", slow_check)
    clients = [web_app.test_client() for _ in range(10)]
    tokens = [csrf_from(c.get("/login").data) for c in clients]
    codes = []

    def guess(client, token, n):
        resp = client.post("/login", data={"name": "ann", "pin": f"{9000 + n}", "csrf_token": token})
        codes.append(resp.status_code)

    threads = [
        threading.Thread(target=guess, args=(c, t, n)) for n, (c, t) in enumerate(zip(clients, tokens, strict=False))
    ]
    for t in threads:
        t.start()
    wait_until(lambda: len(codes) >= 5, 30, "five guesses refused without a check")
    assert len(checked) == 5 and codes == [429] * 5
    release.set()
    for t in threads:
        t.join(30)
    # The five checked guesses fill the window, so the name is locked as the first of them fails.
    assert codes == [429] * 10 and len(checked) == 5
    assert login(web_app.test_client(), "ann", "2468").status_code == 429
    assert usage_log.flush(5)
    assert [e["why"] for e in usage_log.events()].count("login locked out after 5 wrong PINs") == 1


def test_logout_ends_a_cookie_copied_before_it(web, web_app):
    login(web, "ann", "2468")
    cookie = web.get_cookie("lampctl_session").value
    thief = web_app.test_client()
    thief.set_cookie("lampctl_session", cookie)
    assert thief.get("/panel/").status_code == 200
    post(web, "/logout")
    assert thief.get("/panel/").status_code == 302
    assert thief.get("/panel/state.json").status_code == 401


def test_pin_change_ends_every_login_of_that_user(web, web_app, accounts):
    login(web, "ann", "2468")
    other = web_app.test_client()
    login(other, "admin", "1234")
    accounts.set_pin("ann", "1357")
    assert web.get("/panel/").status_code == 302
    assert other.get("/panel/").status_code == 200
    assert login(web, "ann", "1357").status_code == 303


def test_login_survives_a_restart_of_the_service(web, cfg, controller, usage_log, accounts, clock):
    login(web, "ann", "2468")
    cookie = web.get_cookie("lampctl_session").value
    restarted = Accounts(cfg.service.database, wall=clock.wall)
    app = create_app(
        Services(controller=controller, usage_log=usage_log, config=cfg, accounts=restarted),
        {"TESTING": True, "SECRET_KEY": "test-key"},
    )
    client = app.test_client()
    client.set_cookie("lampctl_session", cookie)
    assert client.get("/panel/").status_code == 200


def test_s10_blocked_database_reader_does_not_delay_bearer_or_session_auth(
    web_app, web, accounts, usage_log, controller, factory, users
):
    login(web, "ann", "2468")
    controller.start("room1", 600, "ann")
    controller.start("room2", 600, "ann")
    frozen, thaw = threading.Event(), threading.Event()

    def hung_connect(path):  # a frozen filesystem: the call blocks until the disk returns
        frozen.set()
        thaw.wait(60)
        return connect(path)

    accounts._connect = hung_connect
    reloader = threading.Thread(target=accounts.reload, daemon=True)
    reloader.start()
    try:
        assert frozen.wait(10)
        started = time.monotonic()
        resp = web_app.test_client().post("/api/lamps/room1/stop", headers={"Authorization": f"Bearer {users['ann']}"})
        api_s = time.monotonic() - started
        assert resp.status_code == 200 and resp.get_json()["lamp"]["relay_on"] is False
        started = time.monotonic()
        resp = post(web, "/panel/lamps/room2/stop")
        panel_s = time.monotonic() - started
        assert resp.status_code == 303 and controller.lamp("room2").state in ("off", "cooldown")
        assert pin_history(factory, 17)[-1] is False and pin_history(factory, 18)[-1] is True  # room2 is active-low
        assert reloader.is_alive()  # the disk was hung the whole time
        assert api_s < 2.0 and panel_s < 2.0, (api_s, panel_s)
    finally:
        thaw.set()
        reloader.join(10)
