"""The guest/kernel ABI of denali, defined once.

Everything a guest can observe of the virtual architecture is defined here: the ABI
version, the guest memory layout, the virtual-register page, the hypercall numbers and
their argument structures, the result codes and the interrupt bits.
``tools/gen_abi.py`` turns this module into ``guestos/include/denali/abi.h``; a test
fails when that header is stale. ``docs/virtual-architecture.md`` is the prose contract.

Rule: any change to a number, an offset or a structure here MUST increment
``ABI_VERSION``. Adding a new hypercall at an unused number also increments it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final

ABI_VERSION: Final = 6
"""Version of this ABI; the kernel writes it into the virtual-register page."""

PAGE_SIZE: Final = 4096
HYPERCALL_VECTOR: Final = 0x80
"""A hypercall is ``int $0x80`` with EAX = number, EBX = guest address of its struct."""


class Layout(IntEnum):
    """Fixed guest addresses (guest-physical == guest-virtual, no paging)."""

    GUARD = 0x0000_0000
    """Page 0: never mapped; any access faults (catches NULL pointers)."""
    VREGS = 0x0000_1000
    """The virtual-register page (see ``VREGS_FIELDS``)."""
    KERNEL_PAGE = 0x0000_2000
    """Descriptor table and kernel trampoline: guest may read and execute, never write."""
    IMAGE_BASE = 0x0001_0000
    """Lowest address an image segment may occupy."""
    KERNEL_SPACE = 0xC000_0000
    """From here up the address space belongs to the kernel; guest access faults."""


STACK_SIZE: Final = 64 * 1024
"""Size of the boot stack at the top of guest memory; a guard page sits below it."""
MIN_MEMORY: Final = 256 * 1024
MAX_MEMORY: Final = 1024 * 1024 * 1024
DEFAULT_MEMORY: Final = 16 * 1024 * 1024
CMDLINE_OFFSET: Final = 0x800
"""Offset of the NUL-terminated command line inside the virtual-register page."""
CMDLINE_MAX: Final = PAGE_SIZE - CMDLINE_OFFSET - 1
"""Longest command line in bytes, without its NUL."""
VREGS_MAGIC: Final = 0x494C_4E44  # "DNLI" little-endian


class Result(IntEnum):
    """Result codes a hypercall returns to the guest in EAX."""

    OK = 0
    AGAIN = 1
    """Nothing to do now (receive queue empty); try after the matching interrupt."""
    INVAL = 2
    """An argument is out of range (a length, a count, a deadline, a flag)."""
    FAULT = 3
    """A guest pointer or pointer+length is outside the guest's memory."""
    NOSYS = 4
    """No hypercall has that number."""
    NODEV = 5
    """The VM has no such device (no NIC, no disk of that name)."""
    FULL = 6
    """A bounded queue is full; what was not accepted is counted as dropped."""
    IO = 7
    """The host failed to complete the operation."""


class Irq(IntFlag):
    """Virtual interrupt bits, one per source, batched in the pending mask."""

    TIMER = 1 << 0
    """The one-shot timer set by ``TIMER_SET`` expired."""
    NET_RX = 1 << 1
    """Frames wait in the NIC receive queue."""
    DISK = 1 << 2
    """A disk request completed."""
    CONSOLE = 1 << 3
    """Console input is available."""
    HOST = 1 << 4
    """The host poked the VM (``Vm.interrupt()``), e.g. to ask it to shut down."""
    CLONE = 1 << 5
    """This VM was just restored as a clone of a snapshot: its vm_id, mac, generation and
    command line are new; re-read them (re-address, re-key) before trusting old state."""
    CHILD = 1 << 6
    """Events of this VM's child VMs wait in its event queue (``CHILD_EVENT``)."""


IRQ_ALL: Final = int(Irq.TIMER | Irq.NET_RX | Irq.DISK | Irq.CONSOLE | Irq.HOST | Irq.CLONE | Irq.CHILD)

# Field types: (struct code, C type, size). "u8[N]" arrays are written ("u8", N).
_CTYPES: Final = {
    "u8": ("B", "uint8_t", 1),
    "u16": ("H", "uint16_t", 2),
    "u32": ("I", "uint32_t", 4),
    "u64": ("Q", "uint64_t", 8),
}


