"""Swap: idle VMs leave RAM; a gatekeeper admits VMs in FIFO order under a memory budget.

Two parts, used by the VM (``denali.vm``) and knowing nothing of it:

``SwapStore`` is the swap area: a directory holding one sparse file per VM, as large as
its address space (Denali: a swap region per VM, allocated at creation). ``write``
stores only the pages a VM touched (those resident in its anonymous mapping, found with
``mincore``; never-touched pages are zero and cost no I/O) and returns a ``SwapImage``,
the little the kernel keeps of them: the page runs and a CRC-32 of their bytes. ``read``
puts them back and checks the CRC: a swap file changed behind the kernel's back fails
that VM (``SwapError``), never silently. All file I/O runs on worker threads (aiofiles).
A failed write (a full disk) raises ``SwapError``; the VM then simply stays resident.

``Gatekeeper`` charges each resident VM an estimate of what it costs (touched pages +
``ENGINE_COST``) against ``budget`` bytes. A VM that must become resident (a fresh VM's
first slice, or a swapped VM that an interrupt or its deadline woke) asks ``admit``;
requests are served in FIFO order while the budget allows, and room is made by evicting
idle resident VMs (``Evictable.evict``), least recently idle first. After a failed
eviction it evicts nothing for ``BACKOFF_S`` (the failure is logged and counted).

State of a VM with respect to swap::

    (new) -admit-> RESIDENT -evict-> SWAPPED -admit, read-> RESIDENT
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import mmap
import os
import re
import tempfile
import time
import zlib
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Final, Protocol

import aiofiles.os

from denali import abi
from denali.errors import ConfigError, ResourceError, SwapError
from denali.tasks import TaskOwner

log = logging.getLogger(__name__)

ENGINE_COST: Final = 1 << 20
"""Bytes charged for a resident VM's engine (translation cache, Unicorn state)."""
PAGE: Final = abi.PAGE_SIZE
BACKOFF_S: Final = 1.0
"""After a failed eviction, no eviction is started for this long."""
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(slots=True)
class SwapImage:
    """What the kernel keeps of a swapped-out VM's memory."""

    pages: bytes
    """The stored pages: (first page, page count) runs, packed as native uint32 pairs."""
    stored: int
    """How many pages are stored."""
    crc: int
    """CRC-32 of the stored bytes, in run order."""


_BIT0: Final = bytes(i & 1 for i in range(256))
_RUN: Final = re.compile(b"\x01+")


@aiofiles.os.wrap
def _write_runs(path: str, buf: mmap.mmap, runs: array[int]) -> int:
    """Write the page runs of ``buf`` at their offsets in ``path`` (one worker-thread
    hop); returns their CRC-32."""
    crc = 0
    fd = os.open(path, os.O_WRONLY)
    # INVARIANT: no view of the guest's memory outlives this call (even through a
    # traceback), or the memory could not be closed when its VM ends.
    view = memoryview(buf)
    try:
        for k in range(0, len(runs), 2):
            lo, hi = runs[k] * PAGE, (runs[k] + runs[k + 1]) * PAGE
            with view[lo:hi] as part:
                crc = zlib.crc32(part, crc)
                written = os.pwrite(fd, part, lo)
            if written != hi - lo:
                raise OSError(f"short write to swap file {path}")
    finally:
        view.release()
        os.close(fd)
    return crc


@aiofiles.os.wrap
def _read_runs(path: str, buf: mmap.mmap, runs: array[int]) -> int:
    """Read the page runs stored in ``path`` back into ``buf`` (one worker-thread hop);
    returns their CRC-32. ``SwapError`` when the file is short."""
    crc = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for k in range(0, len(runs), 2):
            lo, n = runs[k] * PAGE, runs[k + 1] * PAGE
            data = os.pread(fd, n, lo)
            if len(data) != n:
                raise SwapError(f"swap file {path} is truncated")
            crc = zlib.crc32(data, crc)
            buf[lo : lo + n] = data
    finally:
        os.close(fd)
    return crc


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


def touched_bytes(address: int, size: int) -> int:
    """Bytes of [address, address+size) resident in host RAM."""
    return resident_pages(address, size).count(1) * PAGE


