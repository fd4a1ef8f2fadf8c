"""A VM's virtual CPU: boots the image at CPL 3, runs slices, catches hypercalls and faults.

One ``VCpu`` owns one Unicorn engine and is the engine's callback owner. During a slice:
- ``int $0x80`` calls ``on_interrupt``: the hypercall is dispatched right there (no exit
  from emulation) unless its handler returns ``EXIT``, in which case the slice stops
  right after the ``int`` and the VM coroutine completes the call;
- any other vector is a guest fault (divide error, #GP from a privileged instruction at
  CPL 3, int3, ...) and stops the slice;
- the TLB-fill hook answers page permissions from the ``GuestMemory`` map, so faults on
  unmapped or forbidden pages end the slice with ``UC_ERR_EXCEPTION`` and the refused
  access is remembered for the report.

Nothing here raises into Unicorn: exceptions inside callbacks are caught and turned into
an ``INTERNAL`` exit so the kernel can fail this VM alone.
"""

from __future__ import annotations

import struct
import time
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from denali import _uc, abi
from denali.fault import FaultKind, FaultReport, disassemble
from denali.memory import PROT_R, PROT_RW, PROT_RX, PROT_W, PROT_X, GuestMemory, Region

if TYPE_CHECKING:
    from denali.hypercalls import HypercallTable
    from denali.loader import Image
    from denali.personality import PersonalityState
    from denali.preempt import Lane
    from denali.vm import Vm

_TRAMPOLINE: Final = abi.Layout.KERNEL_PAGE + 0x100
_KSTACK: Final = abi.Layout.KERNEL_PAGE + 0xF00
_IRET_FRAME: Final = struct.Struct("<IIIII")
_BOOT_EFLAGS: Final = 0x202
_SAVE_EIP: Final = struct.Struct("<I")
_VECTOR: Final = abi.HYPERCALL_VECTOR
EXIT: Final = -1
"""Handler result: stop the slice; the VM coroutine completes this hypercall."""
_VECTOR_KIND: Final = {0: FaultKind.DIVIDE, 3: FaultKind.BREAKPOINT, 6: FaultKind.INVALID_INSN,
                       13: FaultKind.PRIVILEGED}
_ACCESS: Final = {_uc.MEM_READ: "read", _uc.MEM_WRITE: "write", _uc.MEM_FETCH: "execute"}
_NEEDS: Final = {_uc.MEM_READ: PROT_R, _uc.MEM_WRITE: PROT_W, _uc.MEM_FETCH: PROT_X}


_RESUME_REGS: Final = ((_uc.REG_EAX, "eax"), (_uc.REG_EBX, "ebx"), (_uc.REG_ECX, "ecx"),
                       (_uc.REG_EDX, "edx"), (_uc.REG_ESI, "esi"), (_uc.REG_EDI, "edi"),
                       (_uc.REG_EBP, "ebp"))


class Exit(IntEnum):
    """Why a slice ended."""

    PREEMPTED = 0
    HYPERCALL = 1
    FAULT = 2
    INTERNAL = 3


def layout_regions(image: Image, mem_size: int) -> tuple[list[Region], int, int]:
    """The page map of a VM: (regions, heap_start, heap_end)."""
    if image.regions:  # [personality] an image built with its own page map (denali/linux)
        return list(image.regions), image.heap[0], image.heap[1]
    page = abi.PAGE_SIZE
    stack_lo = mem_size - abi.STACK_SIZE
    heap_end = stack_lo - page  # the page below the stack is the guard
    heap_start = image.end
    regions = [Region(abi.Layout.VREGS, abi.Layout.VREGS + page, PROT_RW, "vregs"),
               Region(abi.Layout.KERNEL_PAGE, abi.Layout.KERNEL_PAGE + page, PROT_RX, "kernel")]
    for i, seg in enumerate(image.segments):
        regions.append(Region(seg.page_start, seg.page_end, seg.prot, f"segment{i}"))
    if heap_end > heap_start:
        regions.append(Region(heap_start, heap_end, PROT_RW, "heap"))
    regions.append(Region(stack_lo, mem_size, PROT_RW, "stack"))
    return regions, heap_start, max(heap_start, heap_end)