@dataclass(frozen=True)
class Field:
    """One field of an ABI structure.

    ``direction`` is "in" (guest to kernel), "out" (kernel to guest), "inout", or
    "pad". ``count`` > 1 makes it an array of ``ctype``.
    """

    name: str
    ctype: str
    direction: str
    doc: str
    count: int = 1

    @property
    def size(self) -> int:
        return _CTYPES[self.ctype][2] * self.count


@dataclass(frozen=True)
class Struct:
    """An ABI structure laid out in order with natural alignment and no implicit padding.

    Every field must already sit at a multiple of its own size and the total size must
    be a multiple of 8, so the i386 C layout equals this one (checked at import).
    """

    name: str
    doc: str
    fields: tuple[Field, ...]

    def offsets(self) -> dict[str, int]:
        out: dict[str, int] = {}
        pos = 0
        for f in self.fields:
            align = _CTYPES[f.ctype][2]
            if pos % align:
                raise ValueError(f"{self.name}.{f.name} at {pos} is not {align}-aligned")
            out[f.name] = pos
            pos += f.size
        if pos % 8:
            raise ValueError(f"{self.name} size {pos} is not a multiple of 8")
        return out

    @property
    def size(self) -> int:
        return sum(f.size for f in self.fields)

    def codec(self) -> struct.Struct:
        """A little-endian ``struct.Struct`` for the whole structure (arrays as bytes)."""
        fmt = "<"
        for f in self.fields:
            code = _CTYPES[f.ctype][0]
            fmt += f"{f.count}s" if f.count > 1 else code
        return struct.Struct(fmt)


def _f(name: str, ctype: str, direction: str, doc: str, count: int = 1) -> Field:
    return Field(name, ctype, direction, doc, count)


VREGS = Struct(
    "denali_vregs",
    "The virtual-register page at Layout.VREGS. The kernel refreshes the 'out' fields "
    "before every slice; the guest may write only the 'inout' fields.",
    (
        _f("magic", "u32", "out", "VREGS_MAGIC"),
        _f("abi_version", "u32", "out", "ABI_VERSION of the kernel"),
        _f("vm_id", "u32", "out", "this VM's id, unique within its kernel"),
        _f("mem_size", "u32", "out", "bytes of guest memory, from address 0"),
        _f("time_ns", "u64", "out", "kernel monotonic clock in ns as of this slice's start"),
        _f("cpu_khz", "u32", "out", "nominal CPU speed in kHz"),
        _f("pending", "u32", "out", "pending-interrupt mask (Irq bits) not yet delivered"),
        _f("irq_enable", "u32", "inout", "1: deliver interrupts to the handler; 0: mask"),
        _f("heap_start", "u32", "out", "first free byte after the image (page aligned)"),
        _f("heap_end", "u32", "out", "end of the free area: the stack guard page"),
        _f("cmdline_len", "u32", "out", "length of the command line at CMDLINE_OFFSET"),
        _f("mac", "u8", "out", "MAC address of the NIC (all zero: no NIC)", 6),
        _f("_pad0", "u16", "pad", "reserved"),
        _f("slice_ns", "u32", "out", "length of a time slice in ns"),
        _f(
            "generation",
            "u32",
            "out",
            "0 when booted from an image; +1 each time the VM is "
            "restored as a clone of a snapshot (Irq.CLONE says when)",
        ),
    ),
)


@dataclass(frozen=True)
class Hypercall:
    """A hypercall: its number, argument structure and contract."""

    nr: int
    name: str
    doc: str
    args: Struct


class Hc(IntEnum):
    """Hypercall numbers (EAX at ``int $0x80``)."""

    TERMINATE = 1
    IDLE = 2
    CONSOLE_WRITE = 3
    CLOCK = 4
    SET_HANDLER = 5
    TIMER_SET = 6
    NET_INFO = 7
    NET_SEND = 8
    NET_RECV = 9
    DISK_INFO = 10
    DISK_READ = 11
    DISK_WRITE = 12
    DISK_FLUSH = 13
    CHILD_CREATE = 14
    CHILD_CONTROL = 15
    CHILD_MEMORY = 16
    CHILD_INTERPOSE = 17
    CHILD_EVENT = 18
    CHILD_REPLY = 19
    SYSCALL_ENTRY = 20
    CONSOLE_READ = 21
    CONSOLE_WRITE_ERR = 22
    MEM_PROTECT = 23
    SET_TLS = 24
    RANDOM = 25


