"""The collector's pages need an admin's PIN login (the node's login, lockout, cookie and CSRF), on its own accounts."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from lampctl.fleet.central_log import CentralLog, check_record
from lampctl.fleet.logins import CollectorLogins, accounts_path
from lampctl.storage.db import connect
from lampctl.testing import ROOT, free_port, lampctl, wait_until
from tests.test_collector import StubCollector, session
from tests.test_web_auth import csrf_from, login, session_csrf
from web.fleet import create_fleet_app

ADMIN, ADMIN_PIN = "Boss", "1357"
PRACTITIONER, PRACTITIONER_PIN = "ann", "2468"
# Every page of the collector, the CSV and the JSON its tests poll: none answers without a login.
PAGES = ["/", "/log", "/log?node=n1&page=1", "/log.csv", "/log.csv?node=n1", "/usage", "/usage?from=2026-11-20"]


def fleet_app(tmp_path):
    central = CentralLog(tmp_path / "central.db")
    central.write([("session", check_record("session", "n1", session(i))) for i in range(1, 4)])
    logins = CollectorLogins(central.path)
    logins.accounts.add_user(ADMIN, "admin", ADMIN_PIN, by="test")
    logins.accounts.add_user(PRACTITIONER, "practitioner", PRACTITIONER_PIN, by="test")
    app = create_fleet_app(
        StubCollector(central), logins.accounts, {"TESTING": True, "SECRET_KEY": "test-key"}, audit=logins.audit
    )
    return app, logins


@pytest.fixture
def fleet(tmp_path):
    app, logins = fleet_app(tmp_path)
    yield app.test_client(), logins
    logins.close()


def events(logins) -> list[tuple[str, str]]:
    conn = connect(logins.path)
    try:
        return [(r["who"], r["why"]) for r in conn.execute("SELECT who, why FROM events ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.parametrize("path", PAGES)
def test_fleet_page_without_a_login_goes_to_the_login_page(fleet, path):
    client, _ = fleet
    resp = client.get(path)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/login?next=")
    assert "session" not in resp.get_data(as_text=True)  # no row of the log in the redirect's body


@pytest.mark.parametrize(
    "path, headers",
    [("/api/fleet", {}), ("/", {"Accept": "application/json"}), ("/log", {"Accept": "application/json"})],
)
def test_fleet_json_without_a_login_is_401(fleet, path, headers):
    client, _ = fleet
    resp = client.get(path, headers=headers)
    assert resp.status_code == 401 and resp.get_json() == {"error": "Log in first.", "code": "unauthorized"}


def test_fleet_admin_logs_in_and_reaches_every_page(fleet):
    client, logins = fleet
    resp = login(client, ADMIN.lower(), ADMIN_PIN, next="/log?node=n1")  # any case, as on a node
    assert resp.status_code == 303 and resp.headers["Location"] == "/log?node=n1"
    for path in PAGES:
        assert client.get(path).status_code == 200, path
    assert client.get("/api/fleet").get_json()["lamps"]
    assert "3 sessions" in client.get("/log").get_data(as_text=True)
    assert (ADMIN, "logged in to the fleet pages") in events(logins)
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("lampctl_fleet_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_fleet_login_refuses_a_practitioner_with_a_sentence(fleet):
    client, _ = fleet
    resp = login(client, PRACTITIONER, PRACTITIONER_PIN)
    assert resp.status_code == 403
    assert "Only an admin may open the fleet pages; ann is a practitioner." in resp.get_data(as_text=True)
    assert client.get("/").status_code == 302 and client.get("/api/fleet").status_code == 401


def test_fleet_admin_made_practitioner_is_refused_on_the_next_page(fleet):
    client, logins = fleet
    logins.accounts.add_user("Second", "admin", "9753", by="test")  # the last admin cannot be demoted
    assert login(client, ADMIN, ADMIN_PIN).status_code == 303
    logins.accounts.set_role(ADMIN, "practitioner", by="test")
    resp = client.get("/log")
    assert resp.status_code == 403 and "Boss is a practitioner" in resp.get_data(as_text=True)


def test_fleet_wrong_pins_lock_the_name_as_on_a_node(fleet):
    client, logins = fleet
    for tries_left in (4, 3, 2, 1):
        resp = login(client, ADMIN, "0000")
        assert resp.status_code == 401 and f"{tries_left} tr" in resp.get_data(as_text=True)
    assert login(client, ADMIN, "0000").status_code == 429
    resp = login(client, ADMIN, ADMIN_PIN)  # the right PIN, but the name is locked
    assert resp.status_code == 429 and "locked" in resp.get_data(as_text=True)
    assert client.get("/").status_code == 302
    assert (ADMIN, "login locked out after 5 wrong PINs") in events(logins)


def test_fleet_login_form_without_its_csrf_token_is_refused(fleet):
    client, _ = fleet
    client.get("/login")
    resp = client.post("/login", data={"name": ADMIN, "pin": ADMIN_PIN})
    assert resp.status_code == 400
    resp = client.post("/login", data={"name": ADMIN, "pin": ADMIN_PIN, "csrf_token": "forged"})
    assert resp.status_code == 400
    assert client.get("/").status_code == 302  # neither logged anyone in


def test_fleet_logout_needs_its_csrf_token_and_ends_a_copied_cookie(fleet, tmp_path):
    client, logins = fleet
    assert login(client, ADMIN, ADMIN_PIN).status_code == 303
    page = client.get("/").data
    assert b'action="/logout"' in page and csrf_from(page) == session_csrf(client)
    copy = client.get_cookie("lampctl_fleet_session").value
    assert client.post("/logout", data={}).status_code == 400
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 400
    assert client.get("/").status_code == 200  # still logged in
    resp = client.post("/logout", data={"csrf_token": session_csrf(client)})
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    assert client.get("/").status_code == 302
    thief = fleet_app_client_with_cookie(client, copy)
    assert thief.get("/").status_code == 302
    assert (ADMIN, "logged out of the fleet pages") in events(logins)


def fleet_app_client_with_cookie(client, value: str):
    other = client.application.test_client()
    other.set_cookie("lampctl_fleet_session", value)
    return other


def test_fleet_accounts_live_beside_the_central_log(tmp_path):
    assert accounts_path(tmp_path / "var" / "central.db") == tmp_path / "var" / "accounts.db"


def test_lampctl_user_on_a_collector_config_manages_the_collector_s_accounts(tmp_path):
    config = tmp_path / "central.toml"
    config.write_text('[collector]\ndatabase = "var/central.db"\n\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n')
    out = lampctl("user", "add", "Boss", "--role", "admin", "--pin", ADMIN_PIN, config=config).stdout
    assert out.strip() == "added admin Boss"
    lampctl("user", "add", "ann", "--role", "practitioner", "--pin", PRACTITIONER_PIN, config=config)
    listed = lampctl("user", "list", config=config).stdout
    assert "Boss" in listed and "ann" in listed
    assert lampctl("user", "remove", "ANN", config=config).stdout.strip() == "removed ann"
    refused = lampctl("user", "remove", "Boss", config=config, check=False)
    assert refused.returncode == 1 and "last admin" in refused.stderr
    logins = CollectorLogins(tmp_path / "var" / "central.db")
    try:
        assert [u["name"] for u in logins.accounts.users()] == ["Boss"]
        assert logins.accounts.check_pin("boss", ADMIN_PIN) == {"name": "Boss", "role": "admin"}
        assert ("cli", "user Boss added as admin") in events(logins)
    finally:
        logins.close()
    assert not (tmp_path / "var" / "central.db").exists()  # the central log's file is not the accounts'


def test_lampctl_user_on_a_collector_config_with_an_error_says_which_key(tmp_path):
    config = tmp_path / "central.toml"
    config.write_text('[collector]\nbind = "nowhere"\n\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n')
    proc = lampctl("user", "list", config=config, check=False)
    assert proc.returncode == 2 and "collector.bind" in proc.stderr


def test_lampctl_collect_without_an_admin_says_how_to_add_one(tmp_path):
    config = tmp_path / "central.toml"
    config.write_text(f'[collector]\nbind = "127.0.0.1:{free_port()}"\n\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n')
    err = tmp_path / "collect.err"
    with open(err, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lampctl", "collect", "--config", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: "listening on" in err.read_text(), 30, "the collector serving")
        assert (
            f"no admin can log in yet: add one with `lampctl user add NAME --role admin --pin PIN --config {config}`"
        ) in err.read_text()
        for name in ("accounts.db", "secret.key"):  # beside the central log, private
            assert stat.S_IMODE((tmp_path / "var" / name).stat().st_mode) == 0o600, name
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
