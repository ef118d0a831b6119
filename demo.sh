#!/usr/bin/env bash
# Run the lampctl demo: simulated GPIO and microcontroller, SQLite in var/, the panel on
# http://127.0.0.1:8080. First run creates the venv and two demo accounts.
#
#   ./demo.sh                 serve on 127.0.0.1:8080 (service.bind in config.toml)
#   ./demo.sh --port 8081     serve on another port (or: LAMPCTL_DEMO_PORT=8081 ./demo.sh)
#   ./demo.sh --reset         start afresh: delete var/ (the demo's log, users, tokens), then run
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
port=${LAMPCTL_DEMO_PORT:-}
reset=""
while [ $# -gt 0 ]; do
    case $1 in
        --port) [ $# -ge 2 ] || usage; port=$2; shift 2 ;;
        --port=*) port=${1#--port=}; shift ;;
        --reset) reset=1; shift ;;
        -h|--help) usage ;;
        *) echo "demo.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
if [ -n "$port" ] && ! [[ $port =~ ^[0-9]+$ && $port -ge 1 && $port -le 65535 ]]; then
    echo "demo.sh: the port must be a number from 1 to 65535, got '$port'." >&2
    exit 2
fi

. scripts/venv.sh
lampctl_venv ""

if [ -n "$reset" ]; then
    echo "demo.sh: deleting var/ (the demo's log, users and tokens) to start afresh" >&2
    rm -rf var
fi

lampctl=.venv/bin/lampctl
config=config.toml
bind=$(sed -n 's/^bind *= *"\([^"]*\)".*/\1/p' config.toml | head -n 1)
host=${bind%:*}
if [ -n "$port" ]; then
    # The same config with another port: written beside the database, which it still points at.
    mkdir -p var
    config=var/demo-config.toml
    sed -e "s|^bind *= *\"[^\"]*\"|bind = \"$host:$port\"|" \
        -e 's|^database *= *"var/|database = "|' config.toml > "$config"
    bind="$host:$port"
fi
# Say which address and which setting before anything else, rather than a bare "Address already in use".
if ! .venv/bin/python - "$host" "${bind##*:}" <<'PY'
import socket, sys
s = socket.socket()
# As the server itself does: a port left in TIME_WAIT by the demo just stopped is free to serve.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError as exc:
    sys.exit(1)
finally:
    s.close()
PY
then
    echo "demo.sh: cannot serve on $bind: the address is already in use (another demo or program holds it)." >&2
    echo "  Choose another port: ./demo.sh --port 8081  (or LAMPCTL_DEMO_PORT=8081 ./demo.sh);" >&2
    echo "  for a lasting change, edit service.bind in config.toml." >&2
    exit 1
fi

creds=var/demo-credentials.txt
if [ ! -f "$creds" ]; then
    mkdir -p var
    $lampctl check-config --simulate --config "$config" >&2
    $lampctl user add admin --role admin --pin 1234 --config "$config" >/dev/null
    $lampctl user add ann --role practitioner --pin 2468 --config "$config" >/dev/null
    token=$($lampctl token create admin --config "$config")
    umask 077
    cat > "$creds" <<CREDS
Demo accounts made on the first run (change them before real use: lampctl user remove / user add):
  admin  PIN 1234  (role admin: log, usage, users, fault reset)
  ann    PIN 2468  (role practitioner: panel)
API token for admin: $token
CREDS
fi
cat "$creds"
# The file remembers the first run only: say when the users have changed since.
users=$($lampctl user list --config "$config" 2>/dev/null || true)
for name in admin ann; do
    if ! grep -qw "^$name" <<<"$users"; then
        echo "Note: user $name no longer exists, so the list above is out of date; ./demo.sh --reset starts afresh." >&2
    fi
done
echo "PINs or tokens changed since? This list is not updated: ./demo.sh --reset starts the demo afresh."
echo "  try: curl -H \"Authorization: Bearer <token>\" http://$bind/api/lamps"
echo "  or the CLI: .venv/bin/lampctl status --config $config  (stop-all, start, log ... likewise)"
echo "Panel: http://$bind/  (Ctrl-C stops the demo; every lamp goes off)"
exec $lampctl serve --config "$config" --simulate
