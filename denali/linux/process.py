"""A Linux process image for a VM: the personality, the program, and its initial stack.

``compose`` builds one ``Image`` that holds, in one guest address space of a fixed size:

    0x00010000  the personality (guestos image "linux"): text, rodata, data+bss
    ...         the personality's heap (its stack is in its bss)
    0x01000000  LINUX_BASE: from here up everything belongs to the program
    0x08048000  the program's segments, as Linux maps them (R, R-X, R, RW)
    ...         brk heap (grows up), mmap area (grows down), both made by the personality
    top - 8 MiB the program's stack area; argc, argv, envp, the aux vector and the
                strings at its top, laid out as Linux's execve lays them out

The image is the same for every VM that runs the same program with the same arguments
and memory size, so ``--count 1000`` composes it once. What differs per VM (the network
address, the clock epoch) goes on the command line (``cmdline``); the personality fills
AT_RANDOM and AT_HWCAP in place at boot.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from denali import abi
from denali.errors import ConfigError, ImageError
from denali.images import resolve
from denali.loader import LINUX_BASE, Image, LinuxProgram, Segment
from denali.memory import PROT_R, PROT_RW, PROT_RX, Region

PERSONALITY: Final = "linux"
"""The built-in guestos image that serves the program's system calls."""
DEFAULT_MEMORY: Final = 512 << 20
"""Default guest memory of a Linux VM (sparse: untouched pages cost nothing)."""
STACK_AREA: Final = 8 << 20
"""The program's stack area at the top of memory (Linux's default RLIMIT_STACK)."""
MAX_ARGS_BYTES: Final = 1 << 20
"""Most bytes of argument and environment strings (with their pointers)."""
PAGE: Final = abi.PAGE_SIZE

AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY = 0, 3, 4, 5, 6, 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN = 23, 25, 26, 31


@dataclass(frozen=True)
class ProcessImage:
    """A composed image plus what the personality must be told on the command line."""

    image: Image
    entry: int
    sp: int
    brk: int
    stack_lo: int
    auxv: int

    def cmdline(
        self,
        *,
        epoch_ns: int,
        cwd: str | None = None,
        extra: str = "",
        trace: bool = False,
        report: bool = False,
    ) -> str:
        """The command line for one VM: the personality's keys, then ``extra``
        (``ip=... gw=...`` for the guest network stack)."""
        parts = [
            f"lx.entry=0x{self.entry:x}",
            f"lx.sp=0x{self.sp:x}",
            f"lx.brk=0x{self.brk:x}",
            f"lx.stack=0x{self.stack_lo:x}",
            f"lx.auxv=0x{self.auxv:x}",
            f"lx.epoch={epoch_ns // 1_000_000_000}",
            f"lx.epoch_ns={epoch_ns % 1_000_000_000}",
        ]
        if cwd:
            if " " in cwd or len(cwd) > 255:
                raise ConfigError(f"working directory {cwd!r}: no spaces, at most 255 bytes")
            parts.append(f"lx.cwd={cwd}")
        if trace:
            parts.append("lx.trace=1")
        if report:
            parts.append("lx.report=1")
        text = " ".join(parts)
        if extra:
            text += " " + extra
        if len(text) > abi.CMDLINE_MAX:
            raise ConfigError(f"command line of {len(text)} bytes is longer than {abi.CMDLINE_MAX}")
        return text


