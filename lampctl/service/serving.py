"""The one place lampctl reaches web/: build the panel's or the fleet's Flask app and serve it (S10).

web/ depends on lampctl, never the other way; the two commands that serve pages, `lampctl serve`
and `lampctl collect`, compose their app here, on the bounded server of lampctl.platform.httpserver.
"""

from __future__ import annotations

from typing import Any

from lampctl.platform.httpserver import BoundedServer, make_server


def serve_panel(services_fields: dict[str, Any], host: str, port: int, *, arrivals=None) -> BoundedServer:
    """The node's panel, API and admin pages, from the Services fields web.Services takes."""
    from web import Services, create_app

    return make_server(create_app(Services(**services_fields)), host, port, arrivals=arrivals)


def serve_fleet(collector, logins, host: str, port: int):
    """The collector's fleet, log, CSV and usage pages, for the admins of `logins` (lampctl.fleet.logins)."""
    from lampctl.platform.runtime import DamagedFile
    from web.fleet import create_fleet_app

    try:
        app = create_fleet_app(collector, logins.accounts, audit=logins.audit)
    except OSError as exc:  # the cookie key beside the central log: a folder the collector may not write
        raise DamagedFile(
            f"the cookie key cannot be made beside {collector.central.path} "
            f"({exc.strerror or exc}): let the collector's user write that folder"
        ) from None
    return make_server(app, host, port)