IOVEC = Struct(
    "denali_iovec",
    "One guest buffer: address and length.",
    (_f("addr", "u32", "in", "guest address"), _f("len", "u32", "in", "length in bytes")),
)


def _hc(nr: Hc, doc: str, *fields: Field) -> Hypercall:
    return Hypercall(int(nr), nr.name.lower(), doc, Struct(f"denali_hc_{nr.name.lower()}", doc, fields))


HYPERCALLS: Final = (
    _hc(
        Hc.TERMINATE,
        "Stop this VM for good with an exit status; never returns.",
        _f("status", "u32", "in", "exit status reported to the host"),
        _f("_pad", "u32", "pad", "reserved"),
    ),
    _hc(
        Hc.IDLE,
        "Idle-with-timeout: sleep until deadline_ns passes or an interrupt is "
        "pending. Returns at once if one is pending. The pending mask is returned and "
        "cleared (delivery by return value, whatever irq_enable says).",
        _f("deadline_ns", "u64", "in", "absolute kernel time; 0 = no deadline"),
        _f("now_ns", "u64", "out", "kernel time at wake-up"),
        _f("pending", "u32", "out", "interrupt bits delivered by this call"),
        _f("_pad", "u32", "pad", "reserved"),
    ),
    _hc(
        Hc.CONSOLE_WRITE,
        "Write bytes to the VM's console; returns INVAL past 64 KiB.",
        _f("buf", "u32", "in", "guest address of the bytes"),
        _f("len", "u32", "in", "number of bytes, at most 65536"),
    ),
    _hc(
        Hc.CLOCK,
        "Read the kernel monotonic clock exactly (the vregs copy is per slice).",
        _f("now_ns", "u64", "out", "kernel time in ns"),
    ),
    _hc(
        Hc.SET_HANDLER,
        "Register the interrupt entry point (0 removes it). When the VM "
        "resumes with irq_enable = 1 and bits pending, the kernel pushes the old EIP, "
        "then EFLAGS, then the mask, clears irq_enable and the delivered bits, and "
        "jumps to entry.",
        _f("entry", "u32", "in", "guest code address of the entry stub, or 0"),
        _f("_pad", "u32", "pad", "reserved"),
    ),
    _hc(
        Hc.TIMER_SET,
        "Arm the one-shot timer: Irq.TIMER becomes pending at deadline_ns "
        "(0 disarms it; a past deadline fires at once).",
        _f("deadline_ns", "u64", "in", "absolute kernel time, or 0"),
    ),
    _hc(
        Hc.NET_INFO,
        "Describe the NIC; NODEV when the VM has none.",
        _f("mac", "u8", "out", "MAC address", 6),
        _f("_pad", "u16", "pad", "reserved"),
        _f("mtu", "u32", "out", "largest frame in bytes without FCS (1514)"),
        _f("rx_queue", "u32", "out", "capacity of the receive queue in frames"),
    ),
    _hc(
        Hc.NET_SEND,
        "Send a batch of Ethernet frames (60..1514 bytes each, no FCS). "
        "Stops at the first bad frame (INVAL or FAULT) or when the transmit queue is "
        "full (FULL); 'sent' says how many were accepted.",
        _f("frames", "u32", "in", "guest address of an array of denali_iovec"),
        _f("count", "u32", "in", "number of frames, at most 64"),
        _f("sent", "u32", "out", "frames accepted"),
        _f("_pad", "u32", "pad", "reserved"),
    ),
    _hc(
        Hc.NET_RECV,
        "Receive up to 'count' frames into consecutive slots of slot_size "
        "bytes starting at 'bufs'; frame i's length goes to lens[i]. AGAIN when none "
        "wait. slot_size must be at least 1514.",
        _f("bufs", "u32", "in", "guest address of count * slot_size bytes"),
        _f("slot_size", "u32", "in", "bytes per slot, >= 1514"),
        _f("count", "u32", "in", "number of slots, at most 64"),
        _f("lens", "u32", "in", "guest address of count uint32 lengths"),
        _f("received", "u32", "out", "frames written"),
        _f("_pad", "u32", "pad", "reserved"),
    ),
    _hc(
        Hc.DISK_INFO,
        "Look a disk up by name and describe it; NODEV when the VM has no disk of "
        "that name. An empty name selects the index-th disk instead (NODEV past the last) and "
        "its name is written back, so a guest can list its disks. INVAL when the name has no "
        "NUL in its 32 bytes.",
        _f("name", "u8", "inout", "NUL-terminated name (at most 31 bytes), or empty", 32),
        _f("index", "u32", "in", "which disk when name is empty (0 = first)"),
        _f("handle", "u32", "out", "the disk's handle for DISK_READ/WRITE/FLUSH"),
        _f("blocks", "u64", "out", "size of the disk in blocks of DISK_BLOCK_SIZE bytes"),
        _f("block_size", "u32", "out", "DISK_BLOCK_SIZE (4096)"),
        _f("flags", "u32", "out", "DISK_F_READONLY when writes are refused"),
        _f("max_blocks", "u32", "out", "most blocks one request may carry (DISK_MAX_BLOCKS)"),
        _f("queue", "u32", "out", "requests the disk accepts before FULL (DISK_QUEUE)"),
    ),
    _hc(
        Hc.DISK_READ,
        "Submit a read of 'count' blocks from 'block' into 'buf' (count * 4096 "
        "bytes the guest may write). Returns at once: OK when accepted, with 'status' set to "
        "DISK_PENDING; later 'status' becomes OK or IO and Irq.DISK is raised. The structure "
        "and the buffer belong to the kernel until then. Refused at once (and 'status' set to "
        "the same code) with NODEV (bad handle), INVAL (count 0 or above max_blocks, a range "
        "past the end), FAULT (buf), FULL (the disk's queue holds DISK_QUEUE requests).",
        _f("handle", "u32", "in", "from DISK_INFO"),
        _f("count", "u32", "in", "number of blocks, 1..DISK_MAX_BLOCKS"),
        _f("block", "u64", "in", "first block"),
        _f("buf", "u32", "in", "guest address of count * DISK_BLOCK_SIZE bytes"),
        _f("status", "u32", "out", "DISK_PENDING, then the request's result code"),
    ),
    _hc(
        Hc.DISK_WRITE,
        "Submit a write of 'count' blocks from 'buf' to 'block'; like DISK_READ "
        "(buf must be readable; INVAL on a read-only disk). A request sees every request on "
        "the same disk submitted before it: the kernel completes a disk's requests in order.",
        _f("handle", "u32", "in", "from DISK_INFO"),
        _f("count", "u32", "in", "number of blocks, 1..DISK_MAX_BLOCKS"),
        _f("block", "u64", "in", "first block"),
        _f("buf", "u32", "in", "guest address of count * DISK_BLOCK_SIZE bytes"),
        _f("status", "u32", "out", "DISK_PENDING, then the request's result code"),
    ),
    _hc(
        Hc.DISK_FLUSH,
        "Submit a flush: its 'status' becomes OK only once every write submitted "
        "to this disk before it is durable on the host (fsync), or IO. Completes like "
        "DISK_READ, with Irq.DISK.",
        _f("handle", "u32", "in", "from DISK_INFO"),
        _f("status", "u32", "out", "DISK_PENDING, then the request's result code"),
    ),
    _hc(
        Hc.CHILD_CREATE,
        "Create a child VM from the ELF image at image (image_len bytes of this "
        "VM's memory) with mem_size bytes of memory and a command line; it does not run before "
        "CHILD_CONTROL start. mem_size + quota is charged to this VM's child-memory quota until "
        "the child ends (FULL when it does not fit, or when CHILD_MAX children live); quota is "
        "what the child may give its own children. disks: bit i passes this VM's disk i down "
        "(NODEV when it has none), read-only with CHILD_F_DISK_RO or when it is read-only here. "
        "CHILD_F_NIC gives the child a NIC of its own on this VM's LAN (NODEV when this VM has "
        "no NIC), its MAC returned in mac; without it the child has no NIC. "
        "INVAL: a bad image, mem_size or command line, unknown flags. FAULT: image or cmdline.",
        _f("image", "u32", "in", "guest address of the ELF image"),
        _f("image_len", "u32", "in", "its length in bytes"),
        _f("mem_size", "u32", "in", "the child's memory in bytes (MIN_MEMORY..MAX_MEMORY)"),
        _f("quota", "u32", "in", "bytes of memory the child may grant its own children"),
        _f("cmdline", "u32", "in", "guest address of the command line (no NUL needed)"),
        _f("cmdline_len", "u32", "in", "its length, at most CMDLINE_MAX"),
        _f("disks", "u32", "in", "bit i: pass disk handle i down"),
        _f("flags", "u32", "in", "CHILD_F_DISK_RO, CHILD_F_NIC"),
        _f("handle", "u32", "out", "the child's handle (0..CHILD_MAX-1)"),
        _f("vm_id", "u32", "out", "the child's VM id (its vm_id register)"),
        _f("mac", "u8", "out", "CHILD_F_NIC: the MAC of the child's NIC (else all zero)", 6),
        _f("_pad", "u16", "pad", "reserved"),
    ),
    _hc(
        Hc.CHILD_CONTROL,
        "Start, stop (hold before its next instruction), resume or destroy a "
        "child (op CHILD_OP_*). Destroying a child destroys its whole subtree; its handle is "
        "free once its CHILD_EV_EXIT event was read. NODEV: no live child has that handle. "
        "INVAL: an unknown op, or start twice.",
        _f("handle", "u32", "in", "from CHILD_CREATE"),
        _f("op", "u32", "in", "CHILD_OP_START, _STOP, _RESUME or _DESTROY"),
    ),
    _hc(
        Hc.CHILD_MEMORY,
        "Copy len bytes (at most CHILD_MEMORY_MAX) between this VM's buf and "
        "the child's memory at addr: op CHILD_MEM_READ reads what the child may read, "
        "CHILD_MEM_WRITE writes what the child may write. FAULT: either range is not allowed. "
        "AGAIN: the child is swapped out or inside a slice on another CPU (stop it first). "
        "NODEV: no such child (or it ended). INVAL: op or len.",
        _f("handle", "u32", "in", "from CHILD_CREATE"),
        _f("op", "u32", "in", "CHILD_MEM_READ or CHILD_MEM_WRITE"),
        _f("addr", "u32", "in", "address in the child's memory"),
        _f("buf", "u32", "in", "address in this VM's memory"),
        _f("len", "u32", "in", "bytes"),
        _f("_pad", "u32", "pad", "reserved"),
    ),
    _hc(
        Hc.CHILD_INTERPOSE,
        "Choose which of a child's events come to this VM as messages: the "
        "hypercalls whose bit is set in 'hypercalls' (bit n: number n) and, with CHILD_I_FAULT, "
        "its faults. Every other event goes straight to the kernel. A child's end is always "
        "reported (CHILD_EV_EXIT). NODEV: no such child. INVAL: unknown flags.",
        _f("handle", "u32", "in", "from CHILD_CREATE"),
        _f("flags", "u32", "in", "CHILD_I_FAULT"),
        _f("hypercalls", "u64", "in", "bit n set: interpose on hypercall number n"),
    ),
    _hc(
        Hc.CHILD_EVENT,
        "Take the oldest message from this VM's child-event queue (AGAIN when "
        "empty; Irq.CHILD is raised when it becomes non-empty). A CHILD_EV_HYPERCALL or "
        "CHILD_EV_FAULT event leaves its child waiting until CHILD_REPLY answers its seq.",
        _f("handle", "u32", "out", "which child"),
        _f("kind", "u32", "out", "CHILD_EV_HYPERCALL, CHILD_EV_FAULT or CHILD_EV_EXIT"),
        _f("seq", "u32", "out", "the number CHILD_REPLY answers (hypercall, fault)"),
        _f("nr", "u32", "out", "hypercall: its number (EAX); exit: CHILD_END_*"),
        _f("arg", "u32", "out", "hypercall: EBX, its structure's address in the child"),
        _f("status", "u32", "out", "exit: the child's exit status (CHILD_END_EXITED)"),
        _f("eip", "u32", "out", "fault (and exit after a fault): the faulting EIP"),
        _f("address", "u32", "out", "fault: the address the access was refused at"),
        _f("vector", "u32", "out", "fault: the x86 exception vector"),
        _f("_pad", "u32", "pad", "reserved"),
        _f(
            "args",
            "u8",
            "out",
            "hypercall: the first CHILD_EVENT_ARGS bytes of its structure "
            "(zero when the child cannot read it)",
            64,
        ),
    ),
    _hc(
        Hc.CHILD_REPLY,
        "Answer the waiting event seq of a child: CHILD_PASS lets the kernel "
        "handle it (a fault then stands and the child ends FAULTED), CHILD_ANSWER completes a "
        "hypercall with 'result' in the child's EAX, CHILD_RESUME resumes a faulted child at its "
        "EIP, CHILD_KILL destroys the child. With len > 0, len bytes at buf are first written to "
        "the child's memory at addr (what the child may write; FAULT otherwise). INVAL: no event "
        "seq waits, or the action does not fit its kind. NODEV: no such child.",
        _f("handle", "u32", "in", "from CHILD_EVENT"),
        _f("seq", "u32", "in", "from CHILD_EVENT"),
        _f("action", "u32", "in", "CHILD_PASS, CHILD_ANSWER, CHILD_RESUME or CHILD_KILL"),
        _f("result", "u32", "in", "CHILD_ANSWER: the child's EAX"),
        _f("buf", "u32", "in", "address in this VM of bytes to write into the child, or 0"),
        _f("len", "u32", "in", "their length (0: none), at most CHILD_MEMORY_MAX"),
        _f("addr", "u32", "in", "where in the child they go"),
        _f("_pad", "u32", "pad", "reserved"),
    ),
    _hc(
        Hc.SYSCALL_ENTRY,
        "Route foreign system calls to an in-VM handler (a personality). "
        "Afterwards an `int $0x80` executed at an address outside [code_lo, code_hi) is not a "
        "hypercall: the kernel stores the EIP after it at 'save' and resumes at 'entry', with "
        "every other register unchanged; inside the range it stays a hypercall. entry 0 turns "
        "routing off. INVAL unless entry lies in [code_lo, code_hi) and is executable, and "
        "'save' is 4 writable bytes.",
        _f("entry", "u32", "in", "guest code address of the system-call entry, or 0"),
        _f("save", "u32", "in", "guest address of a u32 that receives the caller's resume EIP"),
        _f("code_lo", "u32", "in", "first byte of the handler's code (int $0x80 here is a hypercall)"),
        _f("code_hi", "u32", "in", "end (exclusive) of the handler's code"),
    ),
    _hc(
        Hc.CONSOLE_READ,
        "Read console input: up to len bytes that have arrived. AGAIN when none "
        "wait (Irq.CONSOLE is raised when input arrives); OK with got = 0 and eof = 1 at end of "
        "input. INVAL past 64 KiB; NODEV when the VM has no console input.",
        _f("buf", "u32", "in", "guest address of len writable bytes"),
        _f("len", "u32", "in", "capacity in bytes, at most 65536"),
        _f("got", "u32", "out", "bytes written to buf"),
        _f("eof", "u32", "out", "1 when the input has ended and nothing is left"),
    ),
    _hc(
        Hc.CONSOLE_WRITE_ERR,
        "Write bytes to the VM's error stream (the host keeps it apart from "
        "CONSOLE_WRITE's output); returns INVAL past 64 KiB.",
        _f("buf", "u32", "in", "guest address of the bytes"),
        _f("len", "u32", "in", "number of bytes, at most 65536"),
    ),
    _hc(
        Hc.MEM_PROTECT,
        "Set the permissions of whole pages [addr, addr+len), which must lie "
        "between Layout.IMAGE_BASE and the memory size: 0 (unmapped), R, RW or RX; never W and X "
        "together; MEM_DISCARD may be added to drop the pages' contents (they read as zero "
        "afterwards and their host memory is freed). INVAL for an unaligned or out-of-range "
        "range or a bad prot. Lowered permissions take effect at the next instruction.",
        _f("addr", "u32", "in", "page-aligned start"),
        _f("len", "u32", "in", "length in bytes, a multiple of the page size"),
        _f("prot", "u32", "in", "MEM_R | MEM_W | MEM_X bits, optionally | MEM_DISCARD"),
        _f("_pad", "u32", "pad", "reserved"),
    ),
    _hc(
        Hc.SET_TLS,
        "Set one of the GDT's thread-local-storage descriptors (TLS_FIRST_ENTRY.."
        "TLS_FIRST_ENTRY+TLS_ENTRIES-1): a DPL 3 data segment of base and limit (bytes-1, or pages-1 "
        "when TLS_F_PAGES); its selector is entry * 8 + 3. TLS_F_EMPTY clears it. INVAL for another "
        "entry or flag. The descriptors are part of the VM's state (kept across swap).",
        _f("entry", "u32", "in", "GDT index"),
        _f("base", "u32", "in", "segment base address"),
        _f("limit", "u32", "in", "segment limit (20 bits)"),
        _f("flags", "u32", "in", "TLS_F_PAGES, TLS_F_EMPTY"),
    ),
    _hc(
        Hc.RANDOM,
        "Fill buf with len bytes from the host's cryptographic random source (at most "
        "256 per call; INVAL beyond).",
        _f("buf", "u32", "in", "guest address of len writable bytes"),
        _f("len", "u32", "in", "bytes wanted, at most 256"),
    ),
)

