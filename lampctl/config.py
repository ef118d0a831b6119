"""Parse and validate config.toml into frozen dataclasses."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lampctl.safety import HARD_CEILING_MINUTES

LAMP_ID_RE = re.compile(r"^[a-z0-9-]+$")
# gpiozero's own factory names (gpiozero.pins entry points) plus "mock".
PIN_FACTORIES = ("mock", "lgpio", "rpigpio", "pigpio", "native")
# One Pi drives a 4- or 8-channel relay board; the firmware protocol addresses 8 outputs.
MAX_LAMPS = 8


class ConfigError(Exception):
    """A configuration problem; str() is one line naming the file and the key."""


@dataclass(frozen=True)
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    database: Path = Path("var/lampctl.db")
    pin_factory: str = "mock"
    log_queue: int = 10000


@dataclass(frozen=True)
class SafetyConfig:
    estop_pin: int | None = None
    heartbeat_s: float = 1.0
    indicator_pin: int | None = None


@dataclass(frozen=True)
class FirmwareConfig:
    port: str = "/dev/ttyACM0"
    watchdog_s: float = 3.0
    grace_s: float = 0.1
    reply_timeout_s: float = 0.5


@dataclass(frozen=True)
class LampConfig:
    id: str
    name: str
    relay_pin: int
    active_high: bool = True
    max_minutes: float = 30
    default_minutes: float = 20
    presets: tuple[float, ...] = (10, 15, 20, 30)
    cooldown_s: float = 0
    feedback_pin: int | None = None
    bulb_life_h: float = 5000
    # S18: a start this soon after the lamp's last session continues that patient's budget.
    rest_window_s: float = 300

    @property
    def max_s(self) -> float:
        return self.max_minutes * 60


@dataclass(frozen=True)
class Config:
    path: Path
    service: ServiceConfig
    safety: SafetyConfig
    firmware: FirmwareConfig | None
    lamps: tuple[LampConfig, ...] = field(default_factory=tuple)

    def lamp(self, lamp_id: str) -> LampConfig:
        for lamp in self.lamps:
            if lamp.id == lamp_id:
                return lamp
        raise KeyError(lamp_id)


# Each table's keys: name -> (accepted types, required)
_NUM = (int, float)
_SERVICE_KEYS = {"bind": (str,), "database": (str,), "pin_factory": (str,), "log_queue": (int,)}
_SAFETY_KEYS = {"estop_pin": (int,), "heartbeat_s": _NUM, "indicator_pin": (int,)}
_FIRMWARE_KEYS = {"port": (str,), "watchdog_s": _NUM, "grace_s": _NUM, "reply_timeout_s": _NUM}
_LAMP_KEYS = {
    "id": (str,), "name": (str,), "relay_pin": (int,), "active_high": (bool,),
    "max_minutes": _NUM, "default_minutes": _NUM, "presets": (list,), "cooldown_s": _NUM,
    "feedback_pin": (int,), "bulb_life_h": _NUM, "rest_window_s": _NUM,
}
_TOP_KEYS = {"service", "safety", "firmware", "lamps"}


class _Reader:
    """Checks one table's keys and types, raising ConfigError naming file and key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}")

    def table(self, data, name: str, allowed: dict) -> dict:
        if not isinstance(data, dict):
            raise self.fail(name, "must be a table")
        for key, value in data.items():
            if key not in allowed:
                raise self.fail(f"{name}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
            types = allowed[key]
            # bool is an int subclass; a pin of `true` is a mistake, not pin 1.
            if isinstance(value, bool) and bool not in types:
                raise self.fail(f"{name}.{key}", f"must be {_type_words(types)}, not a boolean")
            if not isinstance(value, types):
                raise self.fail(f"{name}.{key}", f"must be {_type_words(types)}")
        return data

    def positive(self, key: str, value: float, *, zero_ok: bool = False) -> float:
        if value < 0 or (value == 0 and not zero_ok):
            raise self.fail(key, f"must be {'0 or more' if zero_ok else 'greater than 0'}, got {value}")
        return value

    def pin(self, key: str, value):
        if value is None:
            return None
        if not 0 <= value <= 53:
            raise self.fail(key, f"must be a BCM GPIO number from 0 to 53, got {value}")
        return value


def _type_words(types) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    if types == _NUM:
        return "a number"
    return " or ".join(names[t] for t in types)


def load(path: str | Path) -> Config:
    """Read and validate the file; raise ConfigError with one line on any problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (pass --config PATH or set LAMPCTL_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    return parse(data, path)


def parse(data: dict, path: Path) -> Config:
    r = _Reader(path)
    for key in data:
        if key not in _TOP_KEYS:
            raise r.fail(key, f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
    base = path.parent if path.parent != Path("") else Path(".")

    svc = r.table(data.get("service", {}), "service", _SERVICE_KEYS)
    host, port = _parse_bind(r, svc.get("bind", "127.0.0.1:8080"))
    database = Path(svc.get("database", "var/lampctl.db"))
    if not database.is_absolute():
        database = (base / database).resolve()
    factory = svc.get("pin_factory", "mock")
    if factory not in PIN_FACTORIES:
        raise r.fail("service.pin_factory", f"unknown pin factory {factory!r} (one of: {', '.join(PIN_FACTORIES)})")
    log_queue = svc.get("log_queue", 10000)
    if not 100 <= log_queue <= 1_000_000:
        raise r.fail("service.log_queue", f"must be from 100 to 1000000, got {log_queue}")
    service = ServiceConfig(host=host, port=port, database=database, pin_factory=factory, log_queue=log_queue)

    saf = r.table(data.get("safety", {}), "safety", _SAFETY_KEYS)
    safety = SafetyConfig(
        estop_pin=r.pin("safety.estop_pin", saf.get("estop_pin")),
        heartbeat_s=r.positive("safety.heartbeat_s", saf.get("heartbeat_s", 1.0)),
        indicator_pin=r.pin("safety.indicator_pin", saf.get("indicator_pin")),
    )

    firmware = None
    if "firmware" in data:
        fw = r.table(data["firmware"], "firmware", _FIRMWARE_KEYS)
        if "port" not in fw:
            raise r.fail("firmware.port", "missing (a serial port or pyserial URL such as socket://127.0.0.1:7777)")
        firmware = FirmwareConfig(
            port=fw["port"],
            watchdog_s=r.positive("firmware.watchdog_s", fw.get("watchdog_s", 3.0)),
            grace_s=r.positive("firmware.grace_s", fw.get("grace_s", 0.1), zero_ok=True),
            reply_timeout_s=r.positive("firmware.reply_timeout_s", fw.get("reply_timeout_s", 0.5)),
        )
        # Under half the watchdog, so one lost heartbeat cannot trip the firmware.
        if safety.heartbeat_s >= firmware.watchdog_s / 2:
            raise r.fail("safety.heartbeat_s",
                         f"must be under half of firmware.watchdog_s ({firmware.watchdog_s}), got {safety.heartbeat_s}")

    lamps_raw = data.get("lamps")
    if not isinstance(lamps_raw, list) or not lamps_raw:
        raise r.fail("lamps", "at least one [[lamps]] table is required")
    if len(lamps_raw) > MAX_LAMPS:
        raise r.fail("lamps", f"at most {MAX_LAMPS} lamps per Pi (an 8-channel relay board), got {len(lamps_raw)}")
    lamps = tuple(_parse_lamp(r, i, raw) for i, raw in enumerate(lamps_raw))

    seen_ids: set[str] = set()
    pins: dict[int, str] = {}
    owned = [("safety.estop_pin", safety.estop_pin), ("safety.indicator_pin", safety.indicator_pin)]
    for i, lamp in enumerate(lamps):
        if lamp.id in seen_ids:
            raise r.fail(f"lamps[{i}].id", f"duplicate lamp id {lamp.id!r}")
        seen_ids.add(lamp.id)
        owned += [(f"lamps[{i}].relay_pin", lamp.relay_pin), (f"lamps[{i}].feedback_pin", lamp.feedback_pin)]
    for key, pin in owned:
        if pin is None:
            continue
        if pin in pins:
            raise r.fail(key, f"pin {pin} is already used by {pins[pin]}")
        pins[pin] = key
    return Config(path=path, service=service, safety=safety, firmware=firmware, lamps=lamps)


def _parse_bind(r: _Reader, bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise r.fail("service.bind", f"must be host:port such as 127.0.0.1:8080, got {bind!r}")
    return host.strip("[]"), int(port)


def _parse_lamp(r: _Reader, i: int, raw) -> LampConfig:
    key = f"lamps[{i}]"
    lamp = r.table(raw, key, _LAMP_KEYS)
    for required in ("id", "relay_pin"):
        if required not in lamp:
            raise r.fail(f"{key}.{required}", "missing (every lamp needs an id and a relay_pin)")
    lamp_id = lamp["id"]
    if not LAMP_ID_RE.match(lamp_id) or len(lamp_id) > 32:
        raise r.fail(f"{key}.id", f"{lamp_id!r} must be 1-32 characters of a-z, 0-9 and '-'")
    max_minutes = lamp.get("max_minutes", 30)
    if not 1 <= max_minutes <= HARD_CEILING_MINUTES:
        raise r.fail(f"{key}.max_minutes", f"must be from 1 to {HARD_CEILING_MINUTES} (the hard ceiling), got {max_minutes}")
    default = r.positive(f"{key}.default_minutes", lamp.get("default_minutes", min(20, max_minutes)))
    if default > max_minutes:
        raise r.fail(f"{key}.default_minutes", f"{default} is above max_minutes {max_minutes}")
    presets = lamp.get("presets", [p for p in (10, 15, 20, 30) if p <= max_minutes])
    if not presets or len(presets) > 8:
        raise r.fail(f"{key}.presets", "must list 1 to 8 durations in minutes")
    for p in presets:
        if isinstance(p, bool) or not isinstance(p, _NUM) or p <= 0:
            raise r.fail(f"{key}.presets", f"each preset must be a number of minutes greater than 0, got {p!r}")
        if p > max_minutes:
            raise r.fail(f"{key}.presets", f"preset {p} is above max_minutes {max_minutes}")
    return LampConfig(
        id=lamp_id,
        name=lamp.get("name", lamp_id),
        relay_pin=r.pin(f"{key}.relay_pin", lamp["relay_pin"]),
        active_high=lamp.get("active_high", True),
        max_minutes=max_minutes,
        default_minutes=default,
        presets=tuple(presets),
        cooldown_s=r.positive(f"{key}.cooldown_s", lamp.get("cooldown_s", 0), zero_ok=True),
        feedback_pin=r.pin(f"{key}.feedback_pin", lamp.get("feedback_pin")),
        bulb_life_h=r.positive(f"{key}.bulb_life_h", lamp.get("bulb_life_h", 5000)),
        rest_window_s=r.positive(f"{key}.rest_window_s", lamp.get("rest_window_s", 300), zero_ok=True),
    )
