"""What settings exist, and config.toml parsed and checked into frozen records (lampctl.config.record).

Each key has one row in SETTINGS (type, default, range, unit, one line of doc); the checks
that tie keys together, or a key to the firmware, are declared beside it in CONSTRAINTS.
The parser reads each key at its point of use by name, as Klipper's `config.getfloat()`
does, and takes everything else from the row; so do the README's configuration table and
config.toml's comments (lampctl.config.docs renders them, a test holds them to it).
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware_bridge import protocol
from lampctl.config.record import Record
from lampctl.core.safety import HARD_CEILING_MINUTES, S7_BACKSTOP_FACTOR, s7_backstop_ms

if TYPE_CHECKING:
    from collections.abc import Callable

    # Imported where an [mqtt] table is read: `serve` without one reaches the relays sooner (S1).
    from lampctl.config.mqtt import MqttConfig

LAMP_ID_RE = re.compile(r"[a-z0-9-]{1,32}")
# gpiozero's own factory names (gpiozero.pins entry points) plus "mock".
PIN_FACTORIES = ("mock", "lgpio", "rpigpio", "pigpio", "native")
# One Pi drives a 4- or 8-channel relay board; the firmware protocol addresses this many outputs.
MAX_LAMPS = protocol.MAX_LAMPS
MAX_NAME = 64
MAX_PRESETS = 8
# S7/S14: the firmware arms a lamp for at most MAX_ARM_MS, which holds the longest session the
# config allows (the hard ceiling) x 1.10 and this much grace: a larger grace_s could not be armed.
GRACE_MAX_S = (protocol.MAX_ARM_MS - s7_backstop_ms(HARD_CEILING_MINUTES * 60, 0)) / 1000


class ConfigError(Exception):
    """A configuration problem; str() is one line naming the file and the key."""


class Range(Record):
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

    def short(self) -> str:
        """The range as the docs write it: 0.2-10, 0.05 to under 5, greater than 0, at most 60."""
        if self.low_open and self.low == 0:
            return f"greater than 0, at most {_shown(self.high)}"
        if self.high_open:
            return f"{_shown(self.low)} to under {_shown(self.high)}"
        return f"{_shown(self.low)}-{_shown(self.high)}"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()  # a Setting's default when the key must be given


class Setting(Record):
    """One key of config.toml: what it is, what it may be, and what it is when left out."""

    name: str  # dotted, as messages name it: "firmware.grace_s", "lamps[].relay_pin" (any lamp)
    kind: str  # bool, int, number, pin (a BCM GPIO number), text, minutes (a list of durations)
    default: object  # when left out; None: nothing in its place (an optional pin); REQUIRED: must be given
    doc: str  # one line: what it does (markdown: `code` marks names)
    range: Range | None = None  # numbers; for bind and url, the port's
    unit: str = ""
    choices: tuple[str, ...] = ()
    form: str = ""  # what a text value must look like, in words
    pattern: str = ""  # a regular expression a text value must match whole
    max_len: int = 0  # the longest text, or the most entries of a list
    at_most: str = ""  # a key of the same table that bounds this one (each entry of a list), read before it
    default_words: str = ""  # the default in words where another key or the host decides it
    reason: str = ""  # why the range ends where it does: said in the error and the docs

    @property
    def span(self) -> Range:
        """The range of a number row, which every one has (S14)."""
        if self.range is None:
            raise TypeError(f"{self.name} has no range")
        return self.range

    @property
    def table(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def key(self) -> str:
        return self.name.rpartition(".")[2]


class Table(Record):
    """One table of config.toml; `many` gives how many an array of tables ([[lamps]]) holds."""

    name: str
    doc: str
    many: tuple[int, int] | None = None


_NUMBER_KINDS = ("int", "number")
PIN = Range(0, 53)  # a BCM GPIO number

TABLES = (
    Table("service", "The panel, the API and the records. Optional table."),
    Table(
        "safety", "The E-stop, the heartbeat to the firmware and the indicator shared by every lamp. Optional table."
    ),
    Table(
        "firmware",
        "The independent second channel: a microcontroller that cuts the lamps by itself. "
        "Leave this table out to run without it. `lampctl serve --simulate` ignores port and starts "
        "a simulated microcontroller of its own (its log: simulator.log beside the database).",
    ),
    Table("panel", "The practitioners' panel. Optional table."),
    Table("mqtt", "Fleet: several Pis joined through an MQTT broker (docs/fleet.md). Optional table."),
    Table(
        "lamps",
        f"One table per lamp, in the order of the firmware's outputs: 1 to {MAX_LAMPS} "
        f"(the firmware protocol's {MAX_LAMPS} channels).",
        many=(1, MAX_LAMPS),
    ),
)

# S14: no setting can switch safety off. Every number the config accepts has its documented range
# here, and every check reads it from here; a key bounded by another key (heartbeat_s by watchdog_s,
# presets by max_minutes) is checked against both: its range here and its row's at_most or CONSTRAINTS.
SETTINGS = (
    Setting(
        "service.bind",
        "text",
        "127.0.0.1:8080",
        range=Range(0, 65535),
        form="host:port",
        doc="host:port of the panel and API (`0.0.0.0:8080` serves the clinic LAN); port 0 takes a free port, "
        "which the running service writes to `service.address` beside the database for the CLI",
    ),
    Setting(
        "service.database",
        "text",
        "var/lampctl.db",
        form="a file path",
        doc="SQLite file, relative to the config file; `cli.token`, `service.address`, `secret.key` and the "
        "lock file live beside it",
    ),
    Setting(
        "service.pin_factory",
        "text",
        "mock",
        choices=PIN_FACTORIES,
        form="pin factory",
        doc="gpiozero pin factory: `lgpio` on a Pi, `mock` off a Pi (`serve --simulate` forces `mock`)",
    ),
    Setting(
        "service.log_queue",
        "int",
        10000,
        range=Range(100, 1_000_000),
        unit="records",
        doc="usage-log records held in memory while the disk is slow or failing",
    ),
    Setting(
        "service.max_lamps_on",
        "int",
        None,
        range=Range(1, MAX_LAMPS),
        unit="lamps",
        default_words="every lamp",
        doc="the most lamps on at once, for a circuit that cannot carry them all: a start past it is refused (S26)",
    ),
    Setting(
        "service.secure_cookies",
        "bool",
        False,
        doc="mark the login cookie `Secure` (sent over HTTPS only), for a panel served through a TLS proxy",
    ),
    Setting("safety.estop_pin", "pin", None, doc="E-stop push button wired to ground (internal pull-up)"),
    Setting(
        "safety.heartbeat_s",
        "number",
        1.0,
        range=Range(0.05, 5.0, high_open=True),
        unit="s",
        doc="host -> firmware heartbeat period",
    ),
    Setting("safety.indicator_pin", "pin", None, doc="LED lit while any lamp is on"),
    Setting(
        "firmware.port",
        "text",
        REQUIRED,
        form="a serial port or pyserial URL",
        doc="the microcontroller's serial port or pyserial URL: `/dev/ttyACM0`, `socket://127.0.0.1:7777`, a pty path",
    ),
    Setting(
        "firmware.watchdog_s",
        "number",
        3.0,
        range=Range(0.2, 10),
        unit="s",
        doc="the firmware cuts every lamp after this long without a heartbeat",
    ),
    Setting(
        "firmware.grace_s",
        "number",
        0.1,
        range=Range(0, GRACE_MAX_S),
        unit="s",
        doc=f"the firmware's backstop of a session = planned duration x {S7_BACKSTOP_FACTOR:.2f} + `grace_s`",
        reason=f"the firmware arms a lamp for at most {protocol.MAX_ARM_MS // 1000} s: a "
        f"{HARD_CEILING_MINUTES}-minute session x {S7_BACKSTOP_FACTOR:.2f} and {GRACE_MAX_S:g} s more",
    ),
    Setting(
        "firmware.reply_timeout_s",
        "number",
        0.5,
        range=Range(0.05, 5),
        unit="s",
        doc="how long the link waits for each firmware reply, an ARM's included",
    ),
    Setting(
        "panel.lock_after_s",
        "number",
        0,
        range=Range(0, 86400),
        unit="s",
        doc="idle seconds before a shared tablet locks (Stop stays usable); 0 never locks",
    ),
    Setting(
        "mqtt.url",
        "text",
        REQUIRED,
        range=Range(1, 65535),
        form="mqtt://host[:port] or mqtts://host[:port]",
        doc="the broker; without a port, 1883 for `mqtt://` and 8883 for `mqtts://` (TLS)",
    ),
    Setting(
        "mqtt.node",
        "text",
        None,
        pattern=r"[A-Za-z0-9_-]{1,64}",
        form="1-64 characters of A-Z, a-z, 0-9, '_' and '-'",
        default_words="the hostname",
        doc="this Pi's name in topics and Home Assistant ids",
    ),
    Setting("mqtt.username", "text", None, form="a user name", doc="user name at the broker"),
    Setting(
        "mqtt.password_file",
        "text",
        None,
        form="a file path",
        doc="file whose first line is the broker password, relative to the config file; needs `mqtt.username`",
    ),
    Setting(
        "mqtt.ca_file",
        "text",
        None,
        form="a file path",
        default_words="the system's CA store",
        doc="PEM file of the CA that signed the broker's certificate, relative to the config file; needs `mqtts://`",
    ),
    Setting(
        "mqtt.cert_file",
        "text",
        None,
        form="a file path",
        doc="this client's certificate (PEM, relative to the config file) for a broker that asks for one; "
        "needs `mqtt.key_file` and `mqtts://`",
    ),
    Setting(
        "mqtt.key_file", "text", None, form="a file path", doc="the private key (PEM, unencrypted) of `mqtt.cert_file`"
    ),
    Setting(
        "mqtt.discovery_prefix",
        "text",
        "homeassistant",
        pattern=r"[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}",
        form="topic levels of A-Z, a-z, 0-9, '_' and '-' joined by '/' (no wildcards, no empty level)",
        doc="Home Assistant's discovery prefix",
    ),
    Setting(
        "mqtt.commands",
        "bool",
        False,
        doc="`true` lets MQTT and Home Assistant start presets (each start checked here as any other)",
    ),
    Setting(
        "lamps[].id",
        "text",
        REQUIRED,
        pattern=LAMP_ID_RE.pattern,
        form="1-32 characters of a-z, 0-9 and '-'",
        doc="used in URLs and records",
    ),
    Setting(
        "lamps[].name",
        "text",
        None,
        max_len=MAX_NAME,
        form=f"a name of 1-{MAX_NAME} characters",
        default_words="the id",
        doc="shown on the panel",
    ),
    Setting("lamps[].relay_pin", "pin", REQUIRED, doc="relay input of the lamp"),
    Setting("lamps[].active_high", "bool", True, doc="`false` for the common active-low relay boards"),
    Setting(
        "lamps[].max_minutes",
        "number",
        30,
        range=Range(1, HARD_CEILING_MINUTES),
        unit="min",
        doc="longest time per patient, extensions and continued sessions included (S3)",
        reason="the hard ceiling",
    ),
    Setting(
        "lamps[].default_minutes",
        "number",
        20,
        range=Range(0, HARD_CEILING_MINUTES, low_open=True),
        unit="min",
        at_most="max_minutes",
        default_words="20, or max_minutes if lower",
        doc="the duration the panel offers first, in minutes",
    ),
    Setting(
        "lamps[].presets",
        "minutes",
        (10, 15, 20, 30),
        range=Range(0, HARD_CEILING_MINUTES, low_open=True),
        unit="min",
        max_len=MAX_PRESETS,
        at_most="max_minutes",
        default_words="[10, 15, 20, 30], those within max_minutes",
        doc="the panel's duration buttons, in minutes (fractions allowed)",
    ),
    Setting(
        "lamps[].cooldown_s",
        "number",
        0,
        range=Range(0, 3600),
        unit="s",
        doc="rest after a session before the next may start (S8)",
    ),
    Setting(
        "lamps[].rest_window_s",
        "number",
        300,
        range=Range(0, 86400),
        unit="s",
        doc="a start this soon after the last session continues that patient's max_minutes unless marked a "
        "new patient (S18); 0 turns it off",
    ),
    Setting(
        "lamps[].feedback_pin",
        "pin",
        None,
        doc="input reading whether the lamp is really powered (stuck-relay detection, S6)",
    ),
    Setting(
        "lamps[].buzzer_pin",
        "pin",
        None,
        doc="buzzer of this lamp: a short beep a minute before the end, a long "
        "one at the end, repeated beeps on a fault",
    ),
    Setting("lamps[].indicator_pin", "pin", None, doc="LED lit while this lamp's relay is on"),
    Setting(
        "lamps[].stop_pin",
        "pin",
        None,
        doc="the patient's stop button or pull cord at the couch, to ground (internal pull-up): a press "
        "ends the session `patient`; held down, it keeps the lamp from starting (S24)",
    ),
    Setting(
        "lamps[].tilt_pin",
        "pin",
        None,
        doc="tilt switch on the lamp stand, closed to ground while upright (internal pull-up): open "
        "(tilted, or a broken wire) turns the lamp off and latches a fault (S25)",
    ),
    Setting(
        "lamps[].thermistor_adc",
        "int",
        None,
        range=Range(0, 2),
        doc="the microcontroller's ADC input (0-2: GP26-GP28) of an NTC thermistor at the lamp head or the "
        "couch; the firmware cuts the lamp itself past `max_temp_c` or on an open or shorted sensor (S23)",
    ),
    Setting(
        "lamps[].max_temp_c",
        "number",
        60,
        range=Range(20, 120),
        unit="°C",
        doc="the thermistor's limit: hotter, the firmware cuts the lamp and it latches `over-temperature`",
    ),
    Setting(
        "lamps[].thermistor_beta",
        "number",
        3950,
        range=Range(1000, 10000),
        unit="K",
        doc="the thermistor's B constant (its data sheet's B25/85 or B25/50)",
    ),
    Setting(
        "lamps[].thermistor_r25",
        "number",
        10000,
        range=Range(100, 1_000_000),
        unit="ohm",
        doc="the thermistor's resistance at 25 °C",
    ),
    Setting(
        "lamps[].thermistor_series_r",
        "number",
        10000,
        range=Range(100, 1_000_000),
        unit="ohm",
        doc="the divider's fixed resistor, from 3V3 to the ADC pin",
    ),
    Setting(
        "lamps[].current_adc",
        "int",
        None,
        range=Range(0, 2),
        doc="the microcontroller's ADC input (0-2: GP26-GP28) of a current sensor with a DC output "
        "(0 V at 0 A); the firmware cuts the lamp itself past `max_amps` (S23)",
    ),
    Setting(
        "lamps[].current_full_scale_a",
        "number",
        5,
        range=Range(0.1, 100),
        unit="A",
        doc="the current at which the sensor's output reaches 3.3 V",
    ),
    Setting(
        "lamps[].max_amps",
        "number",
        None,
        range=Range(0, 100, low_open=True),
        unit="A",
        default_words="required with `current_adc`",
        doc="above this the firmware cuts the lamp (a short or the wrong bulb) and it latches `over-current`",
    ),
    Setting(
        "lamps[].min_amps",
        "number",
        0,
        range=Range(0, 100),
        unit="A",
        doc="below this while on, the bulb is reported blown on the panel and the bulbs page; 0: not checked",
    ),
    Setting(
        "lamps[].bulb_life_h",
        "number",
        5000,
        range=Range(1, 100_000),
        unit="h",
        doc="rated bulb life, for the admin's bulb-hours warning",
    ),
)
_ROWS = {row.name: row for row in SETTINGS}
# Every range in one view (the rows hold them): "firmware.grace_s" -> Range, "pin" -> the GPIO numbers.
RANGES: dict[str, Range] = {row.name: row.range for row in SETTINGS if row.range and row.kind != "text"} | {"pin": PIN}


def setting(name: str) -> Setting:
    """The row of a key, by its dotted name ("lamps[].relay_pin")."""
    return _ROWS[name]


def _default(name: str):
    return _ROWS[name].default


_BIND_HOST, _, _BIND_PORT = _default("service.bind").rpartition(":")


class ServiceConfig(Record):
    host: str = _BIND_HOST
    port: int = int(_BIND_PORT)
    database: Path = Path(_default("service.database"))
    pin_factory: str = _default("service.pin_factory")
    log_queue: int = _default("service.log_queue")
    # Mark the login cookie Secure: set it when the panel is served over HTTPS (a TLS proxy).
    secure_cookies: bool = _default("service.secure_cookies")
    max_lamps_on: int | None = _default("service.max_lamps_on")  # None: every lamp (S26)


class SafetyConfig(Record):
    estop_pin: int | None = _default("safety.estop_pin")
    heartbeat_s: float = _default("safety.heartbeat_s")
    indicator_pin: int | None = _default("safety.indicator_pin")


class FirmwareConfig(Record):
    port: str = "/dev/ttyACM0"  # what a FirmwareConfig made in code talks to; config.toml must name its port
    watchdog_s: float = _default("firmware.watchdog_s")
    grace_s: float = _default("firmware.grace_s")
    reply_timeout_s: float = _default("firmware.reply_timeout_s")


class PanelConfig(Record):
    # Idle seconds before a shared tablet locks (Stop stays usable); 0 never locks.
    lock_after_s: float = _default("panel.lock_after_s")


class LampConfig(Record):
    id: str
    name: str
    relay_pin: int
    active_high: bool = _default("lamps[].active_high")
    max_minutes: float = _default("lamps[].max_minutes")
    default_minutes: float = _default("lamps[].default_minutes")
    presets: tuple[float, ...] = _default("lamps[].presets")
    cooldown_s: float = _default("lamps[].cooldown_s")
    feedback_pin: int | None = _default("lamps[].feedback_pin")
    bulb_life_h: float = _default("lamps[].bulb_life_h")
    # S18: a start this soon after the lamp's last session continues that patient's budget.
    rest_window_s: float = _default("lamps[].rest_window_s")
    buzzer_pin: int | None = _default("lamps[].buzzer_pin")  # sounds at the end of a session and on a fault
    indicator_pin: int | None = _default("lamps[].indicator_pin")  # lit while this lamp is on
    stop_pin: int | None = _default("lamps[].stop_pin")  # the patient's button (S24)
    tilt_pin: int | None = _default("lamps[].tilt_pin")  # closed while the stand is upright (S25)
    # The firmware's analog guards (S23): lampctl.core.sensors turns these into raw ADC ranges.
    thermistor_adc: int | None = _default("lamps[].thermistor_adc")
    max_temp_c: float = _default("lamps[].max_temp_c")
    thermistor_beta: float = _default("lamps[].thermistor_beta")
    thermistor_r25: float = _default("lamps[].thermistor_r25")
    thermistor_series_r: float = _default("lamps[].thermistor_series_r")
    current_adc: int | None = _default("lamps[].current_adc")
    current_full_scale_a: float = _default("lamps[].current_full_scale_a")
    max_amps: float | None = _default("lamps[].max_amps")
    min_amps: float = _default("lamps[].min_amps")

    @property
    def max_s(self) -> float:
        return self.max_minutes * 60


class Config(Record):
    path: Path
    service: ServiceConfig
    safety: SafetyConfig
    firmware: FirmwareConfig | None
    lamps: tuple[LampConfig, ...] = ()
    panel: PanelConfig = PanelConfig()
    mqtt: MqttConfig | None = None  # fleet: lampctl.config.mqtt

    def lamp(self, lamp_id: str) -> LampConfig:
        for lamp in self.lamps:
            if lamp.id == lamp_id:
                return lamp
        raise KeyError(lamp_id)


# ---- checks across keys and layers ----------------------------------------------------------
class Constraint(Record):
    """A rule that ties keys of different tables together, or to the firmware.

    `check` takes the parsed Config and returns its first breach, (the key as the message
    names it, the problem), or None. A key bounded by another key of its own table is
    declared in its row instead (Setting.at_most).
    """

    keys: tuple[str, ...]  # the rows it ties together
    note: str  # what it requires, in words, for the docs of each row in shown_on
    check: Callable[[Config], tuple[str, str] | None]
    shown_on: tuple[str, ...] | None = None  # rows whose docs carry the note; None: the first key's

    def rows(self) -> tuple[str, ...]:
        return self.keys[:1] if self.shown_on is None else self.shown_on


def _s14_heartbeat_under_watchdog(cfg: Config) -> tuple[str, str] | None:
    """The firmware holds its watchdog in whole milliseconds (`lampctl firmware flash` writes
    round(watchdog_s x 1000)) and refuses a host whose heartbeat is not under half of that."""
    if cfg.firmware is None:
        return None
    held_ms = round(cfg.firmware.watchdog_s * 1000)
    if cfg.safety.heartbeat_s < held_ms / 2000:
        return None
    held = "" if held_ms == cfg.firmware.watchdog_s * 1000 else " as the firmware holds it, in whole milliseconds"
    return "safety.heartbeat_s", (
        f"must be under half of firmware.watchdog_s{held} ({_shown(held_ms / 2000)}), "
        f"got {_shown(cfg.safety.heartbeat_s)}"
    )


def _s14_check_backstop_fits(cfg: Config) -> tuple[str, str] | None:
    """S14: every session the config allows can be armed on the firmware (what check-config accepts works).

    The backstop of a session is planned x 1.10 + grace_s (safety.s7_backstop_ms); the firmware
    refuses an ARM above protocol.MAX_ARM_MS, so a lamp whose longest session does not fit
    could never start it. The ranges of grace_s and max_minutes keep to it; this holds them to it.
    """
    if cfg.firmware is None:
        return None
    ceiling_s = protocol.MAX_ARM_MS / 1000
    for i, lamp in enumerate(cfg.lamps):
        armed_ms = s7_backstop_ms(lamp.max_s, cfg.firmware.grace_s)
        if armed_ms > protocol.MAX_ARM_MS:
            most_grace = (protocol.MAX_ARM_MS - s7_backstop_ms(lamp.max_s, 0)) / 1000
            return "firmware.grace_s", (
                f"with lamps[{i}].max_minutes = {_shown(lamp.max_minutes)} and firmware.grace_s = "
                f"{_shown(cfg.firmware.grace_s)} the firmware would be armed for {_shown(armed_ms / 1000)} s "
                f"(max_minutes x 60 x 1.10 + grace_s), more than the {_shown(ceiling_s)} s it accepts: "
                f"lower firmware.grace_s to at most {_shown(max(most_grace, 0))} or lamps[{i}].max_minutes"
            )
    return None


def _unique_lamp_ids(cfg: Config) -> tuple[str, str] | None:
    seen: set[str] = set()
    for i, lamp in enumerate(cfg.lamps):
        if lamp.id in seen:
            return f"lamps[{i}].id", f"duplicate lamp id {lamp.id!r}"
        seen.add(lamp.id)
    return None


_PINS = tuple(row.name for row in SETTINGS if row.kind == "pin")


def _unique_pins(cfg: Config) -> tuple[str, str] | None:
    """No GPIO pin serves two purposes."""
    rows = [setting(name) for name in _PINS]
    owned = [(row.name, getattr(cfg.safety, row.key)) for row in rows if row.table == "safety"]
    for i, lamp in enumerate(cfg.lamps):
        owned += [(f"lamps[{i}].{row.key}", getattr(lamp, row.key)) for row in rows if row.table == "lamps[]"]
    pins: dict[int, str] = {}
    for key, pin in owned:
        if pin is None:
            continue
        if pin in pins:
            return key, f"pin {pin} is already used by {pins[pin]}"
        pins[pin] = key
    return None


def _s23_guards_need_the_firmware(cfg: Config) -> tuple[str, str] | None:
    """S23: an analog guard is the firmware's; without [firmware] nothing would read it."""
    if cfg.firmware is not None:
        return None
    for i, lamp in enumerate(cfg.lamps):
        for key in ("thermistor_adc", "current_adc"):
            if getattr(lamp, key) is not None:
                return f"lamps[{i}].{key}", "needs the [firmware] table: the microcontroller reads it and cuts the lamp"
    return None


