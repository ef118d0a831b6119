"""lampctl doctor against the simulated microcontroller: a good install, mismatches, and the click test."""

from __future__ import annotations

import argparse
import socket
import textwrap
from pathlib import Path

import pytest

from lampctl import cli
from lampctl.cli import tools as cli_tools
from tests.procs import Simulator, free_port

pytestmark = pytest.mark.integration


def doctor_config(
    tmp_path: Path, sim_port: int, *, lamps: int = 2, port: int | None = None, factory: str = "mock"
) -> Path:
    (tmp_path / "var").mkdir(exist_ok=True)
    text = textwrap.dedent(f"""
        [service]
        bind = "127.0.0.1:{port or free_port()}"
        database = "var/lampctl.db"
        pin_factory = "{factory}"
        [safety]
        heartbeat_s = 0.2
        [firmware]
        port = "socket://127.0.0.1:{sim_port}"
        watchdog_s = 1.0
        [[lamps]]
        id = "room1"
        relay_pin = 17
        feedback_pin = 22
        """)
    for i in range(1, lamps):
        text += f'[[lamps]]\nid = "room{i + 1}"\nrelay_pin = {17 + i}\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture
def simulator():
    sim = Simulator(lamps=2, watchdog_s=1.0)
    yield sim
    sim.stop()


def run(config: Path, capsys, *, click=False, synchronised=lambda: True, **options) -> tuple[int, dict]:
    rc = cli_tools.run_doctor(argparse.Namespace(config=str(config), click=click), synchronised=synchronised, **options)
    lines = capsys.readouterr().out.splitlines()
    checks = {}
    for line in lines:
        status, _, rest = line.partition(" ")
        if status in ("OK", "WARN", "FAIL", "SKIP"):
            name, _, detail = rest.strip().partition(": ")
            checks[name] = (status, detail)
    return rc, checks


def test_doctor_good_install_exits_0(tmp_path, simulator, capsys):
    rc, checks = run(doctor_config(tmp_path, simulator.port), capsys)
    assert rc == 0
    assert {name: status for name, (status, _) in checks.items()} == {
        "config": "OK",
        "port": "OK",
        "database": "OK",
        "clock": "OK",
        "firmware": "OK",
        "pins": "WARN",
    }
    assert "2 lamp(s), watchdog 1000 ms" in checks["firmware"][1]
    assert "simulated pins" in checks["pins"][1]


def test_doctor_mismatched_firmware_fails_with_the_fix(tmp_path, simulator, capsys):
    rc, checks = run(doctor_config(tmp_path, simulator.port, lamps=3), capsys)
    assert rc == 1
    status, detail = checks["firmware"]
    assert status == "FAIL" and detail.startswith("lamps: the board drives 2 relay(s)") and "firmware flash" in detail


def test_s22_doctor_unsynchronised_clock_is_a_warning_with_the_fix_and_exits_0(tmp_path, simulator, capsys):
    rc, checks = run(doctor_config(tmp_path, simulator.port), capsys, synchronised=lambda: False)
    assert rc == 0
    assert checks["clock"][0] == "WARN" and "timedatectl set-ntp true" in checks["clock"][1]
    assert "sessions stay timed correctly" in checks["clock"][1]


def test_doctor_busy_port_skips_the_hardware(tmp_path, simulator, capsys):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        config = doctor_config(tmp_path, simulator.port, port=listener.getsockname()[1])
        rc, checks = run(config, capsys)
    assert rc == 1
    assert checks["port"][0] == "FAIL" and "sudo systemctl stop lampctl" in checks["port"][1]
    assert checks["firmware"][0] == checks["pins"][0] == "SKIP"
    assert simulator.lines == [l for l in simulator.lines if l["why"] == "boot"]  # nobody talked to it


def test_doctor_missing_data_directory_fails(tmp_path, simulator, capsys):
    config = doctor_config(tmp_path, simulator.port)
    config.write_text(config.read_text().replace("var/lampctl.db", "nowhere/lampctl.db"))
    rc, checks = run(config, capsys)
    assert rc == 1
    assert checks["database"][0] == "FAIL" and "sudo install -d -o lampctl" in checks["database"][1]


def test_doctor_unavailable_pin_factory_fails(tmp_path, simulator, capsys):
    rc, checks = run(doctor_config(tmp_path, simulator.port, factory="pigpio"), capsys)
    assert rc == 1
    assert checks["pins"][0] == "FAIL" and "pigpio" in checks["pins"][1]


def test_doctor_bad_config_exits_2(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text("[service]\nbind = 8080\n")
    assert cli.main(["doctor", "--config", str(config)]) == 2
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("FAIL config: ")


def test_doctor_click_reads_feedback_and_arms_the_firmware(tmp_path, simulator, capsys):
    rc, checks = run(doctor_config(tmp_path, simulator.port), capsys, click=True, click_s=0.05)
    assert rc == 0
    assert checks["click room1"] == ("OK", "lamp powered and released; feedback pin 22 followed")
    assert checks["click room2"][0] == "WARN" and "no feedback_pin" in checks["click room2"][1]
    simulator.wait_line(5, lamp=1, on=True, why="armed")
    on_off = [(l["lamp"], l["on"]) for l in simulator.lines if l["why"] != "boot"]
    assert on_off == [(0, True), (0, False), (1, True), (1, False)]


def test_doctor_click_feedback_that_never_comes_fails(tmp_path, simulator, capsys):
    rc, checks = run(doctor_config(tmp_path, simulator.port), capsys, click=True, click_s=0.05, wire_feedback=False)
    assert rc == 1
    assert checks["click room1"][0] == "FAIL" and "stayed off" in checks["click room1"][1]
    simulator.wait_line(5, lamp=1, on=False, why="off")
    assert simulator.lines[-1]["on"] is False
