"""The clock device's saved state, checked before a restore (denali/devices/clock.py)."""

from __future__ import annotations

import pytest

from denali.devices.clock import Clock


def test_saved_clock_state_is_checked_before_a_restore() -> None:
    Clock.check_state({"deadline": 0})
    Clock.check_state({"deadline": 12_345_678_901})
    Clock.check_state({})
    with pytest.raises(TypeError, match="the clock's deadline is not an integer"):
        Clock.check_state({"deadline": "soon"})
    with pytest.raises(TypeError, match="clock state is not an object"):
        Clock.check_state(None)
