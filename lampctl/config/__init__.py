"""Parse and validate config.toml into frozen dataclasses."""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from firmware_bridge import protocol
from lampctl.config.mqtt import MqttConfig, parse_mqtt
from lampctl.core.safety import HARD_CEILING_MINUTES, s7_backstop_ms

LAMP_ID_RE = re.compile(r"[a-z0-9-]{1,32}")
# gpiozero's own factory names (gpiozero.pins entry points) plus "mock".
PIN_FACTORIES = ("mock", "lgpio", "rpigpio", "pigpio", "native")
# One Pi drives a 4- or 8-channel relay board; the firmware protocol addresses this many outputs.
MAX_LAMPS = protocol.MAX_LAMPS
MAX_NAME = 64


class ConfigError(Exception):
    """A configuration problem; str() is one line naming the file and the key."""


@dataclass(frozen=True)
class Range:
    """Where a number may lie: low..high, each end included unless marked open."""
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def holds(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def words(self) -> str:
        if self.low_open and self.low == 0:
            return f"greater than 0 and at most {_shown(self.high)}"
        if self.high_open:
            return f"from {_shown(self.low)} to under {_shown(self.high)}"
        return f"from {_shown(self.low)} to {_shown(self.high)}"


# S14: no setting can switch safety off. Every number the config accepts, with its documented
# range; each check reads this one table. A key bounded by another key (heartbeat_s by
# watchdog_s, presets by max_minutes) is checked against both: the table's range and that key.
RANGES: dict[str, Range] = {
    "pin": Range(0, 53),  # a BCM GPIO number
    "service.port": Range(0, 65535),
    "service.log_queue": Range(100, 1_000_000),
    "safety.heartbeat_s": Range(0.05, 5.0, high_open=True),  # and under firmware.watchdog_s / 2
    "firmware.watchdog_s": Range(0.2, 10),
    "firmware.grace_s": Range(0, 60),
    "firmware.reply_timeout_s": Range(0.05, 5),
    "lamps.max_minutes": Range(1, HARD_CEILING_MINUTES),
    "lamps.default_minutes": Range(0, HARD_CEILING_MINUTES, low_open=True),  # and <= max_minutes
    "lamps.presets": Range(0, HARD_CEILING_MINUTES, low_open=True),  # and <= max_minutes
    "lamps.cooldown_s": Range(0, 3600),
    "lamps.rest_window_s": Range(0, 86400),
    "lamps.bulb_life_h": Range(1, 100_000),
    "panel.lock_after_s": Range(0, 86400),
}


@dataclass(frozen=True)
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    database: Path = Path("var/lampctl.db")
    pin_factory: str = "mock"
    log_queue: int = 10000
    # Mark the login cookie Secure: set it when the panel is served over HTTPS (a TLS proxy).
    secure_cookies: bool = False


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
class PanelConfig:
    # Idle seconds before a shared tablet locks (Stop stays usable); 0 never locks.
    lock_after_s: float = 0


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
    buzzer_pin: int | None = None  # sounds at the end of a session and on a fault
    indicator_pin: int | None = None  # lit while this lamp is on

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
    panel: PanelConfig = field(default_factory=PanelConfig)
    mqtt: MqttConfig | None = None  # fleet: lampctl.config.mqtt

    def lamp(self, lamp_id: str) -> LampConfig:
        for lamp in self.lamps:
            if lamp.id == lamp_id:
                return lamp
        raise KeyError(lamp_id)


# Each table's keys: name -> accepted types
_NUM = (int, float)
_SERVICE_KEYS = {"bind": (str,), "database": (str,), "pin_factory": (str,), "log_queue": (int,),
                 "secure_cookies": (bool,)}
_SAFETY_KEYS = {"estop_pin": (int,), "heartbeat_s": _NUM, "indicator_pin": (int,)}
_FIRMWARE_KEYS = {"port": (str,), "watchdog_s": _NUM, "grace_s": _NUM, "reply_timeout_s": _NUM}
_PANEL_KEYS = {"lock_after_s": _NUM}
_LAMP_KEYS = {
    "id": (str,), "name": (str,), "relay_pin": (int,), "active_high": (bool,),
    "max_minutes": _NUM, "default_minutes": _NUM, "presets": (list,), "cooldown_s": _NUM,
    "feedback_pin": (int,), "bulb_life_h": _NUM, "rest_window_s": _NUM, "buzzer_pin": (int,),
    "indicator_pin": (int,),
}
_TOP_KEYS = {"service", "safety", "firmware", "panel", "lamps", "mqtt"}
_LAMP_PINS = ("relay_pin", "feedback_pin", "buzzer_pin", "indicator_pin")


def _shown(value) -> str:
    """A number for a one-line message (a 5000-digit integer must not become 5000 characters)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**15 else "an integer of more than 15 digits"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Reader:
    """Checks one table's keys, types and ranges, raising ConfigError naming file and key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        # A key comes from the file: keep the message on one line whatever it holds.
        if not key.isprintable() or len(key) > 60:
            key = repr(key[:60])
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

    def number(self, key: str, value, rule: str, *, below: tuple[float, str] | None = None,
               at_most: tuple[float, str] | None = None):
        """value checked against RANGES[rule], and optionally under or at most another key's value."""
        span = RANGES[rule]
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, f"must be a finite number {span.words()}, got {_shown(value)}")
        if below is not None and not value < below[0]:
            raise self.fail(key, f"must be under {below[1]} ({_shown(below[0])}), got {_shown(value)}")
        if at_most is not None and value > at_most[0]:
            raise self.fail(key, f"{_shown(value)} is above {at_most[1]} {_shown(at_most[0])}")
        if not span.holds(value):
            raise self.fail(key, f"must be {span.words()}, got {_shown(value)}")
        return value

    def pin(self, key: str, value):
        if value is None:
            return None
        if not RANGES["pin"].holds(value):
            raise self.fail(key, f"must be a BCM GPIO number {RANGES['pin'].words()}, got {_shown(value)}")
        return value

    def text(self, key: str, value: str, what: str) -> str:
        if not value or not value.isprintable():
            raise self.fail(key, f"must be {what}: not empty, no control characters")
        return value


