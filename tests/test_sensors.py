"""S23 on the host: degrees and amps as the firmware's raw ADC ranges, the config's guard keys, a trip in words."""

from __future__ import annotations

import pytest

from lampctl import config as config_mod
from lampctl.config import LampConfig
from lampctl.core import sensors
from tests.conftest import write_config

# A common 10 kohm B3950 NTC beside a 10 kohm resistor: its data sheet's resistances, read off the table.
NTC = LampConfig(id="a", name="Couch A", relay_pin=17, thermistor_adc=0, max_temp_c=60)


@pytest.mark.parametrize(
    ("temp_c", "ohms"),
    [(25, 10_000), (60, 2_490), (0, 33_600), (-20, 105_000), (100, 680)],
)
def test_sensors_thermistor_raw_matches_the_data_sheet_divider(temp_c, ohms):
    expected = 65535 * ohms / (ohms + 10_000)
    assert sensors.thermistor_raw(NTC, temp_c) == pytest.approx(expected, rel=0.03)
    assert sensors.thermistor_c(NTC, round(expected)) == pytest.approx(temp_c, abs=1.5)


def test_sensors_thermistor_open_or_shorted_reads_no_temperature():
    assert sensors.thermistor_c(NTC, 65535) is None
    assert sensors.thermistor_c(NTC, 0) is None


def test_sensors_channels_hot_is_the_low_end_and_open_the_high_end():
    lamps = [
        NTC,
        LampConfig(id="b", name="Couch B", relay_pin=18, current_adc=2, current_full_scale_a=5, max_amps=2.5),
    ]
    table = sensors.guard_table(lamps)
    assert [(lamp, adc) for lamp, adc, _, _ in table] == [(0, 0), (1, 2)]
    (_, _, t_low, t_high), (_, _, c_low, c_high) = table
    assert t_low == pytest.approx(65535 * 2_490 / 12_490, rel=0.03)  # 60 degC
    assert t_high == pytest.approx(65535 * 105_000 / 115_000, rel=0.03)  # -20 degC: colder is an open sensor
    assert (c_low, c_high) == (0, 32768)  # 2.5 A of a 5 A sensor: half scale
    # Board files compare integers only.
    assert all(isinstance(v, int) for row in table for v in row)


def test_sensors_trip_words_name_the_cause():
    ntc = sensors.channels([NTC])[0]
    assert sensors.trip_words(NTC, ntc, sensors.TRIP_LOW, 9_000) == (
        "over-temperature",
        "over-temperature: Couch A read 73 °C, above its limit of 60 °C",
    )
    assert sensors.trip_words(NTC, ntc, sensors.TRIP_LOW, 0)[1] == "the temperature sensor of Couch A reads shorted"
    assert sensors.trip_words(NTC, ntc, sensors.TRIP_HIGH, 65535)[1].endswith("reads open (unplugged or a broken wire)")
    assert sensors.trip_words(NTC, ntc, 3, 0) == (
        "fault",
        "the temperature sensor of Couch A could not be read (its ADC input failed)",
    )
    amp = LampConfig(id="b", name="Couch B", relay_pin=18, current_adc=2, current_full_scale_a=5, max_amps=2.5)
    reason, why = sensors.trip_words(amp, sensors.channels([amp])[0], sensors.TRIP_HIGH, 45_875)
    assert reason == "over-current"
    assert why == "over-current: Couch B drew 3.50 A, above its limit of 2.5 A (a short or the wrong bulb)"


GUARDED = """
[service]
database = "lampctl.db"
{service}
{firmware}
[[lamps]]
id = "room1"
relay_pin = 17
{lamp1}

[[lamps]]
id = "room2"
relay_pin = 18
{lamp2}
"""
FIRMWARE = '[firmware]\nport = "loop://"\n'


def _load(tmp_path, lamp1="", lamp2="", firmware=FIRMWARE, service=""):
    text = GUARDED.format(lamp1=lamp1, lamp2=lamp2, firmware=firmware, service=service)
    return config_mod.load(write_config(tmp_path, text))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"lamp1": "thermistor_adc = 0", "firmware": ""},
            "lamps[0].thermistor_adc: needs the [firmware] table: the microcontroller reads it and cuts the lamp",
        ),
        ({"lamp1": "thermistor_adc = 3"}, "lamps[0].thermistor_adc: must be from 0 to 2, got 3"),
        (
            {"lamp1": "thermistor_adc = 1", "lamp2": "current_adc = 1\nmax_amps = 2"},
            "lamps[1].current_adc: ADC input 1 is already used by lamps[0].thermistor_adc",
        ),
        ({"lamp1": "current_adc = 0"}, "lamps[0].max_amps: missing (a lamp with current_adc needs the current"),
        (
            {"lamp1": "current_adc = 0\nmax_amps = 6"},
            "lamps[0].max_amps: must be under current_full_scale_a (5 A), where the sensor's reading stops rising",
        ),
        (
            {"lamp1": "current_adc = 0\nmax_amps = 2\nmin_amps = 2"},
            "lamps[0].min_amps: must be under max_amps (2 A), got 2",
        ),
        ({"lamp1": "max_temp_c = 200"}, "lamps[0].max_temp_c: must be from 20 to 120, got 200"),
        ({"lamp1": "stop_pin = 17"}, "lamps[0].stop_pin: pin 17 is already used by lamps[0].relay_pin"),
        ({"lamp2": "tilt_pin = 17"}, "lamps[1].tilt_pin: pin 17 is already used by lamps[0].relay_pin"),
        ({"service": "max_lamps_on = 0"}, "service.max_lamps_on: must be from 1 to 8, got 0"),
    ],
)
def test_sensors_config_refuses_a_guard_that_could_not_work(tmp_path, kwargs, message):
    with pytest.raises(config_mod.ConfigError) as err:
        _load(tmp_path, **kwargs)
    assert message in str(err.value)


def test_sensors_config_reads_every_guard_key(tmp_path):
    cfg = _load(
        tmp_path,
        lamp1="stop_pin = 5\ntilt_pin = 6\nthermistor_adc = 2\nmax_temp_c = 45\nthermistor_beta = 3435",
        lamp2="current_adc = 0\ncurrent_full_scale_a = 10\nmax_amps = 4\nmin_amps = 0.5",
        service="max_lamps_on = 1",
    )
    a, b = cfg.lamps
    assert (a.stop_pin, a.tilt_pin, a.thermistor_adc, a.max_temp_c, a.thermistor_beta) == (5, 6, 2, 45, 3435)
    assert (b.current_adc, b.current_full_scale_a, b.max_amps, b.min_amps) == (0, 10, 4, 0.5)
    assert cfg.service.max_lamps_on == 1
    assert sensors.guard_table(cfg.lamps)[1] == (1, 0, 0, 26214)  # 4 A of 10 A


def test_sensors_trip_sides_are_the_firmwares():
    from firmware_bridge import protocol

    assert (sensors.TRIP_LOW, sensors.TRIP_HIGH, sensors.TRIP_FAIL) == (
        protocol.TRIP_LOW,
        protocol.TRIP_HIGH,
        protocol.TRIP_FAIL,
    )
    assert sensors.FULL_SCALE == protocol.MAX_RAW
