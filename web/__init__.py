"""Flask web front end of lampctl: app factory wiring the JSON API, panel and admin pages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from flask import Flask


@dataclass
class Services:
    """What the views are handed: the controller, the usage log, the config, and status probes."""

    controller: object
    usage_log: object
    config: object
    firmware_status: Callable[[], str] = lambda: "absent"
    extra: dict = field(default_factory=dict)


def create_app(services: Services, test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(JSON_SORT_KEYS=False, MAX_CONTENT_LENGTH=64 * 1024)
    if test_config:
        app.config.update(test_config)
    app.extensions["lampctl"] = services

    from web import api

    app.register_blueprint(api.bp)
    return app
