"""Build small ELF32 files byte by byte, for loader tests (valid and deliberately broken)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PF_X, PF_W, PF_R = 1, 2, 4


@dataclass
class Seg:
    vaddr: int
    data: bytes
    flags: int
    memsz: int | None = None


@dataclass
class Elf:
    entry: int = 0x10000
    segments: list[Seg] = field(default_factory=lambda: [Seg(0x10000, b"\xf4" * 16, PF_R | PF_X)])
    ei_class: int = 1
    machine: int = 3  # EM_386
    etype: int = 2  # ET_EXEC

    def build(self) -> bytes:
        ehsize, phentsize = 52, 32
        phoff = ehsize
        data_off = phoff + phentsize * len(self.segments)
        data_off = (data_off + 0xFFF) & ~0xFFF
        phdrs = b""
        blobs = b""
        for s in self.segments:
            off = data_off + len(blobs)
            memsz = s.memsz if s.memsz is not None else len(s.data)
            phdrs += struct.pack("<IIIIIIII", 1, off, s.vaddr, s.vaddr, len(s.data), memsz, s.flags, 0x1000)
            blobs += s.data + b"\0" * ((-len(s.data)) % 0x1000)
        ident = b"\x7fELF" + bytes([self.ei_class, 1, 1]) + bytes(9)
        hdr = ident + struct.pack(
            "<HHIIIIIHHHHHH",
            self.etype,
            self.machine,
            1,
            self.entry,
            phoff,
            0,
            0,
            ehsize,
            phentsize,
            len(self.segments),
            40,
            0,
            0,
        )
        out = hdr + phdrs
        return out + b"\0" * (data_off - len(out)) + blobs