def _s23_unique_adcs(cfg: Config) -> tuple[str, str] | None:
    """Each of the microcontroller's ADC inputs reads one sensor."""
    used: dict[int, str] = {}
    for i, lamp in enumerate(cfg.lamps):
        for key in ("thermistor_adc", "current_adc"):
            adc = getattr(lamp, key)
            if adc is None:
                continue
            if adc in used:
                return f"lamps[{i}].{key}", f"ADC input {adc} is already used by {used[adc]}"
            used[adc] = f"lamps[{i}].{key}"
    return None


def _s23_current_limits(cfg: Config) -> tuple[str, str] | None:
    """S23: a current guard has a limit the sensor can read, and a blown-bulb level below it."""
    for i, lamp in enumerate(cfg.lamps):
        if lamp.current_adc is None:
            continue
        if lamp.max_amps is None:
            return f"lamps[{i}].max_amps", "missing (a lamp with current_adc needs the current past which it is cut)"
        if lamp.max_amps >= lamp.current_full_scale_a:
            return f"lamps[{i}].max_amps", (
                f"must be under current_full_scale_a ({_shown(lamp.current_full_scale_a)} A), where the sensor's "
                f"reading stops rising, got {_shown(lamp.max_amps)}"
            )
        if lamp.min_amps >= lamp.max_amps:
            return (
                f"lamps[{i}].min_amps",
                f"must be under max_amps ({_shown(lamp.max_amps)} A), got {_shown(lamp.min_amps)}",
            )
    return None


