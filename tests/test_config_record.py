"""The config's frozen records: dataclass behaviour without code compiled at import (S1: relays OFF sooner)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lampctl import config as config_mod
from lampctl.config.record import FrozenError, Record, replace
from tests.procs import ROOT, TWO_LAMPS, service_config


class Point(Record):
    x: int
    y: int = 2
    label: str = ""


def test_record_fields_by_position_name_and_default():
    assert (Point(1).x, Point(1).y, Point(1).label) == (1, 2, "")
    assert Point(1, 3, "a") == Point(x=1, y=3, label="a") == Point(1, label="a", y=3)
    assert repr(Point(1, label="a")) == "Point(x=1, y=2, label='a')"


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: Point(), "needs 'x'"),
        (lambda: Point(1, 2, "a", 4), "takes 3 values, got 4"),
        (lambda: Point(1, z=1), "no field 'z'"),
        (lambda: Point(1, x=1), "two values for 'x'"),
    ],
)
def test_record_refuses_what_a_dataclass_refuses(make, words):
    with pytest.raises(TypeError, match=words):
        make()


def test_record_is_frozen_and_replace_makes_a_new_one():
    p = Point(1)
    with pytest.raises(FrozenError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(FrozenError):
        del p.y  # type: ignore[misc]
    q = replace(p, y=7)
    assert (p.y, q.y, q.x) == (2, 7, 1)
    with pytest.raises(TypeError, match="no field 'z'"):
        replace(p, z=1)


def test_record_equality_and_hash_by_value_and_type():
    class Other(Record):
        x: int
        y: int = 2
        label: str = ""

    assert Point(1) == Point(1) and hash(Point(1)) == hash(Point(1))
    assert Point(1) != Point(2)
    assert Point(1) != Other(1)  # same fields, another kind of record
    assert Point(1) != (1, 2, "")
    assert len({Point(1), Point(1), Point(2)}) == 2


def test_record_refuses_a_required_field_after_a_default():
    with pytest.raises(TypeError, match="'b' without a default follows one with a default"):

        class Bad(Record):
            a: int = 1
            b: int


def test_config_records_behave_as_before():
    lamp = config_mod.LampConfig(id="room1", name="Room 1", relay_pin=17)
    assert lamp.presets == config_mod.setting("lamps[].presets").default and lamp.max_s == lamp.max_minutes * 60
    cfg = config_mod.Config(
        path=ROOT / "config.toml",
        service=config_mod.ServiceConfig(),
        safety=config_mod.SafetyConfig(),
        firmware=None,
        lamps=(lamp,),
    )
    assert cfg.panel == config_mod.PanelConfig() and cfg.mqtt is None
    assert cfg.lamp("room1") is lamp
    assert replace(cfg, panel=config_mod.PanelConfig(lock_after_s=60)).panel.lock_after_s == 60
    assert cfg.panel.lock_after_s == config_mod.setting("panel.lock_after_s").default


# The start-up path of `lampctl serve` up to the relay claim: the modules it imports and the
# config's parse. Compiling source there (as @dataclass and namedtuple do for each class they
# make) delays the relays OFF (S1); a library's own import-time compiles are the baseline's.
COMPILE_PROBE = textwrap.dedent(
    """
    import sys
    import gpiozero  # the baseline: `import gpiozero` alone

    ours = ({lampctl!r}, {bridge!r})
    found = []

    def hook(event, args):
        if event != "compile" or str(args[1]).endswith(".py"):
            return  # a module's own source (no bytecode cached) is not code made at run time
        frame = sys._getframe(1)
        while frame is not None:
            where = frame.f_code.co_filename
            if where.startswith("<frozen importlib"):
                return  # compiled while a library's module loads: not ours
            if where.startswith(ours):
                found.append(f"{{where}}:{{frame.f_lineno}}")
                return
            frame = frame.f_back

    sys.addaudithook(hook)
    import lampctl.cli, lampctl.service, lampctl.devices.hardware
    from lampctl import config
    config.load(sys.argv[1])
    print(found)
    """
)


def test_s1_nothing_is_compiled_on_the_way_to_the_relay_claim(tmp_path):
    probe = COMPILE_PROBE.format(lampctl=str(ROOT / "lampctl"), bridge=str(ROOT / "firmware_bridge"))
    cfg = service_config(tmp_path, TWO_LAMPS)
    out = subprocess.run(
        [sys.executable, "-c", probe, str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
