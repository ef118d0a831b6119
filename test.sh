#!/usr/bin/env bash
# Run every lampctl test. First use creates .venv, installs lampctl with its test
# dependencies, and on Debian installs what the tests drive when it is missing:
# Chromium (browser tests), systemd-analyze (unit checks), Node.js (the firmware on
# MicroPython's own VM, whose npm package goes into tests/mpvm/node_modules), mosquitto
# (the fleet tests' MQTT broker).
# Extra arguments go to pytest, e.g. ./test.sh -k controller
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh
lampctl_venv test

apt_updated=""
# need COMMAND PACKAGE... : install Debian's PACKAGEs when COMMAND is missing.
need() {
    local command=$1
    shift
    command -v "$command" >/dev/null 2>&1 && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "warning: $command is missing and apt-get is not available: the tests that need it will not run" >&2
        return 0
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian's $* for the tests ($command)..." >&2
    if [ -z "$apt_updated" ]; then
        $sudo apt-get update -qq >&2
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}
need chromium chromium
need systemd-analyze systemd
need node nodejs npm
need mosquitto mosquitto

# MicroPython's WebAssembly port for tests/test_fw_micropython*.py, reinstalled whenever
# package-lock.json changes (its hash names the stamp).
mpvm_stamp="tests/mpvm/node_modules/.installed-$(sha256sum tests/mpvm/package-lock.json | cut -c1-16)"
if command -v node >/dev/null 2>&1 && [ ! -f "$mpvm_stamp" ]; then
    echo "installing MicroPython's WebAssembly port into tests/mpvm/node_modules..." >&2
    npm ci --prefix tests/mpvm --no-audit --no-fund --loglevel=error >&2
    touch "$mpvm_stamp"
fi

exec .venv/bin/python -m pytest "$@"