CONSTRAINTS = (
    Constraint(
        ("safety.heartbeat_s", "firmware.watchdog_s"),
        "under half of `firmware.watchdog_s`, as the firmware holds it in whole milliseconds",
        _s14_heartbeat_under_watchdog,
    ),
    Constraint(
        ("firmware.grace_s", "lamps[].max_minutes"),
        f"each lamp's `max_minutes` x 60 x {S7_BACKSTOP_FACTOR:.2f} + `grace_s` at most {protocol.MAX_ARM_MS // 1000} s, "
        "the firmware's longest arm",
        _s14_check_backstop_fits,
        shown_on=(),
    ),  # grace_s's own range keeps to it: its reason says so
    Constraint(("lamps[].id",), "unique", _unique_lamp_ids),
    Constraint(_PINS, "each pin used once", _unique_pins, shown_on=_PINS),
    Constraint(
        ("lamps[].thermistor_adc", "lamps[].current_adc"),
        "needs the `[firmware]` table",
        _s23_guards_need_the_firmware,
        shown_on=("lamps[].thermistor_adc", "lamps[].current_adc"),
    ),
    Constraint(
        ("lamps[].thermistor_adc", "lamps[].current_adc"),
        "each ADC input used once",
        _s23_unique_adcs,
        shown_on=("lamps[].thermistor_adc", "lamps[].current_adc"),
    ),
    Constraint(
        ("lamps[].max_amps", "lamps[].current_full_scale_a", "lamps[].min_amps"),
        "under `current_full_scale_a`, and above `min_amps`",
        _s23_current_limits,
    ),
)


