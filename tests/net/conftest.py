"""Fixtures for the LAN tests: a running switch that is always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from denali.net import Switch, SwitchConfig
from tests.net.helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def switch(clock: FakeClock) -> AsyncIterator[Switch]:
    async with Switch(SwitchConfig(ageing_s=300.0), clock=clock) as sw:
        yield sw
