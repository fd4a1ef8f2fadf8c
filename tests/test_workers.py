"""Slices on worker threads (KernelConfig.workers): same guests, same results."""

from __future__ import annotations

import asyncio

import pytest

from denali.abi import Irq
from denali.errors import GuestFault
from denali.kernel import Kernel
from tests.conftest import need_image


@pytest.fixture
async def kernel2():  # type: ignore[no-untyped-def]
    async with Kernel(workers=2) as k:
        yield k


async def test_guests_behave_the_same_on_workers(kernel2: Kernel) -> None:
    for img in ("test-threads", "test-libc", "test-hostile", "test-vregs"):
        need_image(img)
    vms = [
        await kernel2.spawn(img, nic=img != "test-hostile")
        for img in ("test-threads", "test-libc", "test-hostile", "test-vregs")
    ]
    for vm in vms:
        assert await vm.wait() == 0, vm.console.text()
        assert "SUCCESS" in vm.console.text()


async def test_faults_and_irqs_on_workers(kernel2: Kernel) -> None:
    need_image("test-irq")
    bad = await kernel2.spawn("test-fault", cmdline="kind=priv-cli")
    irq = await kernel2.spawn("test-irq", cmdline="mode=host")
    timer = await kernel2.spawn("test-irq", cmdline="mode=timer")
    with pytest.raises(GuestFault):
        await bad.wait()
    while "ready" not in irq.console.text():  # noqa: ASYNC110 (console has no "line seen" event)
        await asyncio.sleep(0.01)
    irq.interrupt(Irq.HOST)
    assert await irq.wait() == 0
    assert await timer.wait() == 0


async def test_two_spinners_run_at_once(kernel2: Kernel) -> None:
    need_image("test-spin")
    a = await kernel2.spawn("test-spin")
    b = await kernel2.spawn("test-spin")
    idle = await kernel2.spawn("test-idle", cmdline="ms=50")
    assert await idle.wait() == 0  # the loop stays responsive with both workers busy
    await asyncio.sleep(0.2)
    assert a.stats["slices"] > 5 and b.stats["slices"] > 5
    a.kill()
    b.kill()
