# Sourced by demo.sh and test.sh: make .venv (Python >= 3.11) and install lampctl into it once.
# $1 is the pip extra to install ("" for the demo, "test" for the tests).
set -euo pipefail

lampctl_venv() {
    local extra=${1:-}
    if [ ! -x .venv/bin/python ]; then
        local py=""
        for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
            [ -n "$candidate" ] || continue
            if command -v "$candidate" >/dev/null 2>&1 &&
               "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
                py=$candidate
                break
            fi
        done
        if [ -z "$py" ]; then
            echo "lampctl needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
            exit 2
        fi
        "$py" -m venv .venv
    fi
    # Reinstall whenever pyproject.toml changes (its hash names the stamp).
    local stamp=".venv/.installed-${extra:-base}-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        echo "setting up .venv (first run only)..." >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extra:+[$extra]}" >&2
        touch "$stamp"
    fi
}
