"""A VM's guest memory: one anonymous mapping plus the permission map of its pages.

The permission map is the single source of truth for what the guest may touch: the
TLB-fill hook gives the CPU these permissions, and every hypercall pointer is checked
against the same map (``check``), so the kernel never reads or writes where the guest
itself could not. One range more is closed to writes by the kernel on the guest's
behalf: the kernel fields of the virtual-register page (``check`` with PROT_W refuses
them), so no hypercall output can overwrite what the kernel publishes there. Regions
are few (guard, vregs, kernel page, image segments, heap, stack guard, stack, and what
MEM_PROTECT made), so lookups are a bisect over a sorted list. The same map is kept
page by page too (``prot_map``, one byte of PROT_R | PROT_W | PROT_X per page) for the
CPU's C hook, which checks the pointers of the hypercalls it answers against it.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from denali import abi

PROT_R: Final = 1
PROT_W: Final = 2
PROT_X: Final = 4
PROT_RW: Final = PROT_R | PROT_W
PROT_RX: Final = PROT_R | PROT_X
PAGE_SHIFT: Final = 12
assert 1 << PAGE_SHIFT == abi.PAGE_SIZE
_VREGS: Final = int(abi.Layout.VREGS)
_KERNEL_FIELDS_END: Final = _VREGS + abi.VREGS.size


@dataclass(frozen=True)
class Region:
    """A run of pages [start, end) with one permission set (never W and X together)."""

    start: int
    end: int
    prot: int
    name: str


class GuestMemory:
    """Guest memory of ``size`` bytes (a multiple of the page size) and its page map.

    Anonymous memory: pages the guest never touches cost no host RAM. With ``fd``, the
    memory is a private (copy-on-write) mapping of ``size`` bytes of that file from
    ``offset`` (page aligned): it reads as the file, the guest's writes stay its own,
    and every VM mapping the same file shares the pages none of them wrote (clones of
    one snapshot). The file must not change while it is mapped.
    """

    __slots__ = (
        "_anchor",
        "_map_anchor",
        "_regions",
        "_starts",
        "address",
        "buf",
        "dirty",
        "epoch",
        "on_lowered",
        "prot_map",
        "prot_map_address",
        "size",
    )

    def __init__(self, size: int, fd: int = -1, offset: int = 0) -> None:
        self.size = size
        if fd < 0:
            self.buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        else:
            self.buf = mmap.mmap(
                fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
            )
        self._anchor = ctypes.c_char.from_buffer(self.buf)
        self.address = ctypes.addressof(self._anchor)
        self._regions: list[Region] = []
        self._starts: list[int] = []
        self.prot_map = bytearray(max(1, size >> PAGE_SHIFT))
        """The regions' permissions, one byte per page (kept by ``set_regions`` and
        ``protect``; never resized, so its address stays valid until ``close``)."""
        self._map_anchor = ctypes.c_char.from_buffer(self.prot_map)
        self.prot_map_address = ctypes.addressof(self._map_anchor)
        self.on_lowered: Callable[[], None] | None = None
        """Called by ``protect`` when a page lost a permission: the CPU using this
        memory drops its cached translations (``VCpu`` sets it)."""
        self.dirty: bytearray | None = None
        """While tracking (a live migration): one byte per page, 1 once the page may have
        been written since the last ``take_dirty``. The guest's stores mark it through the
        CPU's TLB (a writable page is given to the TLB read-only until its first store);
        the kernel's through ``check`` with PROT_W, ``write`` and ``mark``."""
        self.epoch = 0
        """Incremented by every ``take_dirty``: the CPU flushes its TLB when it changed, so
        every page is write-protected again for the next round."""

    def set_regions(self, regions: list[Region]) -> None:
        """Install the page map: regions sorted, disjoint, page aligned, inside memory."""
        regions = sorted(regions, key=lambda r: r.start)
        prev = 0
        for r in regions:
            if r.start % abi.PAGE_SIZE or r.end % abi.PAGE_SIZE or r.start < prev or r.end > self.size:
                raise ValueError(f"bad region {r}")
            if r.prot & PROT_W and r.prot & PROT_X:
                raise ValueError(f"region {r.name} is writable and executable")
            prev = r.end
        self._regions = regions
        self._starts = [r.start for r in regions]
        self._map_pages(0, self.size)

    def _map_pages(self, start: int, end: int) -> None:
        """Write the permissions of the pages [start, end) into ``prot_map`` from the regions."""
        pm = self.prot_map
        first, last = start >> PAGE_SHIFT, min(end, self.size) + abi.PAGE_SIZE - 1 >> PAGE_SHIFT
        pm[first:last] = bytes(last - first)
        for r in self._regions:
            if r.end <= start or r.start >= end:
                continue
            a, b = max(r.start, start) >> PAGE_SHIFT, min(r.end, end) >> PAGE_SHIFT
            pm[a:b] = bytes((r.prot,)) * (b - a)

    def protect(self, start: int, end: int, prot: int) -> bool:
        """Give the pages [start, end) permissions ``prot`` (0 unmaps them), splitting
        regions as needed; returns True if any page lost a permission it had, and then
        calls ``on_lowered`` (the CPU's cached translations must go). Page aligned,
        inside memory (the caller checked); ``ValueError`` for W and X together."""
        if prot & PROT_W and prot & PROT_X:
            raise ValueError("writable and executable")
        lowered = False
        out: list[Region] = []
        for r in self._regions:
            if r.end <= start or r.start >= end:
                out.append(r)
                continue
            if r.prot & ~prot:
                lowered = True
            if r.start < start:
                out.append(Region(r.start, start, r.prot, r.name))
            if r.end > end:
                out.append(Region(end, r.end, r.prot, r.name))
        if prot:
            out.append(Region(start, end, prot, "dynamic"))
        out.sort(key=lambda r: r.start)
        merged: list[Region] = []
        for r in out:  # keep the map short: join touching runs of the same kind
            if (
                merged
                and merged[-1].end == r.start
                and merged[-1].prot == r.prot
                and merged[-1].name == r.name
            ):
                merged[-1] = Region(merged[-1].start, r.end, r.prot, r.name)
            else:
                merged.append(r)
        self._regions = merged
        self._starts = [r.start for r in merged]
        self._map_pages(start, end)
        if lowered and self.on_lowered is not None:
            self.on_lowered()
        return lowered

    def discard(self, addr: int, length: int) -> None:
        """Drop the contents of whole pages: they read as zero and cost no host RAM."""
        self.buf.madvise(mmap.MADV_DONTNEED, addr, length)

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(self._regions)

    def region_at(self, addr: int) -> Region | None:
        """The region containing ``addr``, or None for an unmapped address."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            r = self._regions[i]
            if addr < r.end:
                return r
        return None

    def prot_at(self, addr: int) -> int:
        """Permissions of the page holding ``addr`` (0: unmapped or outside memory)."""
        r = self.region_at(addr)
        return r.prot if r is not None else 0

    def check(self, addr: int, length: int, prot: int) -> bool:
        """True iff every byte of [addr, addr+length) is mapped with all of ``prot``.

        Safe for hostile values: negative, wrapping or huge lengths are refused.
        A zero length is accepted at any address. With PROT_W, a range touching the
        kernel fields of the virtual-register page is refused too, and a range accepted
        is marked dirty while pages are tracked (the caller is about to write it through
        ``buf``, which bypasses ``write``): a device that checks for writing need not
        mark what it writes.
        """
        if length == 0:
            return True
        if addr < 0 or length < 0 or addr + length > self.size:
            return False
        start = addr
        end = addr + length
        if prot & PROT_W and addr < _KERNEL_FIELDS_END and end > _VREGS:
            return False
        while addr < end:
            r = self.region_at(addr)
            if r is None or (r.prot & prot) != prot:
                return False
            addr = r.end
        if prot & PROT_W and self.dirty is not None:
            self.mark(start, length)
        return True

    def read(self, addr: int, length: int) -> bytes:
        """Copy bytes out (caller has checked the range)."""
        return self.buf[addr : addr + length]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy bytes in (caller has checked the range)."""
        self.buf[addr : addr + len(data)] = data
        if self.dirty is not None:
            self.mark(addr, len(data))

    # ---- dirty-page tracking (live migration) ----
    def mark(self, addr: int, length: int) -> None:
        """Record that the kernel wrote [addr, addr+length) (no-op when not tracking).
        Every kernel write into guest memory that is not inside a ``check``-ed hypercall
        (a deferred completion, an interrupt frame) calls this."""
        d = self.dirty
        if d is None or length <= 0:
            return
        first = max(0, addr) >> PAGE_SHIFT
        last = min(self.size, addr + length) - 1 >> PAGE_SHIFT
        if first == last:
            d[first] = 1
        elif first < last:
            d[first : last + 1] = b"\1" * (last + 1 - first)

    def start_tracking(self) -> None:
        """Begin dirty-page tracking (idempotent); the CPU write-protects every page."""
        if self.dirty is None:
            self.dirty = bytearray(self.size >> PAGE_SHIFT)
            self.epoch += 1

    def take_dirty(self) -> bytearray:
        """The pages written since tracking began or the last call, one byte each; a new
        round starts. Call only while no slice of this memory's CPU runs."""
        if self.dirty is None:
            raise ValueError("dirty-page tracking is off")
        taken, self.dirty = self.dirty, bytearray(self.size >> PAGE_SHIFT)
        self.epoch += 1
        return taken

    def stop_tracking(self) -> None:
        """End tracking: pages get their full permissions again at the next TLB flush."""
        if self.dirty is not None:
            self.dirty = None
            self.epoch += 1

    def close(self) -> None:
        """Release the mapping; idempotent. The engine using it must be closed first."""
        if self.buf.closed:
            return
        del self._anchor
        self.buf.close()
        del self._map_anchor
