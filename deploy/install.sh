#!/usr/bin/env bash
# Install lampctl on Raspberry Pi OS (Bookworm): service user, config, data directory, venv,
# systemd units, udev rule for the Pico, nightly backup. Safe to run again (an upgrade):
# the config in /etc/lampctl and the data in /var/lib/lampctl are never overwritten.
#
# The venv gets exactly the versions of deploy/requirements-pi.txt (pinned and hashed).
#
#   sudo deploy/install.sh                 install or upgrade on this Pi
#   sudo deploy/install.sh --uninstall     remove the program, keep config, data and the user
#   deploy/install.sh --root DIR [--no-venv] [--unpinned] [--uninstall]
#                                          install into DIR as if it were /, without touching
#                                          systemd, udev, users or ownership (tests, packagers)
#   --unpinned                             off a Pi (tests, CI): the newest versions that
#                                          pyproject.toml allows instead of the Pi's lock
set -euo pipefail

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

ROOT=""
ROOT_MODE=0
VENV=1
UNINSTALL=0
UNPINNED=0
PYTHON=${PYTHON:-python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
while [ $# -gt 0 ]; do
    case "$1" in
        --root)
            [ $# -ge 2 ] && [ -n "$2" ] || { echo "install.sh: --root needs a directory" >&2; exit 2; }
            ROOT=$(realpath -m "$2"); ROOT_MODE=1; shift 2 ;;
        --no-venv) VENV=0; shift ;;
        --unpinned) UNPINNED=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$VENV" -eq 0 ] && [ "$ROOT_MODE" -eq 0 ]; then
    echo "install.sh: --no-venv only goes with --root (a Pi needs the program installed)" >&2
    exit 2
fi
# The lock is resolved for Raspberry Pi OS, 64-bit (aarch64); on the 32-bit OS (armv7l) the
# same pinned, hashed versions install, a package without an armv7l wheel from its pinned
# source. Any other machine is not a Pi: it gets the lock only by asking for something else.
LOCK="$SRC/deploy/requirements-pi.txt"
ARCH=$(uname -m)
if [ "$VENV" -eq 1 ] && [ "$UNINSTALL" -eq 0 ] && [ "$UNPINNED" -eq 0 ] && [ "$ARCH" != aarch64 ] && [ "$ARCH" != armv7l ]; then
    echo "install.sh: deploy/requirements-pi.txt is locked for a Raspberry Pi (aarch64 or armv7l) and this" \
         "machine is $ARCH: give --unpinned to install the newest allowed versions instead (tests, CI)" >&2
    exit 2
fi
if [ "$ROOT_MODE" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo $0), or with --root DIR for a staged install" >&2
    exit 1
fi

APP=/opt/lampctl
ETC=/etc/lampctl
DATA=/var/lib/lampctl
UNITS=/etc/systemd/system
RULES=/etc/udev/rules.d
SVC_USER=lampctl

say() { echo "lampctl install: $*"; }
on_system() { [ "$ROOT_MODE" -eq 0 ]; }

uninstall() {
    if on_system; then
        systemctl disable --now lampctl.service lampctl-backup.timer 2>/dev/null || true
    fi
    rm -f "$ROOT$UNITS/lampctl.service" "$ROOT$UNITS/lampctl-backup.service" "$ROOT$UNITS/lampctl-backup.timer" \
          "$ROOT$RULES/99-lampctl-pico.rules" "$ROOT/usr/local/bin/lampctl"
    rm -rf "$ROOT$APP"
    if on_system; then
        systemctl daemon-reload
        udevadm control --reload || true
    fi
    say "removed the program, units and udev rule; kept $ETC, $DATA (database, backups) and the user $SVC_USER"
    say "to remove those too: sudo rm -r $ETC $DATA && sudo userdel $SVC_USER"
}

create_user() {
    on_system || return 0
    getent group gpio >/dev/null || groupadd --system gpio
    getent group dialout >/dev/null || groupadd --system dialout
    if ! id "$SVC_USER" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$DATA" --no-create-home \
                --shell /usr/sbin/nologin --comment "lampctl service" "$SVC_USER"
        say "created the system user $SVC_USER"
    fi
    usermod -a -G gpio,dialout "$SVC_USER"
}

# install_dir MODE OWNER PATH: a directory with its mode, and its owner on a real system.
install_dir() {
    install -d -m "$1" "$ROOT$3"
    chmod "$1" "$ROOT$3"
    if on_system; then chown "$2" "$ROOT$3"; fi
}