class VCpu:
    """The CPU of one VM. Not thread-safe: one slice at a time."""

    __slots__ = (
        "_forbidden",
        "_invalid",
        "_last_fill",
        "_vector",
        "defer_hypercalls",
        "deferred",
        "eip",
        "engine",
        "error",
        "exit",
        "fault",
        "hcall_arg",
        "hcall_nr",
        "hypercalls",
        "image",
        "memory",
        "redirect",
        "routed",
        "slices",
        "sys_entry",
        "sys_hi",
        "sys_lo",
        "sys_save",
        "table",
        "vm",
        "vm_id",
    )

    def __init__(self, vm_id: int, image: Image, memory: GuestMemory, table: HypercallTable,
                 vm: Vm, tcg_buffer: int, resume: dict[str, int] | None = None) -> None:
        """``resume``: registers saved by ``saved_registers()`` (a VM coming back from
        swap); otherwise the CPU starts at the image's entry point."""
        self.vm_id = vm_id
        self.image = image
        self.memory = memory
        self.table = table
        self.vm = vm
        self.exit = Exit.PREEMPTED
        self.hcall_nr = 0
        self.hcall_arg = 0
        self.fault: FaultReport | None = None
        self.error: BaseException | None = None
        self._last_fill = (0, 0, 0)
        self._vector: int | None = None
        self._invalid = False
        self._forbidden: tuple[str, dict[str, int]] | None = None
        self.hypercalls = 0
        self.slices = 0
        self.defer_hypercalls = False
        """Set when slices run on worker threads: every hypercall exits emulation."""
        self.deferred = False
        mem = memory.buf
        kp = abi.Layout.KERNEL_PAGE
        mem[kp:kp + len(_uc.GDT)] = _uc.GDT
        mem[_TRAMPOLINE] = 0xCF  # iret
        # [personality] system-call routing, TLS descriptors (denali/personality.py)
        self.sys_entry = self.sys_save = self.sys_lo = self.sys_hi = 0
        self.routed = 0
        self.redirect = False
        pst = vm.pstate
        if pst is not None:
            self.set_routing(pst)
            self.write_tls(pst.tls)
            self.routed = pst.syscalls
        if resume is None:
            frame = _IRET_FRAME.pack(image.entry, _uc.USER_CS, _BOOT_EFLAGS, memory.size, _uc.USER_DS)
        else:
            frame = _IRET_FRAME.pack(resume["eip"], _uc.USER_CS, resume["eflags"], resume["esp"],
                                     _uc.USER_DS)
        mem[_KSTACK - len(frame):_KSTACK] = frame
        self.engine = _uc.Engine(self, memory.address, memory.size, tcg_buffer)
        try:
            self.engine.enter_user_mode(kp, _KSTACK - len(frame))
            if resume is not None and pst is not None and pst.extended:
                self.engine.restore_extended(pst.extended)  # [personality] x87/SSE, FS/GS
            if resume is not None:
                for reg, name in _RESUME_REGS:
                    self.engine.reg_write(reg, resume[name])
            self.engine.install_hooks()
        except BaseException:
            self.engine.close()
            raise
        self.eip = _TRAMPOLINE

    # ---- engine callbacks (run inside emu_start, on the slice's thread) ----
    def on_interrupt(self, intno: int) -> None:
        eng = self.engine
        if self.sys_entry and intno == _VECTOR and self.exit is Exit.PREEMPTED:
            # [personality] SYSCALL_ENTRY's rule: an int $0x80 outside the personality's
            # code is the program's system call: save its resume EIP, enter the handler.
            # EIP is not written here: Unicorn 2.1 loses track of EIP when an engine
            # whose EIP a callback wrote is later stopped from another thread (the
            # watchdog), so the slice stops now and ``run`` resumes it at the entry.
            eip = eng.read_eip()
            if not self.sys_lo <= eip - 2 < self.sys_hi:
                _SAVE_EIP.pack_into(self.memory.buf, self.sys_save, eip)
                self.routed += 1
                self.redirect = True
                eng.stop()
                return
        if self.exit is Exit.FAULT:  # already faulted (a stop lands at block end)
            eng.stop()
            return
        if intno != _VECTOR:
            self._vector = intno
            self.exit = Exit.FAULT
            eng.stop()
            return
        if self.defer_hypercalls:  # on a worker thread: the loop handles it
            self.hcall_nr = eng.reg_read(_uc.REG_EAX)
            self.hcall_arg = eng.reg_read(_uc.REG_EBX)
            self.hypercalls += 1
            self.deferred = True
            self.exit = Exit.HYPERCALL
            eng.stop()
            return
        try:
            nr = eng.reg_read(_uc.REG_EAX)
            arg = eng.reg_read(_uc.REG_EBX)
            self.hypercalls += 1
            res = self.table.dispatch(self.vm, nr, arg)
        except Exception as exc:  # a kernel bug must fail this VM only
            self.error = exc
            self.exit = Exit.INTERNAL
            eng.stop()
            return
        if res == EXIT:
            self.hcall_nr = nr
            self.hcall_arg = arg
            self.exit = Exit.HYPERCALL
            eng.stop()
        else:
            eng.reg_write(_uc.REG_EAX, res)

    def on_tlb_fill(self, vaddr: int, access: int) -> int:
        prot = self.memory.prot_at(vaddr) if vaddr < self.memory.size else 0
        self._last_fill = (vaddr, access, prot)
        return prot

    def on_invalid_insn(self) -> None:
        self._invalid = True

    def on_forbidden_insn(self, name: str) -> None:
        # A stop from an instruction hook lands at the end of the block, so the
        # faulting EIP is taken now.
        self._forbidden = (name, self.engine.read_gprs())
        self.exit = Exit.FAULT
        self.engine.stop()

    # ---- slices ----
    def run(self, lane: Lane, deadline_ns: int) -> Exit:
        """Run one slice until a hypercall exit, a fault, or ``deadline_ns``
        (``time.monotonic_ns()``), when the watchdog preempts it."""
        self.exit = Exit.PREEMPTED
        self.deferred = False
        self._vector = None
        eng = self.engine
        self.slices += 1
        lane.begin(eng.handle, deadline_ns)
        resume_at = None
        try:
            err = eng.start(self.eip)
            if self.redirect:  # [personality] a routed system call: enter the handler
                entry, now = self.sys_entry, time.monotonic_ns
                start = _uc.restarter(eng.handle, entry)
                while self.redirect:
                    self.redirect = False
                    if err or self.exit is not Exit.PREEMPTED or now() >= deadline_ns:
                        resume_at = entry
                        break
                    err = start()
        finally:
            lane.end()
        self.eip = eng.reg_read(_uc.REG_EIP) if resume_at is None else resume_at
        return self._finish_slice(err)

    def _finish_slice(self, err: int) -> Exit:
        if err and self.exit not in (Exit.FAULT, Exit.INTERNAL):
            self.exit = Exit.FAULT
        if self.exit == Exit.FAULT:
            self.fault = self._classify(err)
        return self.exit

    def saved_registers(self) -> dict[str, int]:
        """The user-mode registers to resume from (between slices). x87/SSE state is not
        included: guestos is built without floating point (a personality VM keeps it in
        ``PersonalityState.extended``, see ``save_extended``)."""
        regs = self.engine.read_gprs()
        regs["eip"] = self.eip
        return regs

    def set_routing(self, st: PersonalityState) -> None:
        """[personality] Apply SYSCALL_ENTRY's routing (entry 0: none)."""
        self.sys_entry, self.sys_save, self.sys_lo, self.sys_hi = st.entry, st.save, st.code_lo, st.code_hi

    def write_tls(self, tls: bytes | bytearray) -> None:
        """[personality] Put the TLS descriptors into the GDT (kernel page)."""
        off = abi.Layout.KERNEL_PAGE + _uc.TLS_GDT_OFFSET
        self.memory.buf[off:off + len(tls)] = bytes(tls)

    def save_extended(self) -> bytes:
        """[personality] x87/SSE registers and FS/GS selectors (see ``_uc.Engine``)."""
        return self.engine.save_extended()

    def set_result(self, result: int) -> None:
        """Complete an exited hypercall: its result code goes to EAX."""
        self.engine.reg_write(_uc.REG_EAX, result)

    def deliver_irq(self, entry: int, mask: int) -> bool:
        """Push (eip, eflags, mask) on the guest stack and jump to ``entry``.

        Returns False (and records a fault) if the stack has no writable room.
        """
        eng = self.engine
        esp = eng.reg_read(_uc.REG_ESP)
        eflags = eng.reg_read(_uc.REG_EFLAGS)
        new_sp = esp - 12
        if new_sp < 0 or not self.memory.check(new_sp, 12, PROT_RW):
            self.fault = self._report(FaultKind.BAD_IRQ_FRAME, address=new_sp & 0xFFFFFFFF,
                                      access="write")
            return False
        struct.pack_into("<III", self.memory.buf, new_sp, mask, eflags, self.eip)
        eng.reg_write(_uc.REG_ESP, new_sp)
        self.eip = entry
        return True

    # ---- fault reports ----
    def _classify(self, err: int) -> FaultReport:
        if self._forbidden is not None:
            name, regs = self._forbidden
            return self._report(FaultKind.PRIVILEGED, access=name, regs=regs)
        if self._vector is not None:
            kind = _VECTOR_KIND.get(self._vector, FaultKind.CPU_EXCEPTION)
            if self._vector not in _VECTOR_KIND and self._vector >= 32:
                kind = FaultKind.BAD_INTERRUPT
            return self._report(kind, vector=self._vector, eip=self._trap_origin(self._vector))
        if self._invalid or err == _uc.UC_ERR_INSN_INVALID:
            return self._report(FaultKind.INVALID_INSN)
        vaddr, access, prot = self._last_fill
        needs = _NEEDS.get(access, PROT_R)
        if prot & needs != needs:
            return self._report(self._page_kind(vaddr, prot), address=vaddr,
                                access=_ACCESS.get(access))
        return self._report(FaultKind.CPU_EXCEPTION, access=_uc.strerror(err))

    def _trap_origin(self, vector: int) -> int | None:
        """EIP of the ``int3``/``int n`` that trapped (traps leave EIP after it), else None."""
        eip = self.engine.reg_read(_uc.REG_EIP)
        mem = self.memory
        if vector == 3 and eip >= 1 and mem.check(eip - 1, 1, PROT_R) and mem.buf[eip - 1] == 0xCC:
            return eip - 1
        if (vector >= 32 or vector == 3) and eip >= 2 and mem.check(eip - 2, 2, PROT_R) \
                and mem.buf[eip - 2] == 0xCD and mem.buf[eip - 1] == vector:
            return eip - 2
        return None

    def _page_kind(self, vaddr: int, prot: int) -> FaultKind:
        if prot:
            return FaultKind.PROTECTION
        if vaddr < abi.PAGE_SIZE:
            return FaultKind.NULL_POINTER
        if vaddr >= abi.Layout.KERNEL_SPACE:
            return FaultKind.KERNEL_SPACE
        if vaddr >= self.memory.size:
            return FaultKind.OUTSIDE_MEMORY
        guard = self.memory.size - abi.STACK_SIZE - abi.PAGE_SIZE
        if guard <= vaddr < guard + abi.PAGE_SIZE:
            return FaultKind.STACK_OVERFLOW
        return FaultKind.UNMAPPED

    def _report(self, kind: FaultKind, address: int | None = None, access: str | None = None,
                vector: int | None = None, eip: int | None = None,
                regs: dict[str, int] | None = None) -> FaultReport:
        if regs is None:
            regs = self.engine.read_gprs()
        if eip is None:
            eip = regs["eip"]
        code = b""
        if self.memory.check(eip, 1, PROT_RX) or self.memory.check(eip, 1, PROT_R):
            r = self.memory.region_at(eip)
            end = min(eip + 32, r.end if r else eip)
            code = self.memory.read(eip, end - eip)
        return FaultReport(self.vm_id, self.image.name, kind, eip, regs, address, access, vector,
                           disassemble(code, eip) if code else ())

    def close(self) -> None:
        self.engine.close()
