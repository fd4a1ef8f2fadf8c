"""Swap: idle VMs leave RAM; a gatekeeper admits VMs in FIFO order under a memory budget.

Each VM gets a swap file when it is created: a sparse file as large as its address
space in the kernel's swap directory (Denali: a swap region per VM, allocated at
creation). Swapping a VM out writes only the pages it touched (those resident in its
anonymous mapping, found with ``mincore``; never-touched pages are zero and cost no
I/O), then frees its Unicorn engine and its memory. What stays in the kernel for a
swapped VM is the ``SwapImage``: its registers and a bitmap of the pages written.

The gatekeeper (``Swapper``) charges each resident VM an estimate of what it costs
(touched pages + ``ENGINE_COST``) against ``budget`` bytes. A VM that must become
resident (a fresh VM's first slice, or a swapped VM that an interrupt or its idle
deadline woke) asks ``admit``; requests are served in FIFO order while the budget
allows, and room is made by swapping out idle resident VMs, least recently idle first.
A VM is evictable only while it waits in idle-with-timeout with no disk request in
flight. Swap I/O goes through aiofiles, so the event loop never waits on the disk.

State of a VM with respect to swap::

    (new) -admit-> RESIDENT -swap_out-> SWAPPED -admit, swap_in-> RESIDENT
"""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
import re
import struct
import tempfile
import time
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiofiles
import aiofiles.os

from denali import abi
from denali._uc import GPR_NAMES
from denali.errors import ResourceError

if TYPE_CHECKING:
    from denali.vm import Vm

ENGINE_COST: Final = 1 << 20
"""Bytes charged for a resident VM's engine (translation cache, Unicorn state)."""
PAGE: Final = abi.PAGE_SIZE
_libc = ctypes.CDLL(None, use_errno=True)


_REGS: Final = struct.Struct("<10I")


@dataclass(slots=True)
class SwapImage:
    """What the kernel keeps of a swapped-out VM: registers and which pages were written."""

    regs: bytes
    """The user-mode registers, packed (``registers()`` unpacks them)."""
    pages: bytes
    """The stored pages: (first page, page count) runs, packed as native uint32 pairs."""
    stored: int
    hypercalls: int

    def registers(self) -> dict[str, int]:
        return dict(zip(GPR_NAMES, _REGS.unpack(self.regs), strict=True))


_BIT0: Final = bytes(i & 1 for i in range(256))
_RUN: Final = re.compile(b"\x01+")


@aiofiles.os.wrap
def _write_runs(path: str, buf: mmap.mmap, runs: array[int]) -> None:
    """Write the page runs of ``buf`` at their offsets in ``path`` (one worker-thread hop)."""
    view = memoryview(buf)
    fd = os.open(path, os.O_WRONLY)
    try:
        for k in range(0, len(runs), 2):
            lo, hi = runs[k] * PAGE, (runs[k] + runs[k + 1]) * PAGE
            if os.pwrite(fd, view[lo:hi], lo) != hi - lo:
                raise ResourceError(f"short write to swap file {path}")
    finally:
        view.release()
        os.close(fd)


@aiofiles.os.wrap
def _read_runs(path: str, buf: mmap.mmap, runs: array[int]) -> None:
    """Read the page runs stored in ``path`` back into ``buf`` (one worker-thread hop)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for k in range(0, len(runs), 2):
            lo, n = runs[k] * PAGE, runs[k + 1] * PAGE
            data = os.pread(fd, n, lo)
            if len(data) != n:
                raise ResourceError(f"swap file {path} is truncated")
            buf[lo:lo + n] = data
    finally:
        os.close(fd)


async def _remove(path: str) -> None:
    try:
        await aiofiles.os.remove(path)
    except OSError:
        pass


def trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; else nothing)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def process_rss() -> int:
    """This process's resident memory in bytes (0 if /proc cannot tell)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return 0


def resident_pages(address: int, size: int) -> bytes:
    """One byte per page of [address, address+size): bit 0 set when resident."""
    n = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * n)()
    if _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vec) != 0:
        raise ResourceError(f"mincore failed: {os.strerror(ctypes.get_errno())}")
    return bytes(vec)


