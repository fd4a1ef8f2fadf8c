"""A VM running a Linux program beside its personality is not snapshotted: its image is
composed in memory and its page map and system-call route are not in a snapshot, so
``Kernel.snapshot`` refuses it with one clear line and the VM runs on untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from denali.errors import VmStateError
from denali.kernel import Kernel
from denali.linux import spawn_linux
from tests.linux.helpers import need_busybox


async def test_snapshot_of_a_linux_program_is_refused_and_the_vm_runs_on(tmp_path: Path) -> None:
    busybox = need_busybox()
    path = tmp_path / "linux.snap"
    async with Kernel() as k:
        vm = await spawn_linux(k, busybox, ["busybox", "sleep", "1"], nic=False)
        await vm.pause()
        with pytest.raises(VmStateError, match="Linux program beside its personality"):
            await k.snapshot(vm, path)
        assert not path.exists()
        vm.resume()
        assert await asyncio.wait_for(vm.wait(), 60) == 0
