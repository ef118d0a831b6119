"""The README's configuration table and config.toml's comments are what the settings schema renders."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

from lampctl import config as config_mod
from lampctl.config import docs as config_docs

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "python scripts/config_docs.py --write"


@pytest.mark.parametrize(
    "name, render", [("README.md", config_docs.render_readme), ("config.toml", config_docs.render_config_toml)]
)
def test_config_docs_readme_and_config_toml_are_what_the_schema_renders(name, render):
    text = (ROOT / name).read_text(encoding="utf-8")
    assert render(text) == text, (
        f"{name} differs from what the settings schema (lampctl/config/__init__.py SETTINGS, CONSTRAINTS) renders: "
        f"edit the row there, not the generated text, then run `{REGENERATE}` and review the diff"
    )


def test_config_docs_the_regeneration_command_is_documented_where_a_reader_finds_it():
    assert REGENERATE in (ROOT / "README.md").read_text()
    assert "--write" in (ROOT / "scripts/config_docs.py").read_text()


def test_config_docs_a_stale_comment_or_row_is_rendered_back():
    toml = (ROOT / "config.toml").read_text()
    stale = toml.replace("0-10 s", "0-60 s", 1)
    assert stale != toml and config_docs.render_config_toml(stale) == toml
    readme = (ROOT / "README.md").read_text()
    stale = readme.replace("| `firmware.grace_s` | `0.1` | 0-10 s", "| `firmware.grace_s` | `0.1` | 0-60 s", 1)
    assert stale != readme and config_docs.render_readme(stale) == readme
    # A hand-written comment anywhere in config.toml is dropped: every comment is the schema's.
    assert config_docs.render_config_toml(toml.replace("[panel]\n", "[panel]\n# the panel does not lock yet\n")) == toml


def test_config_docs_rendering_keeps_config_toml_a_working_config_with_its_values():
    toml = (ROOT / "config.toml").read_text()
    # Every key's comment replaced by a wrong one, and its continuation lines dropped: rendered back.
    garbled = "\n".join(
        line.split("  # ")[0] + "  # wrong" if "  # " in line else line
        for line in toml.splitlines()
        if not line.startswith(" ")
    )
    assert garbled.count("# wrong") > 20
    rendered = config_docs.render_config_toml(garbled)
    assert rendered == toml
    assert tomllib.loads(rendered) == tomllib.loads(toml)
    assert config_docs.render_config_toml(rendered) == rendered  # rendering twice changes nothing
    assert config_mod.load(ROOT / "config.toml").lamps[0].id == "room1"
    assert max(len(line) for line in rendered.splitlines()) <= config_docs.WIDTH


def test_config_docs_a_key_the_schema_lacks_is_refused_not_documented():
    toml = (ROOT / "config.toml").read_text().replace("cooldown_s = 0 ", "cool_down_s = 0 ", 1)
    with pytest.raises(ValueError, match="cool_down_s"):
        config_docs.render_config_toml(toml)


# Written out here, not read from the schema: what the README must tell a clinic's IT person.
README_ROWS = {
    "firmware.grace_s": ("`0.1`", "0-10 s", "3970 s"),
    "firmware.watchdog_s": ("`3.0`", "0.2-10 s"),
    "safety.heartbeat_s": ("`1.0`", "0.05 to under 5 s", "under half of `firmware.watchdog_s`"),
    "lamps[].max_minutes": ("`30`", "1-60 min"),
    "lamps[].default_minutes": ("20, or max_minutes if lower", "at most `max_minutes`"),
    "lamps[].presets": ("[10, 15, 20, 30]", "1-8 distinct values", "at most `max_minutes`"),
    "lamps[].relay_pin": ("required", "BCM 0-53", "each pin used once"),
    "lamps[].id": ("required", "unique"),
    "service.pin_factory": ('`"mock"`', "`lgpio`"),
    "panel.lock_after_s": ("`0`", "0-86400 s", "0 never locks"),
    "lamps[].buzzer_pin": ("none", "on a fault"),
    "mqtt.url": ("required", "mqtts://"),
}


def test_config_docs_the_readme_has_one_row_per_setting_saying_its_default_and_range():
    table = (ROOT / "README.md").read_text().split(config_docs.README_START)[1].split(config_docs.README_END)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    names = [line.split("`")[1] for line in rows]
    assert names == [row.name for row in config_mod.SETTINGS]
    for name, words in README_ROWS.items():
        line = rows[names.index(name)]
        assert all(word in line for word in words), (name, line)
    assert "not yet" not in table and "does not sound" not in table  # the stale sentences of earlier docs


def test_config_docs_the_script_names_each_stale_file_and_rewrites_it(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("config_docs_script", ROOT / "scripts/config_docs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name in script.FILES:
        (tmp_path / name).write_text((ROOT / name).read_text())
    assert script.stale(tmp_path) == {}
    (tmp_path / "config.toml").write_text((ROOT / "config.toml").read_text().replace("0-10 s", "0-60 s"))
    assert list(script.stale(tmp_path)) == ["config.toml"]
    assert script.stale(tmp_path)["config.toml"] == (ROOT / "config.toml").read_text()