class Swapper:
    """A kernel's swap area and gatekeeper. ``budget=None`` disables both."""

    def __init__(self, budget: int | None, directory: str | None = None) -> None:
        self.budget = budget
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None and budget is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="denali-swap-")
            directory = self._tmp.name
        self.directory = directory
        self.used = 0
        self.max_resident = 1 << 30
        """At most this many VMs resident at once (the kernel's engine limit)."""
        self._charge: dict[int, int] = {}
        self._idle: OrderedDict[int, Vm] = OrderedDict()
        """Resident VMs waiting in idle, least recently idle first: eviction order."""
        self._queue: deque[tuple[Vm, int, asyncio.Future[None]]] = deque()
        self._evicting: dict[int, int] = {}
        """VMs being swapped out -> the charge they will give back."""
        self._freeing = 0
        """Sum of ``_evicting``: counted as free already, so one admission does not
        start more evictions than it needs."""
        self.scale = 1.0
        """Measured process memory growth / estimated charges (>= 1): the estimate of
        what a resident VM costs misses some of what its engine allocates, so charges
        are scaled by what the process really uses (see ``_calibrate``)."""
        self._base_rss = process_rss() if budget is not None else 0
        """The process's memory before any VM: not charged to VMs."""
        self._calibrated_at = 0.0
        self._trimmed_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._removals: set[asyncio.Task[None]] = set()
        self.stats = {"swap_outs": 0, "swap_ins": 0, "pages_out": 0, "pages_in": 0,
                      "bytes_out": 0, "bytes_in": 0, "admission_waits": 0, "heap_trims": 0}

    @property
    def enabled(self) -> bool:
        return self.budget is not None

    def path_for(self, vm_id: int) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, f"vm{vm_id}.swap")

    def create_area(self, vm_id: int, size: int) -> None:
        """Make the VM's swap file (sparse, ``size`` bytes) at creation."""
        if not self.enabled:
            return
        fd = os.open(self.path_for(vm_id), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def remove_area(self, vm_id: int) -> None:
        """The VM ended: forget it and delete its swap file. The unlink runs on a worker
        thread (freeing a file's blocks can take milliseconds); ``aclose`` waits for it."""
        if not self.enabled:
            return
        self._forget(vm_id)
        task = asyncio.get_running_loop().create_task(_remove(self.path_for(vm_id)))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    # ---- the gatekeeper ----
    async def admit(self, vm: Vm, cost: int) -> None:
        """Return when ``vm`` may be resident, charged ``cost`` bytes (FIFO)."""
        if not self.enabled:
            return
        if not self._queue and self._fits(cost):
            self._charge_vm(vm.id, cost)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((vm, cost, fut))
        self.stats["admission_waits"] += 1
        self._make_room()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(vm.id)
            else:
                self._queue = deque(e for e in self._queue if e[2] is not fut)
            raise

    def _fits(self, cost: int, freeing: int = 0, evicting: int = 0) -> bool:
        """Would ``cost`` more fit (once ``freeing`` bytes of ``evicting`` VMs are out)?"""
        return ((self.used - freeing + cost) * self.scale <= self._budget()
                and len(self._charge) - evicting < self.max_resident)

    def _over(self) -> bool:
        return (self.used - self._freeing) * self.scale > self._budget()

    def _calibrate(self) -> None:
        """At most twice a second: scale = (RSS - RSS before the first VM) / charges.

        Engines freed by swap-outs leave free holes in the C heap that malloc keeps
        (and RSS counts); when the measured scale exceeds 1.1, the heap's free pages
        are given back (``malloc_trim``, at most every 2 s) and RSS measured again."""
        now = time.monotonic()
        if now - self._calibrated_at < 0.5:
            return
        self._calibrated_at = now
        held = self.used - self._freeing
        if held < 32 << 20:
            return
        scale = (process_rss() - self._base_rss) / held
        if scale > 1.1 and now - self._trimmed_at >= 2.0:
            self._trimmed_at = now
            self.stats["heap_trims"] += 1
            trim_heap()
            scale = (process_rss() - self._base_rss) / held
        self.scale = min(4.0, max(1.0, scale))

    def _budget(self) -> int:
        assert self.budget is not None
        return self.budget

    def _charge_vm(self, vm_id: int, cost: int) -> None:
        self.used += cost - self._charge.get(vm_id, 0)
        self._charge[vm_id] = cost

    def release(self, vm_id: int) -> None:
        """The VM left RAM (swapped out or ended): give back its charge."""
        self.used -= self._charge.pop(vm_id, 0)
        if self._queue:
            self._make_room()

    def _forget(self, vm_id: int) -> None:
        self._idle.pop(vm_id, None)
        self.release(vm_id)

    def vm_idle(self, vm: Vm) -> None:
        """``vm`` entered idle-with-timeout: it may be evicted now."""
        if not self.enabled:
            return
        self._charge_vm(vm.id, self._measure(vm))
        self._idle[vm.id] = vm
        self._idle.move_to_end(vm.id)
        self._calibrate()
        if self._queue or self._over():
            self._make_room()

    def vm_busy(self, vm: Vm) -> None:
        """``vm`` left idle (woken): it is no longer evictable."""
        self._idle.pop(vm.id, None)

    def _measure(self, vm: Vm) -> int:
        mem = vm.memory
        return resident_pages(mem.address, mem.size).count(1) * PAGE + ENGINE_COST

    def _make_room(self) -> None:
        while self._queue:
            vm, cost, fut = self._queue[0]
            if fut.done():
                self._queue.popleft()
                continue
            if self._fits(cost):
                self._queue.popleft()
                self._charge_vm(vm.id, cost)
                fut.set_result(None)
                continue
            if self._fits(cost, self._freeing, len(self._evicting)):
                return  # the swap-outs under way make room; release() comes back here
            if not self._evict_one():
                return
        while self._over() and self._evict_one():
            pass

    def _evict_one(self) -> bool:
        """Start swapping out the least recently idle evictable VM; False if none."""
        for vm_id, vm in self._idle.items():
            if vm_id in self._evicting or not vm.evictable():
                continue
            del self._idle[vm_id]
            charge = self._charge.get(vm_id, 0)
            self._evicting[vm_id] = charge
            self._freeing += charge
            task = asyncio.get_running_loop().create_task(self._evict(vm), name=f"denali-swap-out-{vm_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        return False

    async def _evict(self, vm: Vm) -> None:
        try:
            await vm.swap_out()
        finally:
            self._freeing -= self._evicting.pop(vm.id, 0)

    # ---- I/O ----
    async def write_out(self, vm: Vm) -> SwapImage:
        """Write ``vm``'s touched pages to its swap file; return what to keep."""
        mem = vm.memory
        present = bytearray(resident_pages(mem.address, mem.size))
        present[abi.Layout.KERNEL_PAGE // PAGE] = 0  # kernel-owned: rebuilt on swap-in
        runs = array("I")
        for m in _RUN.finditer(present.translate(_BIT0)):
            runs.extend((m.start(), m.end() - m.start()))
        stored = sum(runs[1::2])
        await _write_runs(self.path_for(vm.id), mem.buf, runs)
        self.stats["swap_outs"] += 1
        self.stats["pages_out"] += stored
        self.stats["bytes_out"] += stored * PAGE
        regs = vm.cpu.saved_registers()
        if vm.pstate is not None:  # [personality] FPU/SSE, TLS selectors, syscall count
            vm.pstate.extended = vm.cpu.save_extended()
            vm.pstate.syscalls = vm.cpu.routed
        return SwapImage(_REGS.pack(*(regs[n] for n in GPR_NAMES)), runs.tobytes(), stored,
                         vm.cpu.hypercalls)

    async def read_in(self, vm: Vm, image: SwapImage, into: mmap.mmap) -> None:
        """Read the stored pages of ``vm`` back into ``into``."""
        runs = array("I")
        runs.frombytes(image.pages)
        await _read_runs(self.path_for(vm.id), into, runs)
        self.stats["swap_ins"] += 1
        self.stats["pages_in"] += image.stored
        self.stats["bytes_in"] += image.stored * PAGE

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._removals, return_exceptions=True)
        for _, _, fut in self._queue:
            if not fut.done():
                fut.cancel()
        self._queue.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
