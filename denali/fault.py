"""What a guest fault looks like to the host: a classified, self-describing report."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum

import capstone
from capstone import x86 as _x86


class FaultKind(Enum):
    """Why a guest was stopped."""

    NULL_POINTER = "access to page 0 (null pointer)"
    KERNEL_SPACE = "access to kernel space"
    OUTSIDE_MEMORY = "access outside guest memory"
    STACK_OVERFLOW = "stack overflow into the guard page"
    UNMAPPED = "access to an unmapped guest page"
    PROTECTION = "access forbidden by page permissions"
    INVALID_INSN = "invalid instruction"
    PRIVILEGED = "privileged or unsupported instruction"
    DIVIDE = "divide error"
    BREAKPOINT = "breakpoint (int3)"
    BAD_INTERRUPT = "interrupt to a vector that is not the hypercall vector"
    CPU_EXCEPTION = "CPU exception"
    BAD_IRQ_FRAME = "no room on the guest stack for an interrupt frame"


@dataclass(frozen=True)
class FaultReport:
    """Everything known about a guest fault: reason, address, EIP, registers, code."""

    vm_id: int
    image: str
    kind: FaultKind
    eip: int
    registers: dict[str, int]
    address: int | None = None
    access: str | None = None
    vector: int | None = None
    disassembly: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        """One line for logs and the CLI."""
        where = f" at 0x{self.address:08x}" if self.address is not None else ""
        notes = [n for n in (self.access, f"vector {self.vector}" if self.vector is not None else None) if n]
        note = f" ({', '.join(notes)})" if notes else ""
        insn = f": {self.disassembly[0].split(': ', 1)[-1]}" if self.disassembly else ""
        return (
            f"VM {self.vm_id} ({self.image}) faulted: {self.kind.value}{where}{note}, "
            f"eip=0x{self.eip:08x}{insn}"
        )

    def details(self) -> str:
        """Several lines: the summary, the registers and the disassembly."""
        regs = " ".join(f"{k}={v:08x}" for k, v in self.registers.items())
        lines = [self.summary(), "  registers: " + regs]
        lines += ["  " + d for d in self.disassembly]
        return "\n".join(lines)


_local = threading.local()


def _decoder() -> capstone.Cs:
    """This thread's capstone decoder (a Cs handle must not be shared between threads:
    fault reports are made on whichever thread ran the slice)."""
    cs: capstone.Cs | None = getattr(_local, "cs", None)
    if cs is None:
        cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
        cs.detail = True
        _local.cs = cs
    return cs


def disassemble(code: bytes, address: int, count: int = 3) -> tuple[str, ...]:
    """Up to ``count`` instructions of ``code`` at ``address`` as "0xADDR: mnemonic ops"."""
    out = []
    for insn in _decoder().disasm(code, address):
        out.append(f"0x{insn.address:08x}: {insn.mnemonic} {insn.op_str}".rstrip())
        if len(out) >= count:
            break
    if not out and code:
        out.append(f"0x{address:08x}: (undecodable: {code[:8].hex()})")
    return tuple(out)


_STACK: dict[str, tuple[int, int]] = {
    # mnemonic: (offset from ESP, bytes) of its implicit stack access
    "push": (-4, 4),
    "pushfd": (-4, 4),
    "call": (-4, 4),
    "enter": (-4, 4),
    "pushal": (-32, 32),
    "pop": (0, 4),
    "popfd": (0, 4),
    "ret": (0, 4),
    "retf": (0, 8),
    "iretd": (0, 12),
    "popal": (0, 32),
}
_STRING = frozenset(("movs", "stos", "lods", "cmps", "scas", "ins", "outs"))


def _accesses(code: bytes, eip: int, regs: dict[str, int]) -> list[tuple[int, int]]:
    """(address, size) of every memory access the instruction at ``eip`` may make, as
    far as its operands tell: explicit memory operands, then the implicit stack and
    string accesses. Segment bases are taken as 0 (flat segments)."""
    insns = list(_decoder().disasm(code, eip, 1))
    if not insns:
        return []
    insn = insns[0]
    out: list[tuple[int, int]] = []
    for op in insn.operands:
        if op.type != _x86.X86_OP_MEM:
            continue
        m = op.mem
        ea = m.disp
        if m.base:
            ea += regs.get(insn.reg_name(m.base), 0)
        if m.index:
            ea += regs.get(insn.reg_name(m.index), 0) * m.scale
        out.append((ea & 0xFFFFFFFF, max(1, op.size)))
    name = insn.mnemonic.split()[-1]  # "rep movsd" -> "movsd"
    stack = _STACK.get(name)
    if stack is not None:
        out.append(((regs.get("esp", 0) + stack[0]) & 0xFFFFFFFF, stack[1]))
    elif name == "leave":
        out.append((regs.get("ebp", 0), 4))
    elif name[:4] in _STRING:
        out += [(regs.get("edi", 0), 4), (regs.get("esi", 0), 4)]
    return out


def fault_address(code: bytes, eip: int, regs: dict[str, int], page: int, fetch: bool) -> int:
    """The exact address of a refused access, from the page the CPU refused.

    The CPU reports only the page; the byte is found by decoding the faulting
    instruction (``code`` at ``eip``) and taking the access that falls in ``page``: its
    address, or ``page`` itself when the access starts below it and runs into it (as the
    x86 reports the first refused byte). A fetch fault is at ``eip`` when ``eip`` is in
    the page. Falls back to ``page``.
    """
    if fetch:
        return eip if eip & ~0xFFF == page else page
    for addr, size in _accesses(code, eip, regs):
        if addr & ~0xFFF == page:
            return addr
        if addr < page < addr + size:
            return page
    return page
