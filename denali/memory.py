"""A VM's guest memory: one anonymous mapping plus the permission map of its pages.

The permission map is the single source of truth for what the guest may touch: the
TLB-fill hook gives the CPU these permissions, and every hypercall pointer is checked
against the same map (``check``), so the kernel never reads or writes where the guest
itself could not. Regions are few (guard, vregs, kernel page, image segments, heap,
stack guard, stack), so lookups are a bisect over a short list.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import struct
from dataclasses import dataclass
from typing import Final

from denali import abi

PROT_R: Final = 1
PROT_W: Final = 2
PROT_X: Final = 4
PROT_RW: Final = PROT_R | PROT_W
PROT_RX: Final = PROT_R | PROT_X


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

    __slots__ = ("_anchor", "_regions", "_starts", "address", "buf", "size", "view")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._anchor = ctypes.c_char.from_buffer(self.buf)
        self.address = ctypes.addressof(self._anchor)
        self.view = memoryview(self.buf)
        self._regions: list[Region] = []
        self._starts: list[int] = []

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
        regions as needed; returns True if any page lost a permission it had (the
        CPU's cached translations must then be flushed). Page aligned, inside memory,
        never W and X together (the caller checked)."""
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
            if merged and merged[-1].end == r.start and merged[-1].prot == r.prot \
                    and merged[-1].name == r.name:
                merged[-1] = Region(merged[-1].start, r.end, r.prot, r.name)
            else:
                merged.append(r)
        self._regions = merged
        self._starts = [r.start for r in merged]
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
        A zero length is accepted at any address.
        """
        if length == 0:
            return True
        if addr < 0 or length < 0 or addr + length > self.size:
            return False
        end = addr + length
        while addr < end:
            r = self.region_at(addr)
            if r is None or (r.prot & prot) != prot:
                return False
            addr = r.end
        return True

    def read(self, addr: int, length: int) -> bytes:
        """Copy bytes out (caller has checked the range)."""
        return self.buf[addr:addr + length]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy bytes in (caller has checked the range)."""
        self.buf[addr:addr + len(data)] = data

    def u32(self, addr: int) -> int:
        return int(struct.unpack_from("<I", self.buf, addr)[0])

    def resident_pages(self) -> int:
        """Pages of this mapping currently resident in host RAM (mincore)."""
        libc = ctypes.CDLL(None, use_errno=True)
        npages = (self.size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * npages)()
        if libc.mincore(ctypes.c_void_p(self.address), ctypes.c_size_t(self.size), vec) != 0:
            return -1
        return sum(b & 1 for b in vec)

    def close(self) -> None:
        """Release the mapping; idempotent. The engine using it must be closed first."""
        if self.buf.closed:
            return
        self.view.release()
        del self._anchor
        self.buf.close()
