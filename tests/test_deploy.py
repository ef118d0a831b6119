"""deploy/: install.sh into a prefix, the systemd units (systemd-analyze verify), the udev rule, sd_notify."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest

from lampctl import config as config_mod
from tests.procs import ROOT, TWO_LAMPS, ServiceProcess, service_config, wait_until

INSTALL = ROOT / "deploy" / "install.sh"
UNITS = ("lampctl.service", "lampctl-backup.service", "lampctl-backup.timer")


def install(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--no-venv", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def unit_entries(path: Path) -> dict[str, list[str]]:
    """'Section.Key' -> every value (systemd allows repeated keys, configparser does not)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


def test_deploy_install_root_lays_out_a_pi(tmp_path):
    proc = install(tmp_path)
    assert proc.returncode == 0, proc.stderr
    for unit in UNITS:
        assert (tmp_path / "etc/systemd/system" / unit).read_text() == (ROOT / "deploy" / unit).read_text()
    assert (tmp_path / "etc/udev/rules.d/99-lampctl-pico.rules").is_file()
    config = tmp_path / "etc/lampctl/config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "var/lib/lampctl").stat().st_mode) == 0o750
    assert (tmp_path / "var/lib/lampctl/backups").is_dir()
    assert (tmp_path / "opt/lampctl/share/doc/install.md").is_file()
    wrapper = tmp_path / "usr/local/bin/lampctl"
    assert os.access(wrapper, os.X_OK)
    assert "LAMPCTL_CONFIG:=/etc/lampctl/config.toml" in wrapper.read_text()
    assert "exec /opt/lampctl/bin/lampctl" in wrapper.read_text()
    assert not (tmp_path / "opt/lampctl/bin").exists()  # --no-venv


def test_deploy_config_template_is_valid_for_a_pi(tmp_path):
    assert install(tmp_path).returncode == 0
    cfg = config_mod.load(tmp_path / "etc/lampctl/config.toml")
    assert cfg.service.database == Path("/var/lib/lampctl/lampctl.db")
    assert cfg.service.pin_factory == "lgpio"
    assert cfg.firmware.port == "/dev/lampctl-pico"
    assert cfg.safety.heartbeat_s < cfg.firmware.watchdog_s / 2


def test_deploy_install_is_idempotent_and_never_overwrites_the_config(tmp_path):
    assert install(tmp_path).returncode == 0
    config = tmp_path / "etc/lampctl/config.toml"
    config.write_text(config.read_text().replace('name = "Room 1"', 'name = "Couch A"'))
    (tmp_path / "var/lib/lampctl/lampctl.db").write_bytes(b"records")
    again = install(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "kept /etc/lampctl/config.toml" in again.stdout
    assert 'name = "Couch A"' in config.read_text()
    assert (tmp_path / "var/lib/lampctl/lampctl.db").read_bytes() == b"records"
    assert (tmp_path / "etc/lampctl/config.toml.example").read_text() == (ROOT / "deploy/config.toml").read_text()


def test_deploy_uninstall_keeps_config_and_data(tmp_path):
    assert install(tmp_path).returncode == 0
    (tmp_path / "var/lib/lampctl/lampctl.db").write_bytes(b"records")
    proc = install(tmp_path, "--uninstall")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "opt/lampctl").exists()
    assert not (tmp_path / "usr/local/bin/lampctl").exists()
    for unit in UNITS:
        assert not (tmp_path / "etc/systemd/system" / unit).exists()
    assert not (tmp_path / "etc/udev/rules.d/99-lampctl-pico.rules").exists()
    assert (tmp_path / "etc/lampctl/config.toml").is_file()
    assert (tmp_path / "var/lib/lampctl/lampctl.db").read_bytes() == b"records"


@pytest.mark.parametrize("args", [["--bogus"], ["--root"]])
def test_deploy_install_bad_usage_exits_2(args):
    proc = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("install.sh: ")
    assert "Traceback" not in proc.stderr


