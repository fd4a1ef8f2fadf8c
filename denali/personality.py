"""Hypercalls that let an in-VM personality host programs written for another OS.

Pre-virtualization: a foreign program (today, a static i386 Linux program) runs
unmodified in a VM beside a *personality*, a guestos image that serves the program's
system calls in guest code. The kernel grows only by what such a personality needs and
cannot do from inside the VM:

- ``SYSCALL_ENTRY``: route the program's ``int $0x80`` (the same vector as hypercalls)
  to the personality's entry point instead of treating it as a hypercall. The rule, which
  the CPU's interrupt hook applies (``VCpu.on_interrupt``), is deliberately one a C hook
  can apply without Python: an ``int $0x80`` whose address lies outside
  ``[code_lo, code_hi)`` stores its resume EIP at ``save`` and continues at ``entry``;
  every register is left as the program set it.
- ``MEM_PROTECT``: change the page map (mmap, munmap, mprotect, brk grow within the VM).
- ``SET_TLS``: install a thread-local-storage descriptor in the kernel-owned GDT.
- ``RANDOM``: entropy from the host (AT_RANDOM, getrandom).

A VM that never calls these has ``vm.pstate`` None and pays nothing. What they set is
part of the VM's state, kept in ``PersonalityState`` so it survives swapping out and in
(the page map, the TLS descriptors, the routing, and the x87/SSE registers and segment
selectors of the CPU, which ordinary guestos guests do not use).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from denali import _uc, abi
from denali.abi import Hc, Result
from denali.memory import PROT_R, PROT_RW, PROT_RX, PROT_W, Region

if TYPE_CHECKING:
    from denali.hypercalls import HypercallTable
    from denali.vm import Vm


@dataclass(slots=True)
class PersonalityState:
    """What the personality hypercalls changed in one VM (kept across swap)."""

    entry: int = 0
    """SYSCALL_ENTRY: the personality's entry point (0: no routing)."""
    save: int = 0
    code_lo: int = 0
    code_hi: int = 0
    tls: bytearray = field(default_factory=lambda: bytearray(8 * abi.TLS_ENTRIES))
    """The TLS descriptors, as written into the GDT."""
    regions: list[Region] | None = None
    """The page map once MEM_PROTECT changed it (None: the image's layout)."""
    extended: bytes = b""
    """x87/SSE registers and FS/GS selectors while the VM is swapped out."""
    syscalls: int = 0
    """Foreign system calls routed to the personality (kept across swap)."""


def state_of(vm: Vm) -> PersonalityState:
    """The VM's personality state, created on first use."""
    st = vm.pstate
    if st is None:
        st = vm.pstate = PersonalityState()
    return st


def _offs(hc: Hc) -> dict[str, int]:
    return abi.HYPERCALL_BY_NR[int(hc)].args.offsets()


_SYSENT: Final = _offs(Hc.SYSCALL_ENTRY)
_MPROT: Final = _offs(Hc.MEM_PROTECT)
_TLS: Final = _offs(Hc.SET_TLS)
_RAND: Final = _offs(Hc.RANDOM)
_U32X4: Final = struct.Struct("<IIII")
_U32X2: Final = struct.Struct("<II")
_PROTS: Final = {0: 0, abi.MEM_R: PROT_R, abi.MEM_R | abi.MEM_W: PROT_RW,
                 abi.MEM_R | abi.MEM_X: PROT_RX}


def _syscall_entry(vm: Vm, arg: int) -> int:
    entry, save, lo, hi = _U32X4.unpack_from(vm.memory.buf, arg + _SYSENT["entry"])
    st = state_of(vm)
    if entry == 0:
        st.entry = st.save = st.code_lo = st.code_hi = 0
        vm.cpu.set_routing(st)
        return Result.OK
    mem = vm.memory
    if not (lo <= entry < hi) or not mem.check(entry, 1, PROT_RX) or not mem.check(save, 4, PROT_RW):
        return Result.INVAL
    st.entry, st.save, st.code_lo, st.code_hi = entry, save, lo, hi
    vm.cpu.set_routing(st)
    return Result.OK


def _mem_protect(vm: Vm, arg: int) -> int:
    addr, length, prot, _ = _U32X4.unpack_from(vm.memory.buf, arg + _MPROT["addr"])
    mem = vm.memory
    page = abi.PAGE_SIZE
    discard = prot & abi.MEM_DISCARD
    prot &= ~abi.MEM_DISCARD
    if prot not in _PROTS or addr % page or length % page or length == 0:
        return Result.INVAL
    if addr < abi.Layout.IMAGE_BASE or addr + length > mem.size:
        return Result.INVAL
    lowered = mem.protect(addr, addr + length, _PROTS[prot])
    if discard:
        mem.discard(addr, length)
    st = state_of(vm)
    st.regions = list(mem.regions)
    if lowered:
        vm.cpu.engine.flush_tlb()
    return Result.OK


def _set_tls(vm: Vm, arg: int) -> int:
    entry, base, limit, flags = _U32X4.unpack_from(vm.memory.buf, arg + _TLS["entry"])
    first = abi.TLS_FIRST_ENTRY
    if not first <= entry < first + abi.TLS_ENTRIES:
        return Result.INVAL
    if flags & ~(abi.TLS_F_PAGES | abi.TLS_F_EMPTY) or limit > 0xFFFFF:
        return Result.INVAL
    if flags & abi.TLS_F_EMPTY:
        desc = bytes(8)
    else:
        desc = _uc.tls_descriptor(base, limit, bool(flags & abi.TLS_F_PAGES))
    st = state_of(vm)
    i = (entry - first) * 8
    st.tls[i:i + 8] = desc
    vm.cpu.write_tls(st.tls)
    return Result.OK


def _random(vm: Vm, arg: int) -> int:
    buf, length = _U32X2.unpack_from(vm.memory.buf, arg + _RAND["buf"])
    if length > abi.RANDOM_MAX:
        return Result.INVAL
    if not vm.memory.check(buf, length, PROT_W):
        return Result.FAULT
    vm.memory.write(buf, os.urandom(length))
    return Result.OK


def register(table: HypercallTable) -> None:
    """Install the personality hypercalls in a kernel's table."""
    table.register(Hc.SYSCALL_ENTRY, _syscall_entry)
    table.register(Hc.MEM_PROTECT, _mem_protect)
    table.register(Hc.SET_TLS, _set_tls)
    table.register(Hc.RANDOM, _random)

