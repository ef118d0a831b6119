#!/usr/bin/env bash
# Run every lampctl test. First use creates .venv, installs lampctl with its test
# dependencies, and on Debian installs Chromium for the browser tests.
# Extra arguments go to pytest, e.g. ./test.sh -k controller
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh
lampctl_venv test

if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing Debian's chromium for the browser tests..." >&2
        $sudo apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
    else
        echo "warning: /usr/bin/chromium is missing and apt-get is not available: browser tests will not run" >&2
    fi
fi

# --- MicroPython VM for the firmware tests (tests/mpvm): Node from Debian, the npm package locally ---
if ! command -v node >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing Debian's nodejs and npm for the MicroPython VM tests..." >&2
        $sudo apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >&2
    else
        echo "warning: node is missing and apt-get is not available: the MicroPython VM tests will not run" >&2
    fi
fi
# Reinstall whenever package-lock.json changes (its hash names the stamp).
mpvm_stamp="tests/mpvm/node_modules/.installed-$(sha256sum tests/mpvm/package-lock.json | cut -c1-16)"
if command -v node >/dev/null 2>&1 && [ ! -f "$mpvm_stamp" ]; then
    echo "installing MicroPython's WebAssembly port into tests/mpvm/node_modules..." >&2
    npm ci --prefix tests/mpvm --no-audit --no-fund --loglevel=error >&2
    touch "$mpvm_stamp"
fi
# --- end of the MicroPython VM block ---

exec .venv/bin/python -m pytest "$@"
