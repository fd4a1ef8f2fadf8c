"""Swap: idle VMs leave RAM and come back transparently; the budget holds."""

from __future__ import annotations

import asyncio
import os

import aiofiles.os
import pytest

from denali import lowlevel
from denali.abi import Irq
from denali.kernel import Kernel
from denali.vm import VmState
from tests.conftest import need_image

pytestmark = pytest.mark.parametrize("workers", [0, 2], ids=["loop", "workers2"])


async def _checksum(k: Kernel, force: bool) -> tuple[str, int]:
    vm = await k.spawn("test-swapsum", cmdline="kib=256 rounds=40", memory="2M")
    outs = 0
    while not vm.done:
        await asyncio.sleep(0)
        if force and vm.evictable():
            await lowlevel.swap_out(vm)
            outs += 1
    assert await vm.wait() == 0, vm.console.text()
    return vm.console.text().strip(), outs


async def test_forced_swap_outs_do_not_change_the_result(workers: int) -> None:
    need_image("test-swapsum")
    async with Kernel(workers=workers) as plain:
        want, _ = await _checksum(plain, force=False)
    async with Kernel(workers=workers, memory_budget=64 << 20) as k:
        got, outs = await _checksum(k, force=True)
        assert k.stats()["swap"]["swap_ins"] >= outs - 1
    assert outs >= 8, f"only {outs} swap-outs"  # how many depends on the load; each must be exact
    assert got == want


async def test_only_touched_pages_are_written(tmp_path, workers: int) -> None:  # type: ignore[no-untyped-def]
    need_image("test-touch")
    async with Kernel(workers=workers, memory_budget=64 << 20, swap_dir=str(tmp_path)) as k:
        vm = await k.spawn("test-touch", cmdline="kib=200")
        await vm.until_idle()
        path = lowlevel.swap_path(k, vm)
        assert os.stat(path).st_size == 16 << 20  # the whole address space, sparse
        await lowlevel.swap_out(vm)
        assert vm.swapped
        written = k.stats()["swap"]["bytes_out"]
        assert 200 << 10 <= written < 1 << 20, written  # ~200 KiB + image + stack, not 16 MiB
        assert os.stat(path).st_blocks * 512 < 2 << 20  # sparse on the host too
        vm.interrupt(Irq.HOST)
        assert await vm.wait() == 0
        assert k.stats()["swap"]["swap_ins"] == 1
    assert not await aiofiles.os.path.exists(path)


async def test_budget_holds_with_ten_times_more_vms(workers: int) -> None:
    need_image("test-idle")
    budget = 8 << 20  # about 6 VMs of ~1.3 MiB each
    async with Kernel(workers=workers, memory_budget=budget) as k:
        vms = [await k.spawn("test-idle", cmdline="ms=100000 wait=host", memory="1M") for _ in range(60)]
        peak = 0
        for _ in range(400):
            peak = max(peak, k.stats()["swap"]["used"])
            if all(vm.state is VmState.IDLE and vm.first_slice_ns for vm in vms):
                break
            await asyncio.sleep(0.01)
        assert all(vm.first_slice_ns for vm in vms), "every VM was admitted in turn"
        resident = sum(1 for vm in vms if not vm.swapped)
        assert resident <= 8 and k.stats()["swap"]["used"] <= budget and peak <= budget
        # each VM left RAM at most once while the others booted (no over-eviction:
        # an admission starts only the swap-outs it needs)
        assert k.stats()["swap"]["swap_outs"] <= 60 - resident + 2, k.stats()["swap"]
        for vm in vms:
            vm.interrupt(Irq.HOST)
        results = await asyncio.gather(*(vm.wait() for vm in vms))
        assert results == [0] * 60
        assert k.stats()["swap"]["swap_ins"] >= 50
        assert k.stats()["swap"]["used"] <= budget


async def test_eviction_frees_only_what_is_needed(workers: int) -> None:
    need_image("test-idle")
    async with Kernel(workers=workers, memory_budget=12 << 20) as k:
        vms = [await k.spawn("test-idle", cmdline="ms=100000 wait=host", memory="1M") for _ in range(6)]
        for vm in vms:
            await vm.until_idle()
        assert k.stats()["swap"]["swap_outs"] == 0
        room = k.stats()["swap"]["budget"] - k.stats()["swap"]["used"]  # type: ignore[operator]
        big = await k.spawn("test-touch", cmdline=f"kib={(room >> 10) + 512}", memory="16M")
        await big.until_idle()
        await asyncio.sleep(0.05)
        outs = k.stats()["swap"]["swap_outs"]
        assert 1 <= outs <= 3, f"{outs} VMs swapped out to make room for one VM's growth"
        for vm in [*vms, big]:
            vm.interrupt(Irq.HOST)
        assert await asyncio.gather(*(vm.wait() for vm in [*vms, big])) == [0] * 7
