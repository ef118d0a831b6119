"""The log lines of `lampctl serve` and `lampctl collect`: one format on stderr, which journald keeps."""

from __future__ import annotations

import logging
import sys


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