class SwapStore:
    """A kernel's swap area (see the module docstring). ``directory=None``: a private
    temporary directory, removed by ``aclose``.

    Raises ``ConfigError`` when ``directory`` is not a directory this process can write.
    """

    def __init__(self, directory: str | None, owner: TaskOwner) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="denali-swap-")
            directory = self._tmp.name
        else:
            _check_directory(directory)
        self.directory = directory
        self._owner = owner
        self.stats = {
            "swap_outs": 0,
            "swap_ins": 0,
            "pages_out": 0,
            "pages_in": 0,
            "bytes_out": 0,
            "bytes_in": 0,
            "write_errors": 0,
            "read_errors": 0,
        }

    def path_for(self, vm_id: int) -> str:
        return os.path.join(self.directory, f"vm{vm_id}.swap")

    def create_area(self, vm_id: int, size: int) -> None:
        """Make the VM's swap file (sparse, ``size`` bytes) at creation; ``ResourceError``
        when the file cannot be made."""
        path = self.path_for(vm_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ResourceError(f"cannot create swap file {path}: {exc.strerror}") from None

    def remove_area(self, vm_id: int) -> None:
        """The VM ended: delete its swap file. The unlink runs on a worker thread (freeing
        a file's blocks can take milliseconds); ``aclose`` waits for it."""
        self._owner.spawn(_remove(self.path_for(vm_id)), name=f"denali-swap-rm-{vm_id}")

    async def write(self, vm_id: int, buf: mmap.mmap, address: int, exclude: int) -> SwapImage:
        """Store the touched pages of memory ``buf`` (at host ``address``), all but page
        number ``exclude`` (kernel-owned, rebuilt on the way back). ``SwapError`` when the
        host cannot write them (the file may then hold a partial copy, never used)."""
        present = bytearray(resident_pages(address, len(buf)))
        present[exclude] = 0
        runs = array("I")
        for m in _RUN.finditer(present.translate(_BIT0)):
            runs.extend((m.start(), m.end() - m.start()))
        stored = sum(runs[1::2])
        try:
            crc = await _write_runs(self.path_for(vm_id), buf, runs)
        except OSError as exc:
            self.stats["write_errors"] += 1
            raise SwapError(f"VM {vm_id}: cannot write its swap file: {exc}") from None
        st = self.stats
        st["swap_outs"] += 1
        st["pages_out"] += stored
        st["bytes_out"] += stored * PAGE
        return SwapImage(runs.tobytes(), stored, crc)

    async def read(self, vm_id: int, image: SwapImage, into: mmap.mmap) -> None:
        """Read the stored pages of ``vm_id`` back into ``into`` and check them;
        ``SwapError`` when the file is unreadable, short, or not what was written."""
        runs = array("I")
        runs.frombytes(image.pages)
        path = self.path_for(vm_id)
        try:
            crc = await _read_runs(path, into, runs)
        except OSError as exc:
            self.stats["read_errors"] += 1
            raise SwapError(f"VM {vm_id}: cannot read its swap file: {exc}") from None
        except SwapError:
            self.stats["read_errors"] += 1
            raise
        if crc != image.crc:
            self.stats["read_errors"] += 1
            raise SwapError(
                f"VM {vm_id}: its swap file {path} changed since it was written (checksum mismatch)"
            )
        st = self.stats
        st["swap_ins"] += 1
        st["pages_in"] += image.stored
        st["bytes_in"] += image.stored * PAGE

    def close(self) -> None:
        """Remove a private directory (after ``owner`` finished the unlinks)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _check_directory(path: str) -> None:
    if not os.path.isdir(path):
        raise ConfigError(f"swap directory {path}: not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".denali-probe-", dir=path)
    except OSError as exc:
        raise ConfigError(f"swap directory {path}: cannot create files there ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


async def _remove(path: str) -> None:
    try:
        await aiofiles.os.remove(path)
    except OSError:
        pass


class Evictable(Protocol):
    """A resident VM as the gatekeeper sees it."""

    @property
    def id(self) -> int: ...

    def evictable(self) -> bool:
        """True while it may be swapped out now."""
        ...

    async def evict(self) -> bool:
        """Swap it out; False if it was no longer evictable (``SwapError`` if it could
        not be written: it stays resident)."""
        ...

    def touched_bytes(self) -> int:
        """Bytes of its memory resident in host RAM."""
        ...


class Gatekeeper:
    """Admission and eviction under a memory budget (see the module docstring)."""

    def __init__(self, budget: int, owner: TaskOwner) -> None:
        self.budget = budget
        self._owner = owner
        self.used = 0
        self.max_resident = 1 << 30
        """At most this many VMs resident at once (the kernel's engine limit)."""
        self._charge: dict[int, int] = {}
        self._idle: OrderedDict[int, Evictable] = OrderedDict()
        """Resident VMs waiting in idle, least recently idle first: eviction order."""
        self._queue: deque[tuple[int, int, asyncio.Future[None]]] = deque()
        self._evicting: dict[int, int] = {}
        """VMs being swapped out -> the charge they will give back."""
        self._freeing = 0
        """Sum of ``_evicting``: counted as free already, so one admission does not
        start more evictions than it needs."""
        self._backoff_until = 0.0
        self._warned_at = -1e9
        self.scale = 1.0
        """Measured process memory growth / estimated charges (>= 1): the estimate of
        what a resident VM costs misses some of what its engine allocates, so charges
        are scaled by what the process really uses (see ``_calibrate``)."""
        self._base_rss = process_rss()
        """The process's memory before any VM: not charged to VMs."""
        self._calibrated_at = 0.0
        self._trimmed_at = 0.0
        self.stats = {"admission_waits": 0, "heap_trims": 0, "evictions": 0, "eviction_failures": 0}

    async def admit(self, vm_id: int, cost: int) -> None:
        """Return when VM ``vm_id`` may be resident, charged ``cost`` bytes (FIFO)."""
        if not self._queue and self._fits(cost):
            self._charge_vm(vm_id, cost)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((vm_id, cost, fut))
        self.stats["admission_waits"] += 1
        self._make_room()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(vm_id)
            else:
                self._queue = deque(e for e in self._queue if e[2] is not fut)
            raise

    def _fits(self, cost: int, freeing: int = 0, evicting: int = 0) -> bool:
        """Would ``cost`` more fit (once ``freeing`` bytes of ``evicting`` VMs are out)?"""
        return (self.used - freeing + cost) * self.scale <= self.budget and len(
            self._charge
        ) - evicting < self.max_resident

    def _over(self) -> bool:
        return (self.used - self._freeing) * self.scale > self.budget

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

    def _charge_vm(self, vm_id: int, cost: int) -> None:
        self.used += cost - self._charge.get(vm_id, 0)
        self._charge[vm_id] = cost

    def release(self, vm_id: int) -> None:
        """The VM left RAM (swapped out or ended): give back its charge."""
        self.used -= self._charge.pop(vm_id, 0)
        if self._queue:
            self._make_room()

    def forget(self, vm_id: int) -> None:
        """The VM ended."""
        self._idle.pop(vm_id, None)
        self.release(vm_id)

    def vm_idle(self, vm: Evictable) -> None:
        """``vm`` entered idle-with-timeout: it may be evicted now."""
        self._charge_vm(vm.id, vm.touched_bytes() + ENGINE_COST)
        self._idle[vm.id] = vm
        self._idle.move_to_end(vm.id)
        self._calibrate()
        if self._queue or self._over():
            self._make_room()

    def vm_busy(self, vm_id: int) -> None:
        """The VM left idle (woken): it is no longer evictable."""
        self._idle.pop(vm_id, None)

    def _make_room(self) -> None:
        while self._queue:
            vm_id, cost, fut = self._queue[0]
            if fut.done():
                self._queue.popleft()
                continue
            if self._fits(cost):
                self._queue.popleft()
                self._charge_vm(vm_id, cost)
                fut.set_result(None)
                continue
            if self._fits(cost, self._freeing, len(self._evicting)):
                return  # the swap-outs under way make room; release() comes back here
            if not self._evict_one():
                return
        while self._over() and self._evict_one():
            pass

    def _evict_one(self) -> bool:
        """Start swapping out the least recently idle evictable VM; False if none (or
        evictions are backing off after a failure)."""
        if time.monotonic() < self._backoff_until:
            return False
        for vm_id, vm in self._idle.items():
            if vm_id in self._evicting or not vm.evictable():
                continue
            del self._idle[vm_id]
            charge = self._charge.get(vm_id, 0)
            self._evicting[vm_id] = charge
            self._freeing += charge
            self._owner.spawn(self._evict(vm), name=f"denali-swap-out-{vm_id}")
            return True
        return False

    async def _evict(self, vm: Evictable) -> None:
        try:
            if await vm.evict():
                self.stats["evictions"] += 1
        except SwapError as exc:
            self.stats["eviction_failures"] += 1
            now = time.monotonic()
            self._backoff_until = now + BACKOFF_S
            if now - self._warned_at >= 60.0:  # one line a minute, not one per VM
                self._warned_at = now
                log.warning(
                    "swap-out failed (%d so far), VMs stay resident; evictions paused for %.0f s: %s",
                    self.stats["eviction_failures"],
                    BACKOFF_S,
                    exc,
                )
            if vm.evictable():
                self._idle[vm.id] = vm
            asyncio.get_running_loop().call_later(BACKOFF_S, self._retry)
        finally:
            self._freeing -= self._evicting.pop(vm.id, 0)

    def _retry(self) -> None:
        if self._queue or self._over():
            self._make_room()

    def cancel_waiters(self) -> None:
        """The kernel is closing: fail every pending admission."""
        for _, _, fut in self._queue:
            if not fut.done():
                fut.cancel()
        self._queue.clear()