def _initial_stack(
    top: int, prog: LinuxProgram, argv: Sequence[bytes], envp: Sequence[bytes], execfn: bytes
) -> tuple[bytes, int, int]:
    """The bytes of the initial stack ending at ``top``: (data, sp, auxv address)."""
    strings = bytearray()
    offsets: list[int] = []

    def add(s: bytes) -> int:
        off = len(strings)
        strings.extend(s + b"\0")
        return off

    for s in (*argv, *envp):
        if b"\0" in s:
            raise ConfigError(f"argument or environment string {s[:40]!r} contains a NUL byte")
        offsets.append(add(s))
    fn_off = add(execfn)
    plat_off = add(b"i686")
    rand_off = len(strings)
    strings.extend(os.urandom(16))  # the personality overwrites these at boot
    strings.extend(bytes(4))  # end marker
    str_base = (top - len(strings)) & ~0xF
    aux = [
        (AT_PHDR, prog.phdr),
        (AT_PHENT, prog.phentsize),
        (AT_PHNUM, prog.phnum),
        (AT_PAGESZ, PAGE),
        (AT_BASE, 0),
        (AT_FLAGS, 0),
        (AT_ENTRY, prog.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_PLATFORM, str_base + plat_off),
        (AT_HWCAP, 0),
        (AT_CLKTCK, 100),
        (AT_SECURE, 0),
        (AT_RANDOM, str_base + rand_off),
        (AT_HWCAP2, 0),
        (AT_EXECFN, str_base + fn_off),
        (AT_NULL, 0),
    ]
    words = [len(argv)]
    words += [str_base + o for o in offsets[: len(argv)]] + [0]
    words += [str_base + o for o in offsets[len(argv) :]] + [0]
    auxv_index = len(words)
    for k, v in aux:
        words += [k, v]
    table = struct.pack(f"<{len(words)}I", *words)
    sp = (str_base - len(table)) & ~0xF
    if top - sp > MAX_ARGS_BYTES:
        raise ConfigError(
            f"arguments and environment take {top - sp} bytes; at most {MAX_ARGS_BYTES} fit the initial stack"
        )
    data = bytearray(top - sp)
    data[0 : len(table)] = table
    data[str_base - sp : str_base - sp + len(strings)] = strings
    return bytes(data), sp, sp + auxv_index * 4


def compose(
    prog: LinuxProgram,
    argv: Sequence[str | bytes],
    env: Mapping[str, str] | Sequence[str],
    memory: int = DEFAULT_MEMORY,
) -> ProcessImage:
    """The VM image that runs ``prog`` with ``argv`` and ``env`` in ``memory`` bytes.

    Raises ``ConfigError`` (bad arguments, too little memory) or ``ImageError`` (the
    personality is not built)."""
    pers = resolve(PERSONALITY)
    if pers.end > LINUX_BASE - 2 * PAGE:
        raise ImageError(f"{pers.path}: the personality does not fit below 0x{LINUX_BASE:x}")
    if memory % PAGE or memory > abi.MAX_MEMORY:
        raise ConfigError(f"memory size {memory} is not a multiple of {PAGE} up to {abi.MAX_MEMORY}")
    stack_lo = memory - STACK_AREA
    if prog.end + 16 * PAGE > stack_lo:
        raise ConfigError(
            f"{prog.path}: the program ends at 0x{prog.end:x}; with its "
            f"{STACK_AREA >> 20} MiB stack it needs more than {memory >> 20} MiB of "
            "guest memory (--memory)"
        )
    args = [a.encode() if isinstance(a, str) else a for a in argv]
    if not args:
        raise ConfigError("a program needs at least argv[0]")
    if isinstance(env, Mapping):
        envs = [f"{k}={v}".encode() for k, v in env.items()]
    else:
        envs = [e.encode() for e in env]
    data, sp, auxv = _initial_stack(memory, prog, args, envs, args[0])
    regions = [
        Region(abi.Layout.VREGS, abi.Layout.VREGS + PAGE, PROT_RW, "vregs"),
        Region(abi.Layout.KERNEL_PAGE, abi.Layout.KERNEL_PAGE + PAGE, PROT_RX, "kernel"),
    ]
    segments: list[Segment] = []
    for i, seg in enumerate(pers.segments):
        regions.append(Region(seg.page_start, seg.page_end, seg.prot, f"personality{i}"))
        segments.append(seg)
    heap = (pers.end, LINUX_BASE - PAGE)
    regions.append(Region(heap[0], heap[1], PROT_RW, "personality-heap"))
    for i, seg in enumerate(prog.segments):
        regions.append(Region(seg.page_start, seg.page_end, seg.prot, f"program{i}"))
        segments.append(seg)
    regions.append(Region(stack_lo, memory, PROT_RW, "program-stack"))
    segments.append(Segment(sp, len(data), data, PROT_RW))
    for r in regions:  # the program's segments are all R at least
        if r.prot & PROT_R == 0:
            raise ImageError(f"{prog.path}: a segment without read permission")
    image = Image(prog.name, prog.path, pers.entry, tuple(segments), tuple(regions), heap, memory)
    return ProcessImage(image, prog.entry, sp, prog.end, stack_lo, auxv)
