"""Shared fixtures: a running kernel per test and a helper that boots a guest to its end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from denali.images import builtin_images
from denali.kernel import Kernel
from denali.net import Switch, SwitchConfig
from tests.net.helpers import FakeClock


@dataclass
class Outcome:
    status: int
    console: str


def need_image(name: str) -> None:
    """Fail (never skip) when a guest image is missing: the install step must build it."""
    if name not in builtin_images():
        pytest.fail(f"guest image {name!r} is not built; run: pip install -e '.[dev]'")


@pytest.fixture
async def kernel() -> AsyncIterator[Kernel]:
    async with Kernel(slice_us=2000) as k:
        yield k


async def boot(k: Kernel, image: str, cmdline: str = "", memory: str = "16M", nic: bool = True) -> Outcome:
    need_image(image)
    vm = await k.spawn(image, cmdline=cmdline, memory=memory, nic=nic)
    status = await vm.wait()
    return Outcome(status, vm.console.text())


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand (the switch's ageing reads it)."""
    return FakeClock()


@pytest.fixture
async def switch(clock: FakeClock) -> AsyncIterator[Switch]:
    """A running switch with long ageing, always closed."""
    async with Switch(SwitchConfig(ageing_s=300.0), clock=clock) as sw:
        yield sw
