"""What a personality needs from the host and cannot do inside its VM: MEM_PROTECT,
SET_TLS and RANDOM.

A *personality* is a guestos image that hosts programs written for another OS
(pre-virtualization, ``denali.linux``: a static i386 Linux program runs unmodified
beside it and its ``int $0x80`` system calls are routed to it, see ``SYSCALL_ENTRY`` on
the VM, ``denali.vm``). To serve mmap/mprotect, set_thread_area and getrandom it needs
three services of the host, all answered here on the VM's memory alone:

- ``MEM_PROTECT`` changes the VM's page map (``GuestMemory.protect``): the map is the
  one the TLB-fill hook and every hypercall check read, so lowered permissions hold
  from the next instruction (the memory tells the CPU to drop its cached translations);
- ``SET_TLS`` writes one of the GDT's thread-local-storage descriptors (entries
  ``_uc.TLS_ENTRIES``) in the kernel page; they are part of the CPU state (``CpuState``),
  so swap and snapshots keep them;
- ``RANDOM`` copies bytes from the host's cryptographic source.

The device keeps no state of its own: the page map is the memory's (the VM keeps it
across swap) and the descriptors are the CPU's.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, ClassVar, Final

from denali import _uc, abi
from denali.abi import Hc, Result
from denali.devices.base import SLOT_PERSONALITY, Device
from denali.memory import PROT_R, PROT_RW, PROT_RX, PROT_W

if TYPE_CHECKING:
    from denali.memory import GuestMemory


def _offs(hc: Hc) -> dict[str, int]:
    return abi.HYPERCALL_BY_NR[int(hc)].args.offsets()


_MPROT: Final = _offs(Hc.MEM_PROTECT)["addr"]
_TLS: Final = _offs(Hc.SET_TLS)["entry"]
_RAND: Final = _offs(Hc.RANDOM)["buf"]
_U32X4: Final = struct.Struct("<IIII")
_U32X2: Final = struct.Struct("<II")
_PROTS: Final = {0: 0, abi.MEM_R: PROT_R, abi.MEM_R | abi.MEM_W: PROT_RW, abi.MEM_R | abi.MEM_X: PROT_RX}
_TLS_AT: Final = abi.Layout.KERNEL_PAGE + len(_uc.GDT)
"""Where the TLS descriptors live: right after the fixed GDT entries in the kernel page."""
assert _uc.TLS_ENTRIES[0] == abi.TLS_FIRST_ENTRY and len(_uc.TLS_ENTRIES) == abi.TLS_ENTRIES
assert len(_uc.GDT) == 8 * abi.TLS_FIRST_ENTRY


class Personality(Device):
    """The MEM_PROTECT, SET_TLS and RANDOM hypercalls (see the module docstring)."""

    SLOT: ClassVar[int] = SLOT_PERSONALITY
    HYPERCALLS: ClassVar = {
        Hc.MEM_PROTECT: "hc_mem_protect",
        Hc.SET_TLS: "hc_set_tls",
        Hc.RANDOM: "hc_random",
    }
    __slots__ = ()

    def hc_mem_protect(self, mem: GuestMemory, arg: int) -> int:
        addr, length, prot, _ = _U32X4.unpack_from(mem.buf, arg + _MPROT)
        page = abi.PAGE_SIZE
        discard = prot & abi.MEM_DISCARD
        prot &= ~abi.MEM_DISCARD
        if prot not in _PROTS or addr % page or length % page or length == 0:
            return Result.INVAL
        if addr < abi.Layout.IMAGE_BASE or addr + length > mem.size:
            return Result.INVAL
        mem.protect(addr, addr + length, _PROTS[prot])
        if discard:
            mem.discard(addr, length)
        return Result.OK

    def hc_set_tls(self, mem: GuestMemory, arg: int) -> int:
        entry, base, limit, flags = _U32X4.unpack_from(mem.buf, arg + _TLS)
        first = abi.TLS_FIRST_ENTRY
        if not first <= entry < first + abi.TLS_ENTRIES:
            return Result.INVAL
        if flags & ~(abi.TLS_F_PAGES | abi.TLS_F_EMPTY) or limit > 0xFFFFF:
            return Result.INVAL
        if flags & abi.TLS_F_EMPTY:
            desc = bytes(8)
        else:
            desc = _uc.tls_descriptor(base, limit, bool(flags & abi.TLS_F_PAGES))
        at = _TLS_AT + (entry - first) * 8
        mem.buf[at : at + 8] = desc
        return Result.OK

    def hc_random(self, mem: GuestMemory, arg: int) -> int:
        buf, length = _U32X2.unpack_from(mem.buf, arg + _RAND)
        if length > abi.RANDOM_MAX:
            return Result.INVAL
        if not mem.check(buf, length, PROT_W):
            return Result.FAULT
        if length:
            mem.write(buf, os.urandom(length))
        return Result.OK
