"""clock_synchronised(): the timesync flag, the kernel's adjtimex state, and 'cannot tell'."""

from __future__ import annotations

import pytest

from lampctl.platform import clocksync
from lampctl.platform.clocksync import STA_UNSYNC, TIME_ERROR, clock_synchronised


def no_kernel():
    raise AssertionError("the kernel must not be asked when the timesync flag exists")


def test_clocksync_timesyncd_flag_means_synchronised(tmp_path):
    flag = tmp_path / "synchronized"
    flag.write_text("")
    assert clock_synchronised(flag, no_kernel) is True


@pytest.mark.parametrize(
    "state, expected",
    [
        ((0, 0, 20_000), True),  # TIME_OK, small error
        ((TIME_ERROR, STA_UNSYNC, 16_000_000), False),  # what a Pi reports before NTP answers
        ((0, STA_UNSYNC, 0), False),
        ((0, 0, 16_000_000), False),  # error bound too large (timedatectl's rule)
        (None, None),  # adjtimex denied or missing
    ],
)
def test_clocksync_kernel_state(tmp_path, state, expected):
    assert clock_synchronised(tmp_path / "absent", lambda: state) is expected


def test_clocksync_reads_this_kernel_without_privileges():
    state = clocksync.kernel_clock_state()
    assert state is None or (len(state) == 3 and all(isinstance(v, int) for v in state))


def test_clocksync_describe_is_one_sentence_per_state():
    texts = {clocksync.describe(s) for s in (True, False, None)}
    assert len(texts) == 3
    assert clocksync.describe(False).startswith("The system clock is not synchronised")
