"""Booting disk-test guests: build guestos/tests/disk.c, give a VM disks, run it to the end.

The guest is the built-in ``test-disk`` image when the install step built it; until
guestos's Makefile builds it, the tests compile the same sources (guestos/fs/*.c and
guestos/tests/disk.c) against a stand-in runtime (tests/disk/shim/) with the flags of
the guest build.

``spawn_with_disks`` uses ``Kernel.spawn(..., disks=...)`` when the kernel has it, and
otherwise wires ``vm.disks`` itself (before the VM's first slice: ``spawn`` returns
before the VM task first runs).
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from denali.abi import Hc
from denali.devices import diskdev
from denali.disk import DiskSpec
from denali.images import builtin_images
from denali.kernel import Kernel
from denali.vm import Vm

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "guestos/fs/disk.c", ROOT / "guestos/fs/fs.c", ROOT / "guestos/tests/disk.c",
           ROOT / "tests/disk/shim/shim.c"]
CFLAGS = ["-m32", "-march=i686", "-O2", "-ffreestanding", "-fno-pic", "-fno-pie",
          "-fno-stack-protector", "-fno-builtin", "-nostdlib", "-nostdinc",
          "-Wall", "-Wextra", "-Werror", "-I", str(ROOT / "guestos/include")]


def build_shim_guest(out_dir: Path) -> Path:
    """Compile and link the stand-in test-disk guest; its ELF path."""
    if shutil.which("gcc") is None or shutil.which("ld") is None:
        pytest.fail("gcc and GNU ld are needed to build guests")
    inc = subprocess.run(["gcc", "-print-file-name=include"], capture_output=True, text=True,
                         check=True).stdout.strip()
    objs = []
    for src in SOURCES:
        obj = out_dir / f"{src.parent.name}-{src.stem}.o"
        r = subprocess.run(["gcc", *CFLAGS, "-isystem", inc, "-c", str(src), "-o", str(obj)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        objs.append(str(obj))
    elf = out_dir / "test-disk.elf"
    r = subprocess.run(["ld", "-m", "elf_i386", "-T", str(ROOT / "tests/disk/shim/guest.ld"),
                        "-nostdlib", "-static", "-z", "noexecstack", "--build-id=none",
                        *objs, "-o", str(elf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return elf


def builtin_test_disk() -> Path:
    """The built-in test-disk image; skipped only while guestos does not build it at all."""
    img = builtin_images().get("test-disk")
    if img is not None:
        return img
    makefile = ROOT / "guestos" / "Makefile"
    if makefile.exists() and "tests/" in makefile.read_text():
        pytest.fail("guest image 'test-disk' is not built; run: pip install -e '.[dev]'")
    pytest.skip("guestos/Makefile does not build test-disk yet (guestos/fs not linked into apps)")


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


async def spawn_with_disks(k: Kernel, elf: Path, specs: Sequence[DiskSpec], cmdline: str = "",
                           console: object = None) -> Vm:
    if "disks" in inspect.signature(k.spawn).parameters:
        return await k.spawn(str(elf), cmdline=cmdline, nic=False, disks=specs,  # type: ignore[call-arg]
                             console=console)  # type: ignore[arg-type]
    if int(Hc.DISK_INFO) not in k.hypercalls.numbers():
        diskdev.register(k.hypercalls)
    disks = await diskdev.open_disks(specs)
    try:
        vm = await k.spawn(str(elf), cmdline=cmdline, nic=False, console=console)  # type: ignore[arg-type]
    except BaseException:
        if disks is not None:
            await disks.aclose()
        raise
    vm.disks = disks  # type: ignore[attr-defined]
    return vm


async def finish(vm: Vm) -> Outcome:
    """Wait for the VM, then for its disks to be closed (so files can be inspected)."""
    try:
        status = await vm.wait()
    finally:
        disks = getattr(vm, "disks", None)
        if disks is not None:
            await disks.aclose()
    return Outcome(status, vm.console.text())


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
