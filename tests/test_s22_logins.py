"""S22: a wall-clock step logs nobody in or out; a login's age runs on the monotonic clock."""

from __future__ import annotations

from datetime import timedelta

import itsdangerous.timed
import pytest

from lampctl.storage.accounts import LOGIN_LIFETIME_S, Accounts
from tests.conftest import pin_history
from tests.test_web_auth import login, post
from web import Services, create_app

YEARS_30 = 30 * 365 * 86400.0


class SteppedWall:
    """The fake clock's wall time plus a step the test sets; the monotonic clock is untouched."""

    def __init__(self, clock):
        self.clock, self.step = clock, 0.0

    def __call__(self):
        return self.clock.wall() + timedelta(seconds=self.step)

    def time(self) -> float:  # itsdangerous.timed reads time.time() to sign and check cookies
        return self().timestamp()


@pytest.fixture
def wall(clock):
    return SteppedWall(clock)


@pytest.fixture
def stepped_accounts(cfg, clock, usage_log, wall):
    acc = Accounts(cfg.service.database, wall=wall, audit=usage_log.event, monotonic=clock.monotonic)
    acc.add_user("ann", "practitioner", "2468")
    yield acc
    acc.close()


def test_s22_login_age_runs_on_the_monotonic_clock_whatever_the_wall_clock_does(stepped_accounts, clock, wall):
    acc = stepped_accounts
    login_id = acc.create_login("ann")
    for step in (YEARS_30, -YEARS_30, 2.0, -2.0, 13 * 3600.0, -86400.0):
        wall.step = step
        assert acc.user_for_login(login_id)["name"] == "ann", step
        acc.create_login("ann")  # tidying old logins must not judge them by the wall clock either
        acc.reload()
        assert acc.user_for_login(login_id)["name"] == "ann", step
    clock.advance(LOGIN_LIFETIME_S - 1)
    assert acc.user_for_login(login_id) is not None
    clock.advance(2)
    assert acc.user_for_login(login_id) is None  # a shift later by the monotonic clock, whatever the wall says


def test_s22_restart_counts_a_logins_recorded_age_within_one_shift(cfg, clock, usage_log, stepped_accounts, wall):
    fresh, old = stepped_accounts.create_login("ann"), None
    clock.advance(LOGIN_LIFETIME_S - 3600)
    wall.step = YEARS_30  # a clock far ahead: the record of `late` is "from the future" once it is put right
    late = stepped_accounts.create_login("ann")
    wall.step = 0.0
    old = fresh
    restarted = Accounts(cfg.service.database, wall=wall, audit=usage_log.event, monotonic=lambda: 5.0)
    try:
        assert restarted.user_for_login(old)["name"] == "ann"  # 11 h old by its record: one hour left
        assert restarted.user_for_login(late)["name"] == "ann"  # "from the future": counts as fresh
    finally:
        restarted.close()
    wall.step = 2 * LOGIN_LIFETIME_S
    restarted = Accounts(cfg.service.database, wall=wall, audit=usage_log.event, monotonic=lambda: 5.0)
    try:
        assert restarted.user_for_login(old) is None  # past its shift by the record
    finally:
        restarted.close()


@pytest.fixture
def tablet(cfg, controller, usage_log, stepped_accounts, clock, monkeypatch, wall):
    # Flask's cookie signer reads the wall clock through itsdangerous: give it the stepped one.
    monkeypatch.setattr(itsdangerous.timed, "time", wall)
    services = Services(controller=controller, usage_log=usage_log, config=cfg, accounts=stepped_accounts)
    app = create_app(services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic})
    return app.test_client()


@pytest.mark.parametrize("step", [2.0, -2.0, YEARS_30, -YEARS_30, 13 * 3600.0])
def test_s22_a_wall_clock_step_either_way_logs_no_tablet_out(tablet, wall, factory, step):
    wall.step = step  # e.g. a clock 2 s fast when the cookie was signed, or a Pi that booted at 1970
    assert login(tablet, "ann", "2468").status_code == 303
    wall.step = 0.0  # NTP puts the clock right
    resp = tablet.get("/panel/")
    assert resp.status_code == 200, resp.headers.get("Location")
    assert post(tablet, "/panel/lamps/room1/start", minutes="10").status_code == 303
    assert pin_history(factory, 17) == [False, True]
    wall.step = -step  # and stepped the other way mid-shift
    assert tablet.get("/panel/").status_code == 200
    assert post(tablet, "/panel/lamps/room1/extend").status_code == 303


def test_s22_login_cookie_has_max_age_and_no_timestamp(tablet):
    login(tablet, "ann", "2468")
    cookie = tablet.get_cookie("lampctl_session")
    assert cookie.max_age == 12 * 3600
    # [.]payload.signature ("." first when compressed): no signing time a clock step could judge.
    assert cookie.value.lstrip(".").count(".") == 1