NET_MTU: Final = 1514
NET_MIN_FRAME: Final = 60
NET_MAX_BATCH: Final = 64
CONSOLE_MAX_WRITE: Final = 65536
CONSOLE_MAX_READ: Final = 65536
MEM_R: Final = 1
MEM_W: Final = 2
MEM_X: Final = 4
MEM_DISCARD: Final = 8
TLS_FIRST_ENTRY: Final = 6
"""First GDT index of the thread-local-storage descriptors (as on Linux i386)."""
TLS_ENTRIES: Final = 3
TLS_F_PAGES: Final = 1
TLS_F_EMPTY: Final = 2
RANDOM_MAX: Final = 256
DISK_BLOCK_SIZE: Final = 4096
"""Disks are read and written in whole blocks of this many bytes."""
DISK_MAX_BLOCKS: Final = 256
"""Most blocks one DISK_READ or DISK_WRITE may carry (1 MiB)."""
DISK_QUEUE: Final = 32
"""Requests a disk holds (submitted, not yet completed) before it answers FULL."""
DISK_NAME_MAX: Final = 31
"""Longest disk name in bytes (the DISK_INFO name field holds it and a NUL)."""
DISK_MAX_DISKS: Final = 16
"""Most disks one VM may have."""
DISK_PENDING: Final = 0xFFFF_FFFF
"""A request's 'status' while the kernel still owns it."""
DISK_F_READONLY: Final = 1
"""DISK_INFO flag: the disk refuses writes (INVAL)."""

