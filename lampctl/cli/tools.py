"""The maintenance commands (backup, restore, prune-events, doctor, firmware) and the fleet's `collect`, wired into `lampctl`."""
from __future__ import annotations

from collections.abc import Callable


def _modules() -> tuple:
    from lampctl.fleet import collector
    from lampctl.tools import backup, doctor
    from lampctl.tools import firmware as firmware_tools

    return backup, doctor, firmware_tools, collector


def add_parsers(sub) -> None:
    """Each tool module declares its own subcommands."""
    for tool in _modules():
        tool.add_parser(sub)


def commands() -> dict[str, Callable]:
    return {name: run for tool in _modules() for name, run in tool.COMMANDS.items()}