def reader(path: Path) -> _Reader:
    """The checks config.toml's tables get (keys, types, ranges; ConfigError naming file and key),
    for another file of the same kind: the collector's central.toml."""
    return _Reader(path)


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
    return from_bytes(raw, path)


def from_bytes(raw: bytes, path: Path) -> Config:
    """Validate the bytes of a config file (path names it in messages and anchors relative paths)."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except ValueError:  # tomllib passes on int()'s limit of 4300 digits
        raise ConfigError(f"{path}: malformed TOML: a number too long to read") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed TOML: arrays or tables nested too deeply") from None
    return parse(data, path)


def parse(data: dict, path: Path) -> Config:
    r = _Reader(path)
    for key in data:
        if key not in _TOP_KEYS:
            raise r.fail(key, f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
    service = _parse_service(r, data.get("service", {}), path.parent if path.parent != Path("") else Path("."))
    saf = r.table(data.get("safety", {}), "safety", _SAFETY_KEYS)
    firmware = _parse_firmware(r, data["firmware"]) if "firmware" in data else None
    # The firmware holds its watchdog in whole milliseconds (`lampctl firmware flash` writes
    # round(watchdog_s x 1000)) and refuses a host whose heartbeat is not under half of that.
    below = None
    if firmware is not None:
        held_ms = round(firmware.watchdog_s * 1000)
        below = (held_ms / 2000, "half of firmware.watchdog_s" + (
            "" if held_ms == firmware.watchdog_s * 1000 else " as the firmware holds it, in whole milliseconds"))
    heartbeat = r.number("safety.heartbeat_s", saf.get("heartbeat_s", 1.0), "safety.heartbeat_s", below=below)
    safety = SafetyConfig(
        estop_pin=r.pin("safety.estop_pin", saf.get("estop_pin")),
        heartbeat_s=heartbeat,
        indicator_pin=r.pin("safety.indicator_pin", saf.get("indicator_pin")),
    )
    pan = r.table(data.get("panel", {}), "panel", _PANEL_KEYS)
    panel = PanelConfig(lock_after_s=r.number("panel.lock_after_s", pan.get("lock_after_s", 0), "panel.lock_after_s"))

    lamps_raw = data.get("lamps")
    if not isinstance(lamps_raw, list) or not lamps_raw:
        raise r.fail("lamps", "at least one [[lamps]] table is required")
    if len(lamps_raw) > MAX_LAMPS:
        raise r.fail("lamps", f"at most {MAX_LAMPS} lamps per Pi (an 8-channel relay board), got {len(lamps_raw)}")
    lamps = tuple(_parse_lamp(r, i, raw) for i, raw in enumerate(lamps_raw))
    _check_unique(r, safety, lamps)
    if firmware is not None:
        _s14_check_backstop_fits(r, firmware, lamps)
    mqtt = parse_mqtt(r, data["mqtt"], path.parent) if "mqtt" in data else None
    return Config(path=path, service=service, safety=safety, firmware=firmware, lamps=lamps, panel=panel, mqtt=mqtt)


def _s14_check_backstop_fits(r: _Reader, firmware: FirmwareConfig, lamps: tuple[LampConfig, ...]) -> None:
    """S14: every session the config allows can be armed on the firmware (what check-config accepts works).

    The backstop of a session is planned x 1.10 + grace_s (safety.s7_backstop_ms); the firmware
    refuses an ARM above protocol.MAX_ARM_MS, so a lamp whose longest session does not fit
    could never start it.
    """
    ceiling_s = protocol.MAX_ARM_MS / 1000
    for i, lamp in enumerate(lamps):
        armed_ms = s7_backstop_ms(lamp.max_s, firmware.grace_s)
        if armed_ms > protocol.MAX_ARM_MS:
            most_grace = (protocol.MAX_ARM_MS - s7_backstop_ms(lamp.max_s, 0)) / 1000
            raise r.fail("firmware.grace_s", (
                f"with lamps[{i}].max_minutes = {_shown(lamp.max_minutes)} and firmware.grace_s = "
                f"{_shown(firmware.grace_s)} the firmware would be armed for {_shown(armed_ms / 1000)} s "
                f"(max_minutes x 60 x 1.10 + grace_s), more than the {_shown(ceiling_s)} s it accepts: "
                f"lower firmware.grace_s to at most {_shown(max(most_grace, 0))} or lamps[{i}].max_minutes"))


def _check_unique(r: _Reader, safety: SafetyConfig, lamps: tuple[LampConfig, ...]) -> None:
    """Lamp ids are unique, and no GPIO pin serves two purposes."""
    seen_ids: set[str] = set()
    owned = [("safety.estop_pin", safety.estop_pin), ("safety.indicator_pin", safety.indicator_pin)]
    for i, lamp in enumerate(lamps):
        if lamp.id in seen_ids:
            raise r.fail(f"lamps[{i}].id", f"duplicate lamp id {lamp.id!r}")
        seen_ids.add(lamp.id)
        owned += [(f"lamps[{i}].{name}", getattr(lamp, name)) for name in _LAMP_PINS]
    pins: dict[int, str] = {}
    for key, pin in owned:
        if pin is None:
            continue
        if pin in pins:
            raise r.fail(key, f"pin {pin} is already used by {pins[pin]}")
        pins[pin] = key


def _parse_service(r: _Reader, raw, base: Path) -> ServiceConfig:
    svc = r.table(raw, "service", _SERVICE_KEYS)
    host, port = _parse_bind(r, svc.get("bind", "127.0.0.1:8080"))
    database = Path(r.text("service.database", svc.get("database", "var/lampctl.db"), "a file path"))
    if not database.is_absolute():
        database = (base / database).resolve()
    factory = svc.get("pin_factory", "mock")
    if factory not in PIN_FACTORIES:
        raise r.fail("service.pin_factory", f"unknown pin factory {factory!r} (one of: {', '.join(PIN_FACTORIES)})")
    return ServiceConfig(host=host, port=port, database=database, pin_factory=factory,
                         log_queue=r.number("service.log_queue", svc.get("log_queue", 10000), "service.log_queue"),
                         secure_cookies=svc.get("secure_cookies", False))


def _parse_bind(r: _Reader, bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not host.isprintable() or not re.fullmatch(r"[0-9]{1,5}", port):
        raise r.fail("service.bind", f"must be host:port such as 127.0.0.1:8080, got {bind[:80]!r}")
    return host, r.number("service.bind", int(port), "service.port")


def _parse_firmware(r: _Reader, raw) -> FirmwareConfig:
    fw = r.table(raw, "firmware", _FIRMWARE_KEYS)
    if "port" not in fw:
        raise r.fail("firmware.port", "missing (a serial port or pyserial URL such as socket://127.0.0.1:7777)")
    # S14: the watchdog and the backstop (planned x 1.10 + grace_s) stay short, so a frozen
    # host cannot leave a lamp on long past its session.
    return FirmwareConfig(
        port=r.text("firmware.port", fw["port"], "a serial port or pyserial URL"),
        watchdog_s=r.number("firmware.watchdog_s", fw.get("watchdog_s", 3.0), "firmware.watchdog_s"),
        grace_s=r.number("firmware.grace_s", fw.get("grace_s", 0.1), "firmware.grace_s"),
        reply_timeout_s=r.number("firmware.reply_timeout_s", fw.get("reply_timeout_s", 0.5),
                                 "firmware.reply_timeout_s"),
    )


def _parse_lamp(r: _Reader, i: int, raw) -> LampConfig:
    key = f"lamps[{i}]"
    lamp = r.table(raw, key, _LAMP_KEYS)
    for required in ("id", "relay_pin"):
        if required not in lamp:
            raise r.fail(f"{key}.{required}", "missing (every lamp needs an id and a relay_pin)")
    lamp_id = lamp["id"]
    if not LAMP_ID_RE.fullmatch(lamp_id):
        raise r.fail(f"{key}.id", f"{lamp_id[:40]!r} must be 1-32 characters of a-z, 0-9 and '-'")
    name = r.text(f"{key}.name", lamp.get("name", lamp_id), f"a name of 1-{MAX_NAME} characters")
    if len(name) > MAX_NAME:
        raise r.fail(f"{key}.name", f"must be a name of 1-{MAX_NAME} characters, got {len(name)}")
    max_minutes = r.number(f"{key}.max_minutes", lamp.get("max_minutes", 30), "lamps.max_minutes")
    limit = (max_minutes, "max_minutes")
    default = r.number(f"{key}.default_minutes", lamp.get("default_minutes", min(20, max_minutes)),
                       "lamps.default_minutes", at_most=limit)
    return LampConfig(
        id=lamp_id, name=name,
        relay_pin=r.pin(f"{key}.relay_pin", lamp["relay_pin"]),
        active_high=lamp.get("active_high", True),
        max_minutes=max_minutes,
        default_minutes=default,
        presets=_parse_presets(r, key, lamp.get("presets", [p for p in (10, 15, 20, 30) if p <= max_minutes]), limit),
        cooldown_s=r.number(f"{key}.cooldown_s", lamp.get("cooldown_s", 0), "lamps.cooldown_s"),
        feedback_pin=r.pin(f"{key}.feedback_pin", lamp.get("feedback_pin")),
        bulb_life_h=r.number(f"{key}.bulb_life_h", lamp.get("bulb_life_h", 5000), "lamps.bulb_life_h"),
        rest_window_s=r.number(f"{key}.rest_window_s", lamp.get("rest_window_s", 300), "lamps.rest_window_s"),
        buzzer_pin=r.pin(f"{key}.buzzer_pin", lamp.get("buzzer_pin")),
        indicator_pin=r.pin(f"{key}.indicator_pin", lamp.get("indicator_pin")),
    )


def _parse_presets(r: _Reader, key: str, presets: list, limit: tuple[float, str]) -> tuple[float, ...]:
    if not presets or len(presets) > 8:
        raise r.fail(f"{key}.presets", "must list 1 to 8 durations in minutes")
    for p in presets:
        if isinstance(p, bool) or not isinstance(p, _NUM):
            raise r.fail(f"{key}.presets", f"each preset must be a number of minutes greater than 0, got {p!r:.40}")
        r.number(f"{key}.presets", p, "lamps.presets", at_most=limit)
    if len(set(presets)) != len(presets):
        raise r.fail(f"{key}.presets", "each duration may appear only once (one button per preset)")
    return tuple(presets)