CHILD_MAX: Final = 16
"""Most live children one VM may have."""
CHILD_QUEUE: Final = 2 * CHILD_MAX
"""Capacity of a VM's child-event queue: a child has at most one waiting event and one
exit event queued at a time, so the queue never overflows."""
CHILD_EVENT_ARGS: Final = 64
"""Bytes of a hypercall's argument structure copied into a CHILD_EVENT message."""
CHILD_MEMORY_MAX: Final = 1 << 20
"""Most bytes one CHILD_MEMORY or CHILD_REPLY copies."""
CHILD_IMAGE_MAX: Final = 64 << 20
"""Largest child image CHILD_CREATE accepts."""
CHILD_F_DISK_RO: Final = 1
"""CHILD_CREATE flag: the disks passed down are read-only for the child."""
CHILD_F_NIC: Final = 2
"""CHILD_CREATE flag: the child gets a NIC on its parent's LAN (the parent must have one)."""
CHILD_OP_START: Final = 1
CHILD_OP_STOP: Final = 2
CHILD_OP_RESUME: Final = 3
CHILD_OP_DESTROY: Final = 4
CHILD_MEM_READ: Final = 0
CHILD_MEM_WRITE: Final = 1
CHILD_I_FAULT: Final = 1
"""CHILD_INTERPOSE flag: the child's faults come as CHILD_EV_FAULT messages."""
CHILD_EV_HYPERCALL: Final = 1
CHILD_EV_FAULT: Final = 2
CHILD_EV_EXIT: Final = 3
CHILD_PASS: Final = 0
CHILD_ANSWER: Final = 1
CHILD_RESUME: Final = 2
CHILD_KILL: Final = 3
CHILD_END_EXITED: Final = 0
"""CHILD_EV_EXIT nr: the child called TERMINATE (status has its exit status)."""
CHILD_END_FAULTED: Final = 1
"""CHILD_EV_EXIT nr: the child faulted (eip, address, vector say where)."""
CHILD_END_KILLED: Final = 2
"""CHILD_EV_EXIT nr: destroyed (by this VM, or by its own monitor)."""
CHILD_END_FAILED: Final = 3
"""CHILD_EV_EXIT nr: a kernel error stopped it."""

HYPERCALL_BY_NR: Final = {h.nr: h for h in HYPERCALLS}

for _s in (VREGS, IOVEC, *(h.args for h in HYPERCALLS)):
    _s.offsets()  # validates alignment at import
assert VREGS.size <= CMDLINE_OFFSET
