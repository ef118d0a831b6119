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

exec .venv/bin/python -m pytest "$@"
