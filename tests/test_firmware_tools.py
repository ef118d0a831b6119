"""lampctl firmware check (against the simulator process) and flash (files, generated settings, mpremote)."""

from __future__ import annotations

import ast
import os
import textwrap
from pathlib import Path

import pytest

from firmware_bridge import protocol
from firmware_bridge.firmware.logic import FIRMWARE_VERSION
from lampctl import cli
from lampctl import config as config_mod
from lampctl.tools import ToolFailed
from lampctl.tools.firmware import board_files, firmware_mismatches, main_source, pico_pins
from tests.procs import Simulator, free_port


def fw_config(tmp_path: Path, port: str, *, lamps: int = 2, watchdog_s: float = 1.0, extra_lamp: str = "") -> Path:
    text = textwrap.dedent(f"""
        [service]
        bind = "127.0.0.1:{free_port()}"
        database = "var/lampctl.db"
        [safety]
        heartbeat_s = 0.2
        [firmware]
        port = "{port}"
        watchdog_s = {watchdog_s}
        """)
    for i in range(lamps):
        text += f'[[lamps]]\nid = "room{i + 1}"\nrelay_pin = {17 + i}\n{extra_lamp}\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture
def simulator():
    sim = Simulator(lamps=2, watchdog_s=1.0)
    yield sim
    sim.stop()


