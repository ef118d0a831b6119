#!/usr/bin/env bash
# Run the lampctl demo: simulated GPIO and microcontroller, SQLite in var/, the panel
# on http://127.0.0.1:8080. First run creates the venv and two demo accounts.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh
lampctl_venv ""

config=config.toml
creds=var/demo-credentials.txt
lampctl=.venv/bin/lampctl
if [ ! -f "$creds" ]; then
    mkdir -p var
    $lampctl check-config --config "$config" >&2
    $lampctl user add admin --role admin --pin 1234 --config "$config" >/dev/null
    $lampctl user add ann --role practitioner --pin 2468 --config "$config" >/dev/null
    token=$($lampctl token create admin --config "$config")
    umask 077
    cat > "$creds" <<CREDS
Demo accounts (change them before real use: lampctl user remove / user add):
  admin  PIN 1234  (role admin: log, usage, users, fault reset)
  ann    PIN 2468  (role practitioner: panel)
API token for admin: $token
  try: curl -H "Authorization: Bearer $token" http://127.0.0.1:8080/api/lamps
CREDS
fi
cat "$creds"
echo "Panel: http://127.0.0.1:8080/  (Ctrl-C stops the demo; every lamp goes off)"
exec $lampctl serve --config "$config" --simulate
