"""The maintenance commands (backup, restore, prune-events, doctor, firmware) and the fleet's `collect`, wired into `lampctl`."""
from __future__ import annotations


def add_parsers(sub) -> None:
    """Each tool module registers its own commands (lampctl.cli_args.command), as lampctl.cli does the main ones."""
    from lampctl import backup, collector, doctor, firmware_tools

    for tool in (backup, doctor, firmware_tools, collector):
        tool.add_parser(sub)