def notes(name: str) -> list[str]:
    """What the constraints require of a row, in words, for its docs."""
    return [c.note for c in CONSTRAINTS if name in c.rows()]


# ---- the reader -------------------------------------------------------------------------------
_TYPES = {"bool": (bool,), "int": (int,), "number": (int, float), "pin": (int,), "text": (str,), "minutes": (list,)}
_ROW_DEFAULT = object()


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
    """Checks tables, keys, types and ranges, raising ConfigError naming file and key."""

    def __init__(self, path: Path):
        self.path = path
        self._sections: list[_Section] = []

    def fail(self, key: str, problem: str) -> ConfigError:
        # A key comes from the file: keep the message on one line whatever it holds.
        if not key.isprintable() or len(key) > 60:
            key = repr(key[:60])
        return ConfigError(f"{self.path}: {key}: {problem}")

    def table(self, data, name: str, allowed: dict) -> dict:
        """A table outside SETTINGS (the collector's): its keys and their accepted types."""
        if not isinstance(data, dict):
            raise self.fail(name, "must be a table")
        for key, value in data.items():
            if key not in allowed:
                raise self.fail(f"{name}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
            self._type(f"{name}.{key}", value, allowed[key])
        return data

    def section(self, data, where: str, rows: str | None = None) -> _Section:
        """A table of SETTINGS ("firmware"; "lamps[2]" read by the rows "lamps[]"), its keys read one by one."""
        if not isinstance(data, dict):
            raise self.fail(where, "must be a table")
        rows = rows or where
        known = {row.key: row for row in SETTINGS if row.table == rows}
        for key, value in data.items():
            if key not in known:
                raise self.fail(f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(known))})")
            self._type(f"{where}.{key}", value, _TYPES[known[key].kind])
        section = _Section(self, where, known, data)
        self._sections.append(section)
        return section

    def unread(self) -> None:
        """Klipper's rule: a key the parser never read was not used, and is refused rather than ignored."""
        for section in self._sections:
            for key in section.data:
                if key not in section.read:
                    raise self.fail(f"{section.where}.{key}", "is not used by this version of lampctl")

    def _type(self, key: str, value, types: tuple) -> None:
        # bool is an int subclass; a pin of `true` is a mistake, not pin 1.
        if isinstance(value, bool) and bool not in types:
            raise self.fail(key, f"must be {_type_words(types)}, not a boolean")
        if not isinstance(value, types):
            raise self.fail(key, f"must be {_type_words(types)}")

    def number(self, key: str, value, span: Range, reason: str = "", *, at_most: tuple[float, str] | None = None):
        """S14: value finite, at most another key's value if bound by one, and inside span, else
        ConfigError naming the key, the value and what is allowed."""
        why = f" ({reason})" if reason else ""
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, f"must be a finite number {span.words()}{why}, got {_shown(value)}")
        if at_most is not None and value > at_most[0]:
            raise self.fail(key, f"{_shown(value)} is above {at_most[1]} {_shown(at_most[0])}")
        if not span.holds(value):
            raise self.fail(key, f"must be {span.words()}{why}, got {_shown(value)}")
        return value

    def pin(self, key: str, value):
        if value is None:
            return None
        if not PIN.holds(value):
            raise self.fail(key, f"must be a BCM GPIO number {PIN.words()}, got {_shown(value)}")
        return value

    def text(self, key: str, value: str, what: str) -> str:
        if not value or not value.isprintable():
            raise self.fail(key, f"must be {what}: not empty, no control characters")
        return value

    def value(self, key: str, row: Setting, value, at_most: tuple[float, str] | None = None):
        """One value checked against its row: range (and the key bounding it), choices, pattern, length."""
        if value is None or row.kind == "bool":
            return value
        if row.kind == "pin":
            return self.pin(key, value)
        if row.kind in _NUMBER_KINDS:
            return self.number(key, value, row.span, row.reason, at_most=at_most)
        if row.kind == "minutes":
            return self._minutes(key, row, value, at_most)
        if row.pattern:
            if not re.fullmatch(row.pattern, value):
                raise self.fail(key, f"{value[:40]!r} must be {row.form}")
        elif not row.choices:
            self.text(key, value, row.form)
        if row.max_len and len(value) > row.max_len:
            raise self.fail(key, f"must be {row.form}, got {len(value)} characters")
        if row.choices and value not in row.choices:
            raise self.fail(key, f"unknown {row.form} {value[:40]!r} (one of: {', '.join(row.choices)})")
        return value

    def _minutes(self, key: str, row: Setting, value, at_most) -> tuple[float, ...]:
        if not value or len(value) > row.max_len:
            raise self.fail(key, f"must list 1 to {row.max_len} durations in minutes")
        for p in value:
            if isinstance(p, bool) or not isinstance(p, (int, float)):
                raise self.fail(key, f"each preset must be a number of minutes greater than 0, got {p!r:.40}")
            self.number(key, p, row.span, at_most=at_most)
        if len(set(value)) != len(value):
            raise self.fail(key, "each duration may appear only once (one button per preset)")
        return tuple(value)

    def constraints(self, cfg: Config) -> None:
        for constraint in CONSTRAINTS:
            if (breach := constraint.check(cfg)) is not None:
                raise self.fail(*breach)


