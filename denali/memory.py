"""A VM's guest memory: one anonymous mapping plus the permission map of its pages.

The permission map is the single source of truth for what the guest may touch: the
TLB-fill hook gives the CPU these permissions, and every hypercall pointer is checked
against the same map (``check``), so the kernel never reads or writes where the guest
itself could not. One range more is closed to writes by the kernel on the guest's
behalf: the kernel fields of the virtual-register page (``check`` with PROT_W refuses
them), so no hypercall output can overwrite what the kernel publishes there. Regions
are few (guard, vregs, kernel page, image segments, heap, stack guard, stack, and what
MEM_PROTECT made), so lookups are a bisect over a sorted list.
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

    Anonymous memory: pages the guest never touches cost no host RAM.
    """

    __slots__ = ("_anchor", "_regions", "_starts", "address", "buf", "on_lowered", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._anchor = ctypes.c_char.from_buffer(self.buf)
        self.address = ctypes.addressof(self._anchor)
        self._regions: list[Region] = []
        self._starts: list[int] = []
        self.on_lowered: Callable[[], None] | None = None
        """Called by ``protect`` when a page lost a permission: the CPU using this
        memory drops its cached translations (``VCpu`` sets it)."""

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
        kernel fields of the virtual-register page is refused too.
        """
        if length == 0:
            return True
        if addr < 0 or length < 0 or addr + length > self.size:
            return False
        end = addr + length
        if prot & PROT_W and addr < _KERNEL_FIELDS_END and end > _VREGS:
            return False
        while addr < end:
            r = self.region_at(addr)
            if r is None or (r.prot & prot) != prot:
                return False
            addr = r.end
        return True

    def read(self, addr: int, length: int) -> bytes:
        """Copy bytes out (caller has checked the range)."""
        return self.buf[addr : addr + length]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy bytes in (caller has checked the range)."""
        self.buf[addr : addr + len(data)] = data

    def close(self) -> None:
        """Release the mapping; idempotent. The engine using it must be closed first."""
        if self.buf.closed:
            return
        del self._anchor
        self.buf.close()