@pytest.mark.integration
def test_firmware_check_matching_config_exits_0(tmp_path, simulator, capsys):
    config = fw_config(tmp_path, f"socket://127.0.0.1:{simulator.port}")
    assert cli.main(["firmware", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        f"firmware {FIRMWARE_VERSION} on socket://127.0.0.1:{simulator.port}: protocol 2, 2 lamp(s), watchdog 1000 ms"
        in out
    )
    assert "OK: the firmware matches" in out


@pytest.mark.integration
@pytest.mark.parametrize("lamps, watchdog_s, word", [(3, 1.0, "lamps:"), (2, 3.0, "watchdog:")])
def test_firmware_check_mismatched_config_exits_1(tmp_path, simulator, capsys, lamps, watchdog_s, word):
    config = fw_config(tmp_path, f"socket://127.0.0.1:{simulator.port}", lamps=lamps, watchdog_s=watchdog_s)
    assert cli.main(["firmware", "check", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    mismatches = [l for l in captured.out.splitlines() if l.startswith("MISMATCH")]
    assert len(mismatches) == 1 and mismatches[0].startswith(f"MISMATCH {word}")
    assert "lampctl firmware flash" in mismatches[0]
    assert captured.err.startswith("lampctl: the firmware does not match")


@pytest.mark.integration
def test_firmware_check_leaves_every_lamp_off(tmp_path, simulator):
    config = fw_config(tmp_path, f"socket://127.0.0.1:{simulator.port}")
    assert cli.main(["firmware", "check", "--config", str(config)]) == 0
    assert not any(line["on"] for line in simulator.lines)


def test_firmware_check_unreachable_board_exits_1(tmp_path, capsys):
    config = fw_config(tmp_path, f"socket://127.0.0.1:{free_port()}")
    assert cli.main(["firmware", "check", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lampctl: cannot open the firmware port socket://") and err.count("\n") == 1


def test_firmware_check_without_firmware_table_exits_1(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[[lamps]]\nid = "a"\nrelay_pin = 17\n')
    assert cli.main(["firmware", "check", "--config", str(config)]) == 1
    assert "no [firmware] table" in capsys.readouterr().err


def test_firmware_check_bad_config_exits_2(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[service]\nbogus = 1\n")
    assert cli.main(["firmware", "check", "--config", str(config)]) == 2


def _dry_run(config: Path, *extra: str, capsys) -> str:
    assert cli.main(["firmware", "flash", "--dry-run", "--config", str(config), *extra]) == 0
    return capsys.readouterr().out


def test_firmware_flash_dry_run_lists_the_board_files(tmp_path, capsys):
    out = _dry_run(fw_config(tmp_path, "/dev/lampctl-pico"), capsys=capsys)
    copied = [line.split()[2] for line in out.splitlines() if line.startswith("would copy")]
    # The layout main.py imports: `from firmware_bridge.firmware.logic import Firmware`.
    assert copied == [
        ":firmware_bridge/__init__.py",
        ":firmware_bridge/protocol.py",
        ":firmware_bridge/firmware/__init__.py",
        ":firmware_bridge/firmware/logic.py",
        ":main.py",
        ":settings.py",
    ]
    assert "mpremote connect /dev/lampctl-pico fs cp -r STAGE/firmware_bridge : +" in out


def test_firmware_flash_settings_are_python_with_the_configs_pins_and_watchdog(tmp_path):
    cfg = config_mod.load(
        fw_config(tmp_path, "/dev/lampctl-pico", lamps=3, watchdog_s=2.5, extra_lamp="active_high = false")
    )
    files = dict(board_files(cfg, pico_pins(cfg, (6, 7, 8)), active_high=False))
    namespace: dict = {}
    exec(compile(files["settings.py"], "settings.py", "exec"), namespace)
    assert namespace["RELAY_PINS"] == (6, 7, 8)
    assert namespace["ACTIVE_HIGH"] is False
    assert namespace["WATCHDOG_MS"] == 2500
    # main.py does not read settings.py yet, so its own constants carry the same values.
    main = ast.parse(files["main.py"])
    constants = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in main.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("RELAY_PINS", "ACTIVE_HIGH", "WATCHDOG_MS")
    }
    assert constants == {"RELAY_PINS": (6, 7, 8), "ACTIVE_HIGH": False, "WATCHDOG_MS": 2500}
    assert files["firmware_bridge/protocol.py"] == Path(protocol.__file__).read_text()


def _board_hello(main_py: str, monkeypatch) -> dict:
    """The HELLO reply of a board running this main.py (on CPython, the shim as `machine`)."""
    import sys
    import types

    from firmware_bridge.firmware import mpshim

    monkeypatch.setitem(sys.modules, "machine", mpshim)
    board = types.ModuleType("board_main")
    exec(compile(main_py, "main.py", "exec"), board.__dict__)
    firmware, _outputs = board.build()
    [reply] = firmware.feed(b"\n" + protocol.encode_command(1, "HELLO"))
    return protocol.parse_hello(protocol.parse_reply(reply).args)


@pytest.mark.xfail(strict=True, reason="S14 gap: the host cannot read which Pico pins drive which relay")
def test_s14_gap_firmware_check_finds_a_board_flashed_with_other_pins(tmp_path, monkeypatch):
    cfg = config_mod.load(fw_config(tmp_path, "/dev/lampctl-pico", lamps=2))
    assert pico_pins(cfg, None) == (2, 3)  # what `lampctl firmware flash` gives this config
    by_hand = dict(board_files(cfg, (6, 7), active_high=True))["main.py"]  # flashed with --pico-pins 6,7
    info = _board_hello(by_hand, monkeypatch)
    assert (info["lamps"], info["watchdog_ms"]) == (2, 1000)  # as the config says: only the pins differ
    problems = firmware_mismatches(info, cfg)
    assert any("GP6" in problem or "pin" in problem for problem in problems), problems


def test_firmware_flash_default_pins_follow_the_wiring_guide(tmp_path, capsys):
    out = _dry_run(fw_config(tmp_path, "/dev/lampctl-pico", lamps=2), capsys=capsys)
    assert "RELAY_PINS = (2, 3)\n" in out and "WATCHDOG_MS = 1000\n" in out and "ACTIVE_HIGH = True\n" in out


@pytest.mark.parametrize(
    "pins, words", [("2", "1 Pico pin(s) given for 2"), ("2,22", "GP22"), ("2,2", "repeat"), ("2,25", "GP25")]
)
def test_firmware_flash_refuses_bad_pico_pins(tmp_path, capsys, pins, words):
    config = fw_config(tmp_path, "/dev/lampctl-pico")
    assert cli.main(["firmware", "flash", "--dry-run", "--pico-pins", pins, "--config", str(config)]) == 1
    assert words in capsys.readouterr().err


def test_firmware_flash_mixed_polarity_needs_a_choice(tmp_path, capsys):
    config = fw_config(tmp_path, "/dev/lampctl-pico", lamps=1)
    config.write_text(config.read_text() + '[[lamps]]\nid = "low"\nrelay_pin = 20\nactive_high = false\n')
    assert cli.main(["firmware", "flash", "--dry-run", "--config", str(config)]) == 1
    assert "--pico-active-low" in capsys.readouterr().err
    assert "ACTIVE_HIGH = False\n" in _dry_run(config, "--pico-active-low", capsys=capsys)


def test_firmware_flash_runs_mpremote_with_the_staged_files(tmp_path, monkeypatch, capsys):
    # A stand-in mpremote that records its arguments and what it was given to copy.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "mpremote.log"
    fake = bindir / "mpremote"
    fake.write_text(f'#!/bin/sh\necho "$@" > {log}\ncat "${{12}}" >> {log}\n')  # ${{12}}: settings.py
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr("lampctl.tools.firmware.sys.executable", str(bindir / "python"))
    device = tmp_path / "ttyACM9"
    device.write_text("")
    config = fw_config(tmp_path, str(device))
    assert cli.main(["firmware", "flash", "--config", str(config)]) == 0
    assert "flashed 6 files" in capsys.readouterr().out
    args = log.read_text().splitlines()[0].split()
    assert args[:6] == ["connect", str(device), "fs", "cp", "-r", args[5]] and args[5].endswith("/firmware_bridge")
    assert args[6:] == [":", "+", "fs", "cp", args[10], args[11], ":", "+", "reset"]
    settings = log.read_text().split("\n", 1)[1]
    assert settings.startswith('"""Board settings generated by `lampctl firmware flash`')
    assert "RELAY_PINS = (2, 3)\n" in settings and "WATCHDOG_MS = 1000\n" in settings


def test_firmware_flash_reports_mpremote_failure(tmp_path, monkeypatch, capsys):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mpremote").write_text("#!/bin/sh\necho 'mpremote: could not enter raw repl' >&2\nexit 1\n")
    (bindir / "mpremote").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    device = tmp_path / "ttyACM9"
    device.write_text("")
    assert cli.main(["firmware", "flash", "--config", str(fw_config(tmp_path, str(device)))]) == 1
    err = capsys.readouterr().err
    assert "could not enter raw repl" in err and "maintenance mode" in err and err.count("\n") == 1


def test_firmware_flash_needs_a_serial_device(tmp_path, capsys):
    config = fw_config(tmp_path, "socket://127.0.0.1:7777")
    assert cli.main(["firmware", "flash", "--config", str(config)]) == 1
    assert "not socket://127.0.0.1:7777" in capsys.readouterr().err


def test_firmware_main_source_refuses_a_main_without_the_constant(monkeypatch, tmp_path):
    fake_dir = tmp_path / "firmware_bridge" / "firmware"
    fake_dir.mkdir(parents=True)
    (fake_dir / "main.py").write_text("RELAY_PINS = (2,)\nACTIVE_HIGH = True\n")
    monkeypatch.setattr("lampctl.tools.firmware.FIRMWARE_DIR", tmp_path / "firmware_bridge")
    with pytest.raises(ToolFailed, match="WATCHDOG_MS"):
        main_source({"RELAY_PINS": (2,), "ACTIVE_HIGH": True, "WATCHDOG_MS": 3000})


# ---- the analog guard's table ---------------------------------------------------------------
GUARD_TABLE = [(0, 0, 9000, 52000), (1, 2, 0, 30000)]


@pytest.fixture
def config_guards(monkeypatch):
    """What the config's lamps ask the firmware to guard (set by each test)."""
    from lampctl.tools import firmware

    table: list = []
    monkeypatch.setattr(firmware, "guard_table", lambda cfg: list(table))
    return table


@pytest.fixture
def guarded_simulator():
    from tests.test_fw_simulator import SimProcess

    args = ["--lamps", "2", "--watchdog", "1.0"]
    for row in GUARD_TABLE:
        args += ["--guard", ":".join(str(v) for v in row)]
    sim = SimProcess(*args)
    yield sim
    sim.stop()


def test_firmware_flash_writes_the_configs_guards_into_main_py(tmp_path, monkeypatch, config_guards):
    config_guards.extend(GUARD_TABLE)
    cfg = config_mod.load(fw_config(tmp_path, "/dev/lampctl-pico", lamps=2))
    files = dict(board_files(cfg, pico_pins(cfg, None), active_high=True))
    namespace: dict = {}
    exec(compile(files["settings.py"], "settings.py", "exec"), namespace)
    assert namespace["GUARDS"] == tuple(GUARD_TABLE)
    # The board built from that main.py answers GUARDS with the config's table.
    import sys
    import types

    from firmware_bridge.firmware import mpshim

    monkeypatch.setitem(sys.modules, "machine", mpshim)
    board = types.ModuleType("board_main")
    exec(compile(files["main.py"], "main.py", "exec"), board.__dict__)
    firmware, _outputs = board.build()
    [reply] = firmware.feed(b"\n" + protocol.encode_command(1, "GUARDS"))
    assert protocol.parse_guards(protocol.parse_reply(reply).args) == GUARD_TABLE


@pytest.mark.integration
def test_firmware_check_matching_guards_exits_0(tmp_path, guarded_simulator, capsys, config_guards):
    config_guards.extend(GUARD_TABLE)
    config = fw_config(tmp_path, guarded_simulator.url)
    assert cli.main(["firmware", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "guards: lamp 0 on ADC 0 between 9000 and 52000, lamp 1 on ADC 2 between 0 and 30000" in out
    assert "OK: the firmware matches" in out


@pytest.mark.integration
def test_firmware_check_says_which_guard_differs(tmp_path, guarded_simulator, capsys, config_guards):
    config_guards.extend([(0, 0, 9000, 50000)])
    config = fw_config(tmp_path, guarded_simulator.url)
    assert cli.main(["firmware", "check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert (
        f"MISMATCH guards: on ADC 0 the board has lamp 0 between 9000 and 52000, {config} asks for "
        "lamp 0 between 9000 and 50000 (run `lampctl firmware flash`)" in out
    )
    assert f"MISMATCH guards: on ADC 2 the board has lamp 1 between 0 and 30000, {config} asks for no channel" in out


@pytest.mark.parametrize(
    "case, board, want, words",
    [
        ("the same", GUARD_TABLE, GUARD_TABLE, []),
        ("a channel the board lacks", [], [(0, 1, 5, 6)], ["on ADC 1 the board has no channel, X asks for lamp 0"]),
        ("another order", GUARD_TABLE, GUARD_TABLE[::-1], ["the board lists its channels as lamp 0 on ADC 0"]),
    ],
)
def test_firmware_guard_mismatches(case, board, want, words):
    from lampctl.tools.firmware import guard_mismatches

    problems = guard_mismatches(board, want, "X")
    assert len(problems) == len(words), case
    for problem, word in zip(problems, words, strict=True):
        assert problem.startswith("guards: " + word), problem


def guarded_config(tmp_path: Path, port: str) -> Path:
    """fw_config with a thermistor on lamp 0 (ADC 0) and a current sensor on lamp 1 (ADC 2)."""
    path = fw_config(tmp_path, port, lamps=0)
    path.write_text(
        path.read_text()
        + '[[lamps]]\nid = "room1"\nrelay_pin = 17\nthermistor_adc = 0\nmax_temp_c = 60\n'
        + '[[lamps]]\nid = "room2"\nrelay_pin = 18\ncurrent_adc = 2\nmax_amps = 2.5\n'
    )
    return path


def test_firmware_flash_takes_the_guard_table_from_the_configs_sensors(tmp_path):
    from lampctl.core.sensors import guard_table

    cfg = config_mod.load(guarded_config(tmp_path, "/dev/lampctl-pico"))
    table = guard_table(cfg.lamps)
    assert [row[:2] for row in table] == [(0, 0), (1, 2)]
    files = dict(board_files(cfg, pico_pins(cfg, None), active_high=True))
    main = ast.parse(files["main.py"])
    [guards] = [
        ast.literal_eval(node.value)
        for node in main.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "GUARDS"
    ]
    assert guards == tuple(table)


@pytest.mark.integration
def test_firmware_check_a_board_flashed_from_the_config_matches_and_one_without_guards_does_not(tmp_path, capsys):
    from lampctl.core.sensors import guard_table
    from tests.test_fw_simulator import SimProcess

    config = guarded_config(tmp_path, "PORT")
    table = guard_table(config_mod.load(config).lamps)
    flashed = SimProcess("--lamps", "2", "--watchdog", "1.0", *[f"--guard={l}:{a}:{lo}:{hi}" for l, a, lo, hi in table])
    bare = SimProcess("--lamps", "2", "--watchdog", "1.0")
    try:
        config.write_text(config.read_text().replace("PORT", flashed.url))
        assert cli.main(["firmware", "check", "--config", str(config)]) == 0
        config.write_text(config.read_text().replace(flashed.url, bare.url))
        assert cli.main(["firmware", "check", "--config", str(config)]) == 1
        out = capsys.readouterr().out
        assert "MISMATCH guards: on ADC 0 the board has no channel" in out
        assert "MISMATCH guards: on ADC 2 the board has no channel" in out
    finally:
        flashed.stop()
        bare.stop()


@pytest.mark.integration
def test_doctor_fails_a_board_whose_guards_differ_from_the_config(tmp_path, guarded_simulator, config_guards):
    from lampctl.tools.doctor import FAIL, check_firmware

    cfg = config_mod.load(fw_config(tmp_path, guarded_simulator.url))
    check = check_firmware(cfg)
    assert check.status == FAIL and "guards: on ADC 0 the board has lamp 0 between 9000 and 52000" in check.detail
