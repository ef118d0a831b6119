"""The lamps' analog guards in the host's units: degrees and amps to the firmware's raw ADC range and back.

The firmware compares integers only (firmware_bridge/firmware/logic.py): each guard channel is
(lamp, adc, low, high) in `ADC.read_u16()` units, and the board cuts the lamp when a reading
leaves low..high (S23). This module is where those integers come from, for `lampctl firmware
flash`, `firmware check` and the link's check at HELLO alike, and where a reading or a trip is
put back into words and units for the panel, the admin pages and the record.

Wiring assumed (docs/wiring.md):
- thermistor: 3V3 -- series resistor -- ADC pin -- NTC thermistor -- GND, so a hotter NTC reads
  lower; an open thermistor reads full scale and a shorted one reads 0.
- current: a sensor with a DC output from 0 V at 0 A to 3.3 V at `current_full_scale_a`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lampctl.config import LampConfig

FULL_SCALE = 65535  # ADC.read_u16()
KELVIN = 273.15
T25_K = 25 + KELVIN
# A thermistor reading colder than this is open (unplugged, a broken wire): the guard's high end.
OPEN_BELOW_C = -20.0
# A thermistor trip hotter than this is a shorted sensor, not a hot lamp.
SHORTED_ABOVE_C = 150.0
# Trip sides as the firmware reports them (protocol SENSE): below low, above high, a read that failed.
TRIP_LOW, TRIP_HIGH, TRIP_FAIL = 1, 2, 3


class Channel(NamedTuple):
    """One guard channel: which lamp it cuts, its ADC input, and the raw range it must stay in."""

    lamp: int
    adc: int
    low: int
    high: int
    kind: str  # "thermistor" or "current"


def _thermistor_r(lamp: LampConfig, temp_c: float) -> float:
    return lamp.thermistor_r25 * math.exp(lamp.thermistor_beta * (1 / (temp_c + KELVIN) - 1 / T25_K))


def thermistor_raw(lamp: LampConfig, temp_c: float) -> int:
    """The ADC reading of the lamp's thermistor divider at `temp_c`."""
    r = _thermistor_r(lamp, temp_c)
    return round(FULL_SCALE * r / (r + lamp.thermistor_series_r))


def thermistor_c(lamp: LampConfig, raw: int) -> float | None:
    """The temperature a reading means, or None when it reads open (full scale) or shorted (0)."""
    if raw <= 0 or raw >= FULL_SCALE:
        return None
    r = lamp.thermistor_series_r * raw / (FULL_SCALE - raw)
    return 1 / (1 / T25_K + math.log(r / lamp.thermistor_r25) / lamp.thermistor_beta) - KELVIN


def current_raw(lamp: LampConfig, amps: float) -> int:
    return min(FULL_SCALE, round(FULL_SCALE * amps / lamp.current_full_scale_a))


def current_a(lamp: LampConfig, raw: int) -> float:
    return lamp.current_full_scale_a * raw / FULL_SCALE


def channels(lamps: Sequence[LampConfig]) -> list[Channel]:
    """Every guard channel of the config, in lamp order, a lamp's thermistor before its current sensor."""
    found = []
    for i, lamp in enumerate(lamps):
        if lamp.thermistor_adc is not None:
            # Hotter reads lower: the limit is the low end; colder than OPEN_BELOW_C is an open sensor.
            low, high = thermistor_raw(lamp, lamp.max_temp_c), thermistor_raw(lamp, OPEN_BELOW_C)
            found.append(Channel(i, lamp.thermistor_adc, low, high, "thermistor"))
        if lamp.current_adc is not None and lamp.max_amps is not None:
            found.append(Channel(i, lamp.current_adc, 0, current_raw(lamp, lamp.max_amps), "current"))
    return found


def guard_table(lamps: Sequence[LampConfig]) -> list[tuple[int, int, int, int]]:
    """What the firmware must be flashed with: (lamp, adc, low, high) per channel, in channel order."""
    return [(c.lamp, c.adc, c.low, c.high) for c in channels(lamps)]


def trip_words(lamp: LampConfig, channel: Channel, side: int, raw: int) -> tuple[str, str]:
    """(the session's end_reason, the fault's reason) for a trip the firmware reported."""
    name = lamp.name
    sensor = "temperature" if channel.kind == "thermistor" else "current"
    if side not in (TRIP_LOW, TRIP_HIGH):
        return "fault", f"the {sensor} sensor of {name} could not be read (its ADC input failed)"
    if channel.kind == "thermistor":
        temp = thermistor_c(lamp, raw)
        if side == TRIP_HIGH:
            return "fault", f"the temperature sensor of {name} reads open (unplugged or a broken wire)"
        if temp is None or temp > SHORTED_ABOVE_C:
            return "fault", f"the temperature sensor of {name} reads shorted"
        return "over-temperature", (
            f"over-temperature: {name} read {temp:.0f} °C, above its limit of {lamp.max_temp_c:g} °C"
        )
    if side == TRIP_HIGH:
        return "over-current", (
            f"over-current: {name} drew {current_a(lamp, raw):.2f} A, above its limit of "
            f"{lamp.max_amps:g} A (a short or the wrong bulb)"
        )
    return "fault", f"the current sensor of {name} reads below 0 A (a wiring fault)"
