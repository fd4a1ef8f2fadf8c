"""Fixtures for the disk tests: images in a temporary directory and a fake VM for handlers."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from denali import abi
from denali.abi import Hc
from denali.devices.base import SLOT_DISK, SLOTS, Completion
from denali.devices.disk import base as disk_base
from denali.devices.disk.device import Disks
from denali.hypercalls import HypercallTable
from denali.kernel import Kernel
from denali.memory import PROT_R, PROT_RW, PROT_RX, GuestMemory, Region
from denali.timers import Timer, Timers

BLOCK = abi.DISK_BLOCK_SIZE
CODE = 0x10000
"""Fake VM layout: code (RX) at 0x10000, read-only data at 0x11000, heap (RW) from 0x20000."""
RODATA = 0x11000
HEAP = 0x20000
MEM = 4 << 20


def pattern(seed: int, nblocks: int) -> bytes:
    """Deterministic, block-distinct bytes (each block differs from every other)."""
    out = bytearray()
    for b in range(nblocks):
        out += (b"%08d:%08d|" % (seed, b)) * (BLOCK // 18) + bytes(BLOCK % 18)
    return bytes(out)


def make_image(path: Path, nblocks: int, seed: int | None = None) -> Path:
    """A raw image of ``nblocks`` blocks: ``pattern(seed)`` or zeros."""
    path.write_bytes(pattern(seed, nblocks) if seed is not None else bytes(nblocks * BLOCK))
    return path


class FakeVm:
    """A ``DeviceHost`` with memory for the disk device: what a VM gives its devices."""

    def __init__(self) -> None:
        self.memory = GuestMemory(MEM)
        self.memory.set_regions(
            [
                Region(CODE, CODE + 0x1000, PROT_RX, "code"),
                Region(RODATA, RODATA + 0x1000, PROT_R, "rodata"),
                Region(HEAP, MEM, PROT_RW, "heap"),
            ]
        )
        self._disks: Disks | None = None
        self.pending = 0
        self.irqs = 0
        self.ended = False
        self._event = asyncio.Event()
        self._timers: Timers | None = None

    @property
    def disks(self) -> Disks | None:
        return self._disks

    @disks.setter
    def disks(self, disks: Disks | None) -> None:
        self._disks = disks
        if disks is not None:
            disks.attach(self)

    # ---- DeviceHost ----
    @property
    def vm_id(self) -> int:
        return 1

    def raise_irq(self, bits: int) -> None:
        self.pending |= bits
        self.irqs += 1
        self._event.set()

    def post(self, completion: Completion) -> None:
        completion(None if self.ended else self.memory)

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def call_at(self, deadline_ns: int, callback: Callable[..., Any], *args: Any) -> Timer:
        if self._timers is None:
            self._timers = Timers(asyncio.get_running_loop(), time.monotonic_ns)
        return self._timers.add(deadline_ns, callback, *args)

    async def wait_irq(self, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            await self._event.wait()
        self._event.clear()

    def close(self) -> None:
        self.memory.close()


class Guest:
    """Drives the disk hypercalls of a ``FakeVm`` through a real dispatch table."""

    def __init__(self, vm: FakeVm) -> None:
        self.vm = vm
        self.table = HypercallTable.build([Disks])
        self._next = HEAP

    def alloc(self, size: int, align: int = 8) -> int:
        self._next = (self._next + align - 1) & ~(align - 1)
        addr = self._next
        self._next += size
        assert self._next <= MEM
        return addr

    def call(self, nr: Hc, arg: int) -> int:
        devices: list[object | None] = [None] * SLOTS
        devices[SLOT_DISK] = self.vm.disks
        return self.table.dispatcher(devices, self.vm.memory)(int(nr), arg)

    def put(self, nr: Hc, arg: int, **fields: int | bytes) -> None:
        """Write fields of hypercall ``nr``'s struct at ``arg`` (others zero)."""
        spec = abi.HYPERCALL_BY_NR[int(nr)].args
        offs = spec.offsets()
        self.vm.memory.write(arg, bytes(spec.size))
        codes = {"u32": "I", "u64": "Q"}
        for name, value in fields.items():
            f = next(f for f in spec.fields if f.name == name)
            if isinstance(value, bytes):
                self.vm.memory.write(arg + offs[name], value.ljust(f.size, b"\0")[: f.size])
            else:
                struct.pack_into("<" + codes[f.ctype], self.vm.memory.buf, arg + offs[name], value)

    def get(self, nr: Hc, arg: int, name: str) -> int:
        spec = abi.HYPERCALL_BY_NR[int(nr)].args
        f = next(f for f in spec.fields if f.name == name)
        code = {"u32": "I", "u64": "Q"}[f.ctype]
        return int(struct.unpack_from("<" + code, self.vm.memory.buf, arg + spec.offsets()[name])[0])

    def info(self, name: str = "", index: int = 0) -> tuple[int, dict[str, int]]:
        arg = self.alloc(64)
        self.put(Hc.DISK_INFO, arg, name=name.encode(), index=index)
        res = self.call(Hc.DISK_INFO, arg)
        out = {
            f: self.get(Hc.DISK_INFO, arg, f)
            for f in ("handle", "blocks", "block_size", "flags", "max_blocks", "queue")
        }
        return res, out

    def submit(
        self, nr: Hc, handle: int, block: int = 0, count: int = 1, buf: int | None = None
    ) -> tuple[int, int]:
        """Submit a read/write (or a flush); (result, struct address)."""
        arg = self.alloc(24)
        if nr == Hc.DISK_FLUSH:
            self.put(nr, arg, handle=handle)
        else:
            if buf is None:
                buf = self.alloc(max(count, 1) * BLOCK, BLOCK)
            self.put(nr, arg, handle=handle, count=count, block=block, buf=buf)
        return self.call(nr, arg), arg

    def status(self, nr: Hc, arg: int) -> int:
        return self.get(nr, arg, "status")

    async def wait(self, nr: Hc, arg: int, within: float = 10.0) -> int:
        """Wait until the request at ``arg`` completes; its status."""
        async with asyncio.timeout(within):
            while (st := self.status(nr, arg)) == abi.DISK_PENDING:
                await self.vm.wait_irq(within)
        return st

    async def io(self, nr: Hc, handle: int, block: int = 0, count: int = 1, buf: int | None = None) -> int:
        """Submit and wait: the request's final status (or its refusal)."""
        res, arg = self.submit(nr, handle, block, count, buf)
        if res != abi.Result.OK:
            assert self.status(nr, arg) == res
            return res
        return await self.wait(nr, arg)


@pytest.fixture(params=[0, 2], ids=["loop", "workers2"])
async def kernel(request: pytest.FixtureRequest) -> AsyncIterator[Kernel]:
    """The disk suite runs with slices on the loop and on two worker threads (device
    completions must land between slices whatever thread runs them)."""
    async with Kernel(slice_us=2000, workers=request.param) as k:
        yield k


@pytest.fixture
def fake_vm() -> Iterator[FakeVm]:
    vm = FakeVm()
    yield vm
    vm.close()


@pytest.fixture(autouse=True)
def no_leaked_bases() -> Iterator[None]:
    """Every test must release every base image it opened."""
    before = disk_base.open_base_count()
    yield
    assert disk_base.open_base_count() == before, "a base image was left open"


@pytest.fixture
def overlay_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tmp-overlays"
    d.mkdir()
    return d


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# Blocking file helpers for the tests (small local files; kept out of the async tests).
def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path
