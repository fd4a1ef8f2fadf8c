"""What a guest fault looks like to the host: a classified, self-describing report."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import capstone


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
        return (f"VM {self.vm_id} ({self.image}) faulted: {self.kind.value}{where}{note}, "
                f"eip=0x{self.eip:08x}{insn}")

    def details(self) -> str:
        """Several lines: the summary, the registers and the disassembly."""
        regs = " ".join(f"{k}={v:08x}" for k, v in self.registers.items())
        lines = [self.summary(), "  registers: " + regs]
        lines += ["  " + d for d in self.disassembly]
        return "\n".join(lines)


_cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def disassemble(code: bytes, address: int, count: int = 3) -> tuple[str, ...]:
    """Up to ``count`` instructions of ``code`` at ``address`` as "0xADDR: mnemonic ops"."""
    out = []
    for insn in _cs.disasm(code, address):
        out.append(f"0x{insn.address:08x}: {insn.mnemonic} {insn.op_str}".rstrip())
        if len(out) >= count:
            break
    if not out and code:
        out.append(f"0x{address:08x}: (undecodable: {code[:8].hex()})")
    return tuple(out)