def reader(path: Path) -> _Reader:
    """The checks config.toml's tables get (keys, types, ranges; ConfigError naming file and key),
    for another file of the same kind: the collector's central.toml."""
    return _Reader(path)


class _Section:
    """One table as the parser reads it: key by key at the point of use, each checked against its row."""

    def __init__(self, reader: _Reader, where: str, rows: dict[str, Setting], data: dict):
        self.reader, self.where, self.rows, self.data = reader, where, rows, data
        self.read: dict[str, Any] = {}  # key -> its value as read

    def get(self, key: str, default=_ROW_DEFAULT):
        """The key's value, else its default (the row's, or one the point of use derives); checked."""
        row = self.rows[key]
        name = f"{self.where}.{key}"
        if row.at_most and row.at_most not in self.read:
            self.get(row.at_most)
        at_most = (self.read[row.at_most], row.at_most) if row.at_most else None
        if key in self.data:
            value = self.data[key]
        else:
            value = row.default if default is _ROW_DEFAULT else default
            if value is REQUIRED:
                table = "every [[lamps]] table" if row.table == "lamps[]" else f"the [{row.table}] table"
                raise self.reader.fail(name, f"missing ({table} needs one: {row.form or 'a BCM GPIO number'})")
        self.read[key] = value = self.reader.value(name, row, value, at_most)
        return value


