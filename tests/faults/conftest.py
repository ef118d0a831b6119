"""Fixtures of the fault campaign: a rig on real processes, closed whatever happens."""

from __future__ import annotations

import os
import random

import pytest

from tests.faults.rig import Rig


@pytest.fixture
def seed():
    """The random moments' seed: $FAULT_SEED to replay a failure, else a fresh one (printed on failure)."""
    value = os.environ.get("FAULT_SEED")
    value = int(value) if value else random.SystemRandom().randrange(1 << 30)
    print(f"fault campaign seed: {value} (replay with FAULT_SEED={value})")
    return value


@pytest.fixture
def rig(tmp_path):
    rig = Rig(tmp_path)
    yield rig
    rig.close()
