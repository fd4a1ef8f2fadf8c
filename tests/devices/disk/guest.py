"""Booting the test-disk guest (guestos/tests/disk.c) with disks, and running it to its end.

``spawn_with_disks`` uses ``Kernel.spawn(..., disks=...)`` when the kernel has it, and
otherwise wires ``vm.disks`` itself (before the VM's first slice: ``spawn`` returns
before the VM task first runs).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from denali.devices.console import ConsoleSink
from denali.devices.disk import DiskSpec
from denali.errors import DiskError
from denali.images import builtin_images
from denali.kernel import Kernel
from denali.vm import Vm

ROOT = Path(__file__).resolve().parents[3]


def disk_test_image() -> Path:
    """The built-in test-disk image (built from guestos/tests/disk.c by the install step)."""
    img = builtin_images().get("test-disk")
    if img is None:
        pytest.fail("guest image 'test-disk' is not built; run: pip install -e '.[dev]'")
    return img


def word(seed: int, block: int, i: int) -> int:
    """The guest's pattern word (guestos/tests/disk.c, word())."""
    x = ((seed * 0x9E3779B1) ^ (block * 0x85EBCA77) ^ (i * 0xC2B2AE3D)) & 0xFFFFFFFF
    return x ^ (x >> 15)


def guest_pattern(seed: int, block: int) -> bytes:
    return struct.pack("<1024I", *(word(seed, block, i) for i in range(1024)))


@dataclass
class Outcome:
    status: int
    console: str
    close_error: DiskError | None = None


async def spawn_with_disks(
    k: Kernel, elf: Path, specs: Sequence[DiskSpec], cmdline: str = "", console: ConsoleSink | None = None
) -> Vm:
    return await k.spawn(str(elf), cmdline=cmdline, nic=False, disks=specs, console=console)


async def finish(vm: Vm) -> Outcome:
    """Wait for the VM and for its disks to close (so files can be inspected). A disk
    error at close (``Vm.wait`` raises it) is kept in ``Outcome.close_error``."""
    try:
        status = await vm.wait()
        error = None
    except DiskError as exc:
        assert vm.exit_status is not None
        status, error = vm.exit_status, exc
    return Outcome(status, vm.console.text(), error)


async def run_guest(k: Kernel, elf: Path, specs: Sequence[DiskSpec], cmdline: str) -> Outcome:
    return await finish(await spawn_with_disks(k, elf, specs, cmdline))


class ConsoleWatch:
    """A console sink that lets a test wait for a line of output (no polling)."""

    def __init__(self) -> None:
        self.text = ""
        self._waiters: list[tuple[str, asyncio.Future[None]]] = []

    def __call__(self, data: bytes) -> None:
        self.text += data.decode("utf-8", "replace")
        for needle, fut in self._waiters:
            if needle in self.text and not fut.done():
                fut.set_result(None)

    async def wait_for(self, needle: str, vm: Vm, within: float = 30.0) -> None:
        if needle in self.text:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((needle, fut))
        ended: asyncio.Future[int] = asyncio.ensure_future(vm.wait())
        both: set[asyncio.Future[Any]] = {fut, ended}
        try:
            async with asyncio.timeout(within):
                await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if ended.done() and not ended.cancelled():
                ended.exception()  # retrieved: the test reports the outcome itself
        assert fut.done(), f"VM ended before printing {needle!r}:\n{self.text}"