def _type_words(types) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    if types == _TYPES["number"]:
        return "a number"
    return " or ".join(names[t] for t in types)


# ---- parsing ------------------------------------------------------------------------------
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
    tables = [t.name for t in TABLES]
    for key in data:
        if key not in tables:
            raise r.fail(key, f"unknown key (allowed: {', '.join(sorted(tables))})")
    base = path.parent if path.parent != Path("") else Path(".")
    service = _parse_service(r, data.get("service", {}), base)
    saf = r.section(data.get("safety", {}), "safety")
    safety = SafetyConfig(
        estop_pin=saf.get("estop_pin"), heartbeat_s=saf.get("heartbeat_s"), indicator_pin=saf.get("indicator_pin")
    )
    firmware = _parse_firmware(r, data["firmware"]) if "firmware" in data else None
    pan = r.section(data.get("panel", {}), "panel")
    panel = PanelConfig(lock_after_s=pan.get("lock_after_s"))

    lamps_raw = data.get("lamps")
    low, high = next(t.many for t in TABLES if t.many is not None)  # [[lamps]]
    if not isinstance(lamps_raw, list) or len(lamps_raw) < low:
        raise r.fail("lamps", "at least one [[lamps]] table is required")
    if len(lamps_raw) > high:
        raise r.fail("lamps", f"at most {high} lamps per Pi (an 8-channel relay board), got {len(lamps_raw)}")
    lamps = tuple(_parse_lamp(r, i, raw) for i, raw in enumerate(lamps_raw))
    mqtt = None
    if "mqtt" in data:
        from lampctl.config.mqtt import parse_mqtt

        mqtt = parse_mqtt(r, data["mqtt"], base)
    r.unread()
    cfg = Config(path=path, service=service, safety=safety, firmware=firmware, lamps=lamps, panel=panel, mqtt=mqtt)
    r.constraints(cfg)
    return cfg