install_config() {
    install_dir 0755 root:root "$ETC"
    install -m 0644 "$SRC/deploy/config.toml" "$ROOT$ETC/config.toml.example"
    if [ -e "$ROOT$ETC/config.toml" ]; then
        say "kept $ETC/config.toml (the template is $ETC/config.toml.example)"
    else
        install -m 0640 "$SRC/deploy/config.toml" "$ROOT$ETC/config.toml"
        if on_system; then chown "root:$SVC_USER" "$ROOT$ETC/config.toml"; fi
        say "wrote $ETC/config.toml from the template: edit the lamps before the first start"
    fi
}

install_venv() {
    [ "$VENV" -eq 1 ] || { say "skipped the venv (--no-venv)"; return 0; }
    # Bookworm: Debian's python3-lgpio (built for the Pi's kernel) is only visible to a venv
    # made with --system-site-packages; a plain venv would need the lgpio wheel built from source.
    if on_system && ! "$PYTHON" -c 'import lgpio' 2>/dev/null && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-lgpio
    fi
    if [ ! -x "$ROOT$APP/bin/python" ]; then
        "$PYTHON" -m venv --system-site-packages "$ROOT$APP"
    fi
    local pip=("$ROOT$APP/bin/python" -m pip install --quiet --disable-pip-version-check)
    if [ "$UNPINNED" -eq 1 ]; then
        "${pip[@]}" --upgrade "$SRC[pico]"
        say "--unpinned: installed the newest versions pyproject.toml allows, not deploy/requirements-pi.txt"
    else
        # Every dependency at the lock's version and hash (lgpio: Debian's, already there),
        # then lampctl itself with nothing more, built with the lock's setuptools.
        "${pip[@]}" --require-hashes --no-deps -r "$LOCK"
        "${pip[@]}" --no-deps --no-build-isolation --upgrade "$SRC"
    fi
    say "installed lampctl $("$ROOT$APP/bin/python" -c 'import importlib.metadata as m; print(m.version("lampctl"))') in $APP"
}

install_files() {
    install -d -m 0755 "$ROOT$APP/share/doc" "$ROOT$UNITS" "$ROOT$RULES" "$ROOT/usr/local/bin"
    install -m 0644 "$SRC/docs/install.md" "$SRC/docs/wiring.md" "$SRC/docs/wiring.svg" "$ROOT$APP/share/doc/"
    install -m 0644 "$SRC/deploy/lampctl.service" "$SRC/deploy/lampctl-backup.service" \
                    "$SRC/deploy/lampctl-backup.timer" "$ROOT$UNITS/"
    install -m 0644 "$SRC/deploy/99-lampctl-pico.rules" "$ROOT$RULES/"
    # The CLI finds the config without --config, also under sudo (which drops the environment).
    cat > "$ROOT/usr/local/bin/lampctl.tmp" <<EOF
#!/bin/sh
: "\${LAMPCTL_CONFIG:=$ETC/config.toml}"
export LAMPCTL_CONFIG
exec $APP/bin/lampctl "\$@"
EOF
    chmod 0755 "$ROOT/usr/local/bin/lampctl.tmp"
    mv -f "$ROOT/usr/local/bin/lampctl.tmp" "$ROOT/usr/local/bin/lampctl"
    say "installed the units, the udev rule (/dev/lampctl-pico) and /usr/local/bin/lampctl"
}

activate() {
    on_system || { say "--root: systemd, udev, users and ownership left alone"; return 0; }
    udevadm control --reload
    udevadm trigger --subsystem-match=tty --action=change || true
    systemctl daemon-reload
    systemctl enable --now lampctl-backup.timer
    systemctl enable lampctl.service
    if systemctl is-active --quiet lampctl.service; then
        say "lampctl is still running the old version: sudo systemctl restart lampctl when no lamp is on"
    else
        say "next: edit $ETC/config.toml, run 'sudo -u $SVC_USER lampctl doctor', then 'sudo systemctl start lampctl'"
    fi
}

if [ "$UNINSTALL" -eq 1 ]; then
    uninstall
    exit 0
fi
create_user
install_config
install_dir 0750 "$SVC_USER:$SVC_USER" "$DATA"
install_dir 0750 "$SVC_USER:$SVC_USER" "$DATA/backups"
install_venv
install_files
activate
say "done"
