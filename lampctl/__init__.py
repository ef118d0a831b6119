"""lampctl: timed, fail-safe control of infrared heat lamps."""
