"""Shared fixtures: mock pins, a fake clock, a usage log in tmp, a controller, the Flask app."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from lampctl import config as config_mod
from lampctl.core.clock import FakeClock
from lampctl.core.controller import SessionController
from lampctl.devices.hardware import RelayBank
from lampctl.storage.accounts import Accounts
from lampctl.storage.store import UsageLog
from web import Services, create_app

BASE_CONFIG = """
[service]
bind = "127.0.0.1:0"
database = "lampctl.db"
pin_factory = "mock"

[safety]
estop_pin = 27

[[lamps]]
id = "room1"
name = "Room 1"
relay_pin = 17
max_minutes = 60
default_minutes = 20
presets = [10, 15, 20, 30]
feedback_pin = 22

[[lamps]]
id = "room2"
name = "Room 2"
relay_pin = 18
active_high = false
max_minutes = 30
presets = [10, 20, 30]
cooldown_s = 60
"""


def write_config(tmp_path: Path, text: str = BASE_CONFIG, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def factory():
    factory = MockFactory()
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = None


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def cfg(tmp_path):
    return config_mod.load(write_config(tmp_path))


@pytest.fixture
def relays(cfg, factory):
    bank = RelayBank(cfg.lamps, factory, estop_pin=cfg.safety.estop_pin)
    yield bank
    bank.close()


@pytest.fixture
def usage_log(cfg, clock):
    log = UsageLog(cfg.service.database, wall=clock.wall)
    log.start()
    yield log
    log.close()


@pytest.fixture
def accounts(cfg, clock, usage_log):
    """Accounts on the same database, answering from memory; no reload thread (tests call reload())."""
    acc = Accounts(cfg.service.database, wall=clock.wall, audit=usage_log.event, monotonic=clock.monotonic)
    yield acc
    acc.close()


@pytest.fixture
def controller(cfg, relays, clock, usage_log):
    ctl = SessionController(cfg.lamps, relays, clock, usage_log)
    relays.on_estop(ctl.estop)
    return ctl


def pin_history(factory, number) -> list[bool]:
    """The whole output history of a mock pin (what the relay coil really saw)."""
    return [s.state for s in factory.pin(number).states]


@pytest.fixture
def services(cfg, controller, usage_log, accounts):
    return Services(controller=controller, usage_log=usage_log, config=cfg, accounts=accounts)


@pytest.fixture
def app(services):
    return create_app(services, {"TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def users(accounts):
    """Demo accounts with tokens: {"admin": token, "ann": token}."""
    accounts.add_user("admin", "admin", "1234")
    accounts.add_user("ann", "practitioner", "2468")
    return {"admin": accounts.create_token("admin"), "ann": accounts.create_token("ann")}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}
