"""The maintenance commands (backup, restore, prune-events, doctor, firmware) and the fleet's `collect`, wired into `lampctl`."""
from __future__ import annotations


def add_parsers(sub) -> None:
    """Each tool module registers its own commands (lampctl.cli.args.command), as lampctl.cli does the main ones."""
    from lampctl.fleet import collector
    from lampctl.tools import backup, doctor
    from lampctl.tools import firmware as firmware_tools

    for tool in (backup, doctor, firmware_tools, collector):
        tool.add_parser(sub)
