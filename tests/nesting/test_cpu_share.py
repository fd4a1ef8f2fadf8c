"""CPU shares of VM trees: a parent's children count against the parent's one share
(denali/scheduler.py, CPU groups; docs/virtual-architecture.md, "Child VMs")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from denali.devices.disk import DiskSpec
from denali.kernel import Kernel
from denali.vm import Vm
from tests.conftest import need_image
from tests.nesting.test_children import disk_of

CHILDREN = 10
TURNS = 150
"""Slices the lone spinning VM runs while the shares are counted."""


def _slices(vms: list[Vm]) -> int:
    return sum(v.stats["slices"] for v in vms)


async def _share(k: Kernel, crowd: list[Vm], lone: Vm) -> float:
    """Slices the VMs of ``crowd`` run for each slice of ``lone``, counted over TURNS of
    ``lone``'s slices from now (every VM spinning)."""
    c0, l0 = _slices(crowd), lone.stats["slices"]
    for _ in range(6000):  # at most two minutes, however loaded the machine
        if lone.stats["slices"] - l0 >= TURNS:
            break
        await asyncio.sleep(0.02)
    assert lone.stats["slices"] - l0 > 0
    return (_slices(crowd) - c0) / (lone.stats["slices"] - l0)


async def test_a_parent_with_ten_busy_children_gets_one_share_not_eleven(tmp_path: Path) -> None:
    need_image("test-brood")
    need_image("test-spin")
    img = disk_of("test-spin", tmp_path / "spin.img")
    async with Kernel() as k:
        parent = await k.spawn(
            "test-brood",
            cmdline=f"n={CHILDREN} mem={1 << 20}",
            child_memory=(CHILDREN + 1) << 20,
            nic=False,
            disks=[DiskSpec(img, name="img", mode="ro")],
        )
        lone = await k.spawn("test-spin", nic=False)
        for _ in range(6000):
            if f"brood: {CHILDREN} children running" in parent.console.text():
                break
            assert "FAIL" not in parent.console.text(), parent.console.text()
            await asyncio.sleep(0.02)
        tree = [v for v in k.vms.values() if v.group == parent.id]
        assert len(tree) == CHILDREN + 1  # the parent and its children, one CPU group
        share = await _share(k, tree, lone)
        # one group against one VM: about one slice each (round-robin of groups)
        assert 0.5 <= share <= 2.0, share
        assert all(v.stats["slices"] > 0 for v in tree if v is not parent)  # every child ran


async def test_ten_root_vms_get_ten_shares(tmp_path: Path) -> None:
    """The contrast that makes the test above mean something: the same ten spinning guests
    as VMs of their own take ten turns to the lone VM's one."""
    need_image("test-spin")
    async with Kernel() as k:
        crowd = [await k.spawn("test-spin", nic=False) for _ in range(CHILDREN)]
        lone = await k.spawn("test-spin", nic=False)
        await asyncio.sleep(0.1)
        share = await _share(k, crowd, lone)
        assert share >= CHILDREN / 2, share
