"""The process helpers of lampctl.testing, under the name the tests have always imported."""

from lampctl.testing import (  # noqa: F401
    ROOT,
    TWO_LAMPS,
    ServiceProcess,
    Simulator,
    add_users,
    free_port,
    lampctl,
    service_config,
    wait_until,
)