def test_deploy_install_no_venv_needs_root_dir():
    proc = subprocess.run(["bash", str(INSTALL), "--no-venv"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "--no-venv only goes with --root" in proc.stderr


def _verify_inside(root: Path, units_dir: Path) -> subprocess.CompletedProcess:
    """systemd-analyze verify on copies of the installed units whose paths point inside root."""
    checked = root / "verify"
    checked.mkdir(exist_ok=True)
    for unit in UNITS:
        text = (units_dir / unit).read_text()
        for path in ("/opt/lampctl", "/var/lib/lampctl", "/etc/lampctl"):
            text = text.replace(path, f"{root}{path}")
        (checked / unit).write_text(text)
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *[str(checked / u) for u in UNITS]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=checked,
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_deploy_units_pass_systemd_analyze_verify(tmp_path):
    assert install(tmp_path).returncode == 0
    # The venv is skipped, so stand in for its console script.
    fake = tmp_path / "opt/lampctl/bin/lampctl"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    proc = _verify_inside(tmp_path, tmp_path / "etc/systemd/system")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # unknown keys are only warnings: none allowed
    # The check has teeth: without the program, verify refuses the unit.
    fake.unlink()
    assert _verify_inside(tmp_path, tmp_path / "etc/systemd/system").returncode != 0


def test_deploy_service_unit_declares_the_contract():
    unit = unit_entries(ROOT / "deploy/lampctl.service")
    expected = {
        "Service.Type": ["notify"],
        "Service.WatchdogSec": ["5"],
        "Service.Restart": ["on-failure"],
        "Service.User": ["lampctl"],
        "Service.NoNewPrivileges": ["yes"],
        "Service.ProtectSystem": ["strict"],
        "Service.ReadWritePaths": ["/var/lib/lampctl"],
        "Service.PrivateTmp": ["yes"],
        "Service.ProtectHome": ["yes"],
        "Service.DevicePolicy": ["closed"],
        "Service.ExecStart": ["/opt/lampctl/bin/lampctl serve"],
        "Service.WorkingDirectory": ["/var/lib/lampctl"],
    }
    for key, value in expected.items():
        assert unit.get(key) == value, key
    assert "Unit.StartLimitBurst" in unit and "Unit.StartLimitIntervalSec" in unit
    assert sorted(unit["Service.DeviceAllow"]) == ["char-gpiochip rw", "char-ttyACM rw"]
    assert "LAMPCTL_CONFIG=/etc/lampctl/config.toml" in unit["Service.Environment"]
    assert "Service.PrivateDevices" not in unit  # it would hide /dev/gpiochip*


def test_deploy_backup_timer_runs_the_backup_nightly():
    timer = unit_entries(ROOT / "deploy/lampctl-backup.timer")
    service = unit_entries(ROOT / "deploy/lampctl-backup.service")
    assert timer["Timer.Persistent"] == ["true"] and timer["Timer.OnCalendar"]
    assert service["Service.ExecStart"] == ["/opt/lampctl/bin/lampctl backup /var/lib/lampctl/backups --keep 14"]
    assert service["Service.User"] == ["lampctl"]


def test_deploy_udev_rule_names_the_pico_and_keeps_modemmanager_away():
    rule = (ROOT / "deploy/99-lampctl-pico.rules").read_text()
    line = next(l for l in rule.splitlines() if l and not l.startswith("#"))
    for part in (
        'SUBSYSTEM=="tty"',
        'ATTRS{idVendor}=="2e8a"',
        'SYMLINK+="lampctl-pico"',
        'ENV{ID_MM_DEVICE_IGNORE}="1"',
        'GROUP="dialout"',
    ):
        assert part in line


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_deploy_serve_sends_ready_once_the_panel_answers_then_watchdog_pings(tmp_path):
    # A datagram socket in a short path (AF_UNIX paths are limited to 108 bytes).
    sockdir = Path(tempfile.mkdtemp(prefix="lampctl-notify-"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sockdir / "notify"))
    sock.settimeout(0.2)
    config = service_config(tmp_path, TWO_LAMPS)
    port = int(config.read_text().split('bind = "127.0.0.1:')[1].split('"')[0])
    seen: list[tuple[str, int | None]] = []
    done = threading.Event()

    def listen():
        while not done.is_set():
            try:
                message = sock.recv(4096).decode()
            except OSError:
                continue
            status = None
            if message == "READY=1":
                # What a client sees the moment systemd hears READY=1.
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as resp:
                    status = resp.status
            seen.append((message, status))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    service = ServiceProcess(config, extra_env={"NOTIFY_SOCKET": str(sockdir / "notify")})
    try:
        service.start(timeout=60)
        wait_until(lambda: sum(m == "WATCHDOG=1" for m, _ in seen) >= 2, 30, "two WATCHDOG=1 pings")
    finally:
        service.stop()
        done.set()
        listener.join(5)
        sock.close()
        shutil.rmtree(sockdir)
    messages = [m for m, _ in seen]
    assert messages[0] == "READY=1"
    assert seen[0][1] == 200
    assert messages.count("READY=1") == 1


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_deploy_install_default_makes_a_venv_that_sees_system_packages(tmp_path):
    # Off a Pi the lock is refused (test_deploy_install_off_a_pi_...); the venv is the same.
    unpinned = [] if os.uname().machine in PI_MACHINES else ["--unpinned"]
    proc = subprocess.run(
        ["bash", str(INSTALL), "--root", str(tmp_path), *unpinned],
        capture_output=True,
        text=True,
        timeout=580,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    venv = tmp_path / "opt/lampctl"
    # Debian's python3-lgpio lives in the system site-packages: the venv must see them.
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert os.access(venv / "bin/mpremote", os.X_OK)  # for `lampctl firmware flash`
    help_text = subprocess.run([str(venv / "bin/lampctl"), "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and "serve" in help_text.stdout


PI_MACHINES = ("aarch64", "armv7l")
LOCK = ROOT / "deploy" / "requirements-pi.txt"
# A python that only records how it is called; `-m venv DIR` makes DIR/bin/python a copy of it.
RECORDING_PYTHON = """#!/bin/bash
echo "$*" >> "$PIP_LOG"
if [ "$1" = -m ] && [ "$2" = venv ]; then
    dir="${@: -1}"; mkdir -p "$dir/bin"; cp "$0" "$dir/bin/python"
elif [ "$1" = -c ]; then
    echo 0.1.0
fi
"""


def _staged_install(tmp_path: Path, machine: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """install.sh --root with a venv, on a machine whose `uname -m` says `machine`; the calls of its python."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "uname").write_text(f'#!/bin/sh\n[ "$1" = -m ] && echo {machine} || exec /bin/uname "$@"\n')
    (fake / "python3").write_text(RECORDING_PYTHON)
    for tool in ("uname", "python3"):
        (fake / tool).chmod(0o755)
    log = tmp_path / "python-calls"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": str(fake / "python3"), "PIP_LOG": str(log)}
    proc = subprocess.run(
        ["bash", str(INSTALL), "--root", str(tmp_path / "root"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    return proc, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("machine", PI_MACHINES)
def test_deploy_install_on_a_pi_installs_the_hashed_lock_then_lampctl_without_dependencies(tmp_path, machine):
    proc, calls = _staged_install(tmp_path, machine)
    assert proc.returncode == 0, proc.stderr
    pip = [call.split() for call in calls if call.startswith("-m pip install")]
    assert len(pip) == 2, calls
    lock, project = pip
    assert "--require-hashes" in lock and "--no-deps" in lock and lock[lock.index("-r") + 1] == str(LOCK)
    assert project[-1] == str(ROOT) and "--no-deps" in project and "--no-build-isolation" in project
    assert not any("mpremote" in word for call in pip for word in call), "mpremote comes from the lock"


def test_deploy_install_off_a_pi_refuses_the_lock_in_one_sentence_and_writes_nothing(tmp_path):
    proc, calls = _staged_install(tmp_path, "x86_64")
    assert proc.returncode == 2 and calls == [] and not (tmp_path / "root").exists()
    [line] = proc.stderr.splitlines()
    assert (
        line.startswith("install.sh: deploy/requirements-pi.txt is locked for a Raspberry Pi") and "--unpinned" in line
    )


def test_deploy_install_unpinned_installs_the_newest_allowed_versions_and_says_so(tmp_path):
    proc, calls = _staged_install(tmp_path, "x86_64", "--unpinned")
    assert proc.returncode == 0, proc.stderr
    [pip] = [call.split() for call in calls if call.startswith("-m pip install")]
    assert pip[-1] == f"{ROOT}[pico]" and "--require-hashes" not in pip
    assert "--unpinned: installed the newest versions pyproject.toml allows" in proc.stdout


def test_s1_maintenance_commands_import_nothing_slow():
    # cli.py declares these subcommands before `serve` claims the relays, so importing them
    # must not pull in the store (werkzeug), pyserial, Flask or gpiozero.
    code = (
        "import sys, lampctl.tools.backup, lampctl.tools.doctor, lampctl.tools.firmware, lampctl.platform.clocksync; "
        "print(' '.join(m for m in ('lampctl.storage.store', 'werkzeug', 'serial', 'flask', 'gpiozero') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