def _parse_service(r: _Reader, raw, base: Path) -> ServiceConfig:
    svc = r.section(raw, "service")
    host, port = _parse_bind(r, svc.get("bind"))
    database = Path(svc.get("database"))
    if not database.is_absolute():
        database = (base / database).resolve()
    return ServiceConfig(
        host=host,
        port=port,
        database=database,
        pin_factory=svc.get("pin_factory"),
        log_queue=svc.get("log_queue"),
        secure_cookies=svc.get("secure_cookies"),
        max_lamps_on=svc.get("max_lamps_on"),
    )


def _parse_bind(r: _Reader, bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not host.isprintable() or not re.fullmatch(r"[0-9]{1,5}", port):
        raise r.fail("service.bind", f"must be host:port such as 127.0.0.1:8080, got {bind[:80]!r}")
    return host, r.number("service.bind", int(port), setting("service.bind").span)


def _parse_firmware(r: _Reader, raw) -> FirmwareConfig:
    fw = r.section(raw, "firmware")
    # S14: the watchdog and the backstop (planned x 1.10 + grace_s) stay short, so a frozen
    # host cannot leave a lamp on long past its session.
    return FirmwareConfig(
        port=fw.get("port"),
        watchdog_s=fw.get("watchdog_s"),
        grace_s=fw.get("grace_s"),
        reply_timeout_s=fw.get("reply_timeout_s"),
    )


def _parse_lamp(r: _Reader, i: int, raw) -> LampConfig:
    """One [[lamps]] table; max_minutes from 1 to the hard ceiling, presets and default within it (S3)."""
    where = f"lamps[{i}]"
    lamp = r.section(raw, where, "lamps[]")
    lamp_id = lamp.get("id")
    max_minutes = lamp.get("max_minutes")
    return LampConfig(
        id=lamp_id,
        name=lamp.get("name", lamp_id),
        relay_pin=lamp.get("relay_pin"),
        active_high=lamp.get("active_high"),
        max_minutes=max_minutes,
        default_minutes=lamp.get("default_minutes", min(_default("lamps[].default_minutes"), max_minutes)),
        presets=lamp.get("presets", tuple(p for p in _default("lamps[].presets") if p <= max_minutes)),
        cooldown_s=lamp.get("cooldown_s"),
        feedback_pin=lamp.get("feedback_pin"),
        bulb_life_h=lamp.get("bulb_life_h"),
        rest_window_s=lamp.get("rest_window_s"),
        buzzer_pin=lamp.get("buzzer_pin"),
        indicator_pin=lamp.get("indicator_pin"),
        stop_pin=lamp.get("stop_pin"),
        tilt_pin=lamp.get("tilt_pin"),
        thermistor_adc=lamp.get("thermistor_adc"),
        max_temp_c=lamp.get("max_temp_c"),
        thermistor_beta=lamp.get("thermistor_beta"),
        thermistor_r25=lamp.get("thermistor_r25"),
        thermistor_series_r=lamp.get("thermistor_series_r"),
        current_adc=lamp.get("current_adc"),
        current_full_scale_a=lamp.get("current_full_scale_a"),
        max_amps=lamp.get("max_amps"),
        min_amps=lamp.get("min_amps"),
    )
