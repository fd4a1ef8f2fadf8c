"""Parse and validate ELF32 i386 guest images (pyelftools), once per image file, and
static i386 Linux programs (``parse_linux_program``: what ``denali.linux`` runs).

An ``Image`` is immutable and shared by every VM booted from it: its segments are read
once, and each spawn only copies them into fresh guest memory. Every problem is an
``ImageError`` that names the file and the problem; nothing here trusts the file.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import struct
from dataclasses import dataclass
from typing import Final

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from denali import abi
from denali.errors import ImageError
from denali.memory import PROT_R, PROT_W, PROT_X, Region

MAX_IMAGE_FILE: Final = 64 * 1024 * 1024
"""Largest image file accepted, in bytes."""
_EM_386: Final = "EM_386"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """A loadable segment: ``data`` goes at ``vaddr``; the rest up to ``memsz`` is zero."""

    vaddr: int
    memsz: int
    data: bytes
    prot: int

    @property
    def page_start(self) -> int:
        return self.vaddr & ~(abi.PAGE_SIZE - 1)

    @property
    def page_end(self) -> int:
        return (self.vaddr + self.memsz + abi.PAGE_SIZE - 1) & ~(abi.PAGE_SIZE - 1)


@dataclass(frozen=True)
class Image:
    """A validated guest image.

    ``regions``, ``heap`` and ``fixed_memory`` are for images composed for one memory
    size with a page map of their own (a personality and its program, ``denali.linux``):
    ``regions`` replaces the default layout, ``heap`` is the heap range the register page
    announces, and a VM of any other size is refused.
    """

    name: str
    path: str
    entry: int
    segments: tuple[Segment, ...]
    regions: tuple[Region, ...] = ()
    heap: tuple[int, int] = (0, 0)
    fixed_memory: int = 0

    @property
    def end(self) -> int:
        """First page-aligned address after every segment."""
        return max(s.page_end for s in self.segments)

    def min_memory(self) -> int:
        """Smallest guest memory this image fits in (image, one heap page, guard, stack)."""
        return self.end + abi.PAGE_SIZE + abi.PAGE_SIZE + abi.STACK_SIZE

    def check_fits(self, mem_size: int) -> None:
        """Raise ``ImageError`` unless the image fits a VM of ``mem_size`` bytes. When the
        image would fit but for where it is linked (gcc's default for Linux programs is
        0x08048000), the message says so and how to link a guest."""
        if self.fixed_memory:
            if mem_size != self.fixed_memory:
                raise ImageError(
                    f"{self.path}: image was composed for {self.fixed_memory} bytes "
                    f"of guest memory, the VM has {mem_size}"
                )
            return
        need = self.min_memory()
        if need <= mem_size:
            return
        base = int(abi.Layout.IMAGE_BASE)
        low = min(s.page_start for s in self.segments)
        if low - base > self.end - low:  # the gap below the image costs more than the image
            what = " (gcc's default for Linux programs)" if low == _GNU_LD_BASE else ""
            raise ImageError(
                f"{self.path}: linked at 0x{low:08x}{what}, so it needs {_mib(need)} of "
                f"guest memory, the VM has {_mib(mem_size)}: link guests at 0x{base:x} "
                "with 'denali cc' or the guest SDK's denali.ld (docs/sdk.md); a static "
                "Linux program runs with 'denali linux' (docs/linux.md)"
            )
        raise ImageError(
            f"{self.path}: image needs at least {need} bytes ({_mib(need)}) "
            f"of guest memory, the VM has {mem_size} ({_mib(mem_size)})"
        )


_GNU_LD_BASE: Final = 0x08048000
"""Where GNU ld links an i386 Linux executable by default."""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n % (1 << 20) else f"{n >> 20} MiB"


def _prot(flags: int) -> int:
    prot = PROT_R
    if flags & P_FLAGS.PF_W:
        prot |= PROT_W
    if flags & P_FLAGS.PF_X:
        prot |= PROT_X
    return prot


def parse_image(data: bytes, path: str, name: str | None = None) -> Image:
    """Validate ELF bytes and return the ``Image``; raises ``ImageError``."""
    name = name or os.path.splitext(os.path.basename(path))[0]
    if data[:4] != b"\x7fELF":
        raise ImageError(f"{path}: not an ELF file")
    if len(data) < 52:
        raise ImageError(f"{path}: truncated ELF header ({len(data)} bytes)")
    if data[4] != 1:
        raise ImageError(f"{path}: ELF class {data[4]} is not ELFCLASS32 (a 32-bit image is required)")
    if data[5] != 1:
        raise ImageError(f"{path}: not little-endian")
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf["e_machine"]
        etype = elf["e_type"]
        entry = int(elf["e_entry"])
        segments = []
        for ph in elf.iter_segments():
            if ph["p_type"] != "PT_LOAD" or ph["p_memsz"] == 0:
                continue
            off, filesz, memsz = int(ph["p_offset"]), int(ph["p_filesz"]), int(ph["p_memsz"])
            vaddr, flags = int(ph["p_vaddr"]), int(ph["p_flags"])
            if off + filesz > len(data):
                raise ImageError(
                    f"{path}: truncated: segment at 0x{vaddr:x} needs file bytes "
                    f"up to {off + filesz}, file has {len(data)}"
                )
            if filesz > memsz:
                raise ImageError(f"{path}: segment at 0x{vaddr:x} has filesz > memsz")
            segments.append(Segment(vaddr, memsz, data[off : off + filesz], _prot(flags)))
    except ImageError:
        raise
    except (ELFError, ValueError, KeyError, IndexError, OSError, AssertionError) as exc:
        raise ImageError(f"{path}: malformed or truncated ELF: {exc}") from None
    except Exception as exc:  # pyelftools raises construct errors on truncated headers
        log.debug("%s: ELF parser raised %r", path, exc, exc_info=exc)
        raise ImageError(f"{path}: malformed or truncated ELF: {type(exc).__name__}: {exc}") from None
    if machine != _EM_386:
        raise ImageError(f"{path}: machine {machine} is not EM_386 (i386)")
    if etype != "ET_EXEC":
        hint = (
            "; it is position-independent: build guests with 'denali cc' (docs/sdk.md)"
            if etype == "ET_DYN"
            else ""
        )
        raise ImageError(f"{path}: type {etype} is not ET_EXEC (a statically linked executable){hint}")
    if not segments:
        raise ImageError(f"{path}: no loadable segments")
    segments.sort(key=lambda s: s.vaddr)
    prev_end = int(abi.Layout.IMAGE_BASE)
    for s in segments:
        if s.prot & PROT_W and s.prot & PROT_X:
            raise ImageError(f"{path}: segment at 0x{s.vaddr:x} is writable and executable")
        if s.vaddr < abi.Layout.IMAGE_BASE or s.vaddr + s.memsz > abi.MAX_MEMORY:
            raise ImageError(
                f"{path}: segment 0x{s.vaddr:x}+0x{s.memsz:x} is outside the "
                f"guest image area [0x{abi.Layout.IMAGE_BASE:x}, 0x{abi.MAX_MEMORY:x})"
            )
        if s.page_start < prev_end:
            raise ImageError(
                f"{path}: segment at 0x{s.vaddr:x} shares a page with the previous "
                "one (each segment must start on its own page)"
            )
        prev_end = s.page_end
    if not any(s.prot & PROT_X and s.vaddr <= entry < s.vaddr + s.memsz for s in segments):
        raise ImageError(f"{path}: entry point 0x{entry:x} is not in an executable segment")
    log.debug("%s: entry 0x%x, %d segments", path, entry, len(segments))
    return Image(name, path, entry, tuple(segments))


def load_image(path: str, name: str | None = None) -> Image:
    """Read and validate the image file at ``path``; raises ``ImageError``.

    Anything but a regular file (a FIFO, a device, a directory) is refused before it is
    opened: opening a FIFO would wait for a writer for ever.
    """
    return parse_image(_read_elf(path, "image"), path, name)


def _read_elf(path: str, what: str) -> bytes:
    """The bytes of the regular file at ``path`` (at most ``MAX_IMAGE_FILE``); ``what``
    names it in errors ("image", "program")."""
    article = "an" if what[0] in "aeiou" else "a"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{path}: not a regular file ({article} {what} must be an ELF file)")
        if st.st_size > MAX_IMAGE_FILE:
            raise ImageError(f"{path}: {what} file is {st.st_size} bytes, larger than {MAX_IMAGE_FILE}")
        # O_NONBLOCK: a path swapped for a FIFO after the check still cannot block
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError(f"{path}: not a regular file ({article} {what} must be an ELF file)")
            return f.read(MAX_IMAGE_FILE + 1)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


# ---- Linux programs (pre-virtualization, denali.linux) ----

LINUX_BASE: Final = 0x0100_0000
"""Lowest address a Linux program's segment may occupy: below it lives its personality."""
_PT_LOAD: Final = 1
_PT_INTERP: Final = 3
_PT_TLS: Final = 7
_PT_GNU_STACK: Final = 0x6474E551


@dataclass(frozen=True)
class LinuxProgram:
    """A validated static i386 Linux executable (ET_EXEC, no interpreter).

    ``segments`` are its PT_LOAD segments in address order, each loaded from its file
    offset's page start (as Linux maps them, so the ELF and program headers are visible
    at ``phdr`` when the first segment covers them). ``tls`` is the PT_TLS segment's
    (vaddr, filesz, memsz, align), or None.
    """

    path: str
    name: str
    entry: int
    phdr: int
    phnum: int
    phentsize: int
    segments: tuple[Segment, ...]
    tls: tuple[int, int, int, int] | None

    @property
    def end(self) -> int:
        """First page-aligned address after every segment (where the brk heap starts)."""
        return max(s.page_end for s in self.segments)


def parse_linux_program(data: bytes, path: str) -> LinuxProgram:
    """Validate a static i386 Linux ELF; raises ``ImageError`` naming the file and problem.

    Accepted: ELF32 little-endian EM_386 ET_EXEC without PT_INTERP, PT_LOAD segments at
    or above ``LINUX_BASE`` (Linux links at 0x08048000), page-aligned as Linux requires
    (p_vaddr and p_offset equal modulo 4096), each on pages of its own, never writable
    and executable, the entry point in an executable segment. PT_TLS is recorded; an
    executable stack (PT_GNU_STACK with X) is refused.
    """
    name = os.path.basename(path)
    if data[:4] != b"\x7fELF":
        raise ImageError(f"{path}: not an ELF file")
    if len(data) < 52:
        raise ImageError(f"{path}: truncated ELF header ({len(data)} bytes)")
    if data[4] != 1:
        raise ImageError(f"{path}: ELF class {data[4]} is not ELFCLASS32 (an i386 program is required)")
    if data[5] != 1:
        raise ImageError(f"{path}: not little-endian")
    etype, machine = struct.unpack_from("<HH", data, 16)
    entry, phoff = struct.unpack_from("<II", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    if machine != 3:
        raise ImageError(f"{path}: machine {machine} is not EM_386 (i386)")
    if (
        1 <= phnum <= 64
        and phentsize == 32
        and phoff + phnum * 32 <= len(data)
        and any(struct.unpack_from("<I", data, phoff + 32 * i)[0] == _PT_INTERP for i in range(phnum))
    ):
        raise ImageError(
            f"{path}: dynamically linked (has an interpreter); only static programs run (gcc -m32 -static)"
        )
    if etype == 3:
        raise ImageError(f"{path}: position-independent (ET_DYN); link it with -static -no-pie")
    if etype != 2:
        raise ImageError(f"{path}: ELF type {etype} is not ET_EXEC (a statically linked executable)")
    if phentsize != 32 or not 1 <= phnum <= 64 or phoff + phnum * 32 > len(data):
        raise ImageError(f"{path}: malformed or truncated program headers")
    page = abi.PAGE_SIZE
    tls = None
    segments: list[Segment] = []
    phdr = 0
    for i in range(phnum):
        ptype, off, vaddr, _pa, filesz, memsz, flags, align = struct.unpack_from("<8I", data, phoff + 32 * i)
        if ptype == _PT_INTERP:
            raise ImageError(
                f"{path}: dynamically linked (has an interpreter); only static "
                "programs run (gcc -m32 -static)"
            )
        if ptype == _PT_TLS:
            tls = (vaddr, filesz, memsz, align)
        if ptype == _PT_GNU_STACK and flags & P_FLAGS.PF_X:
            raise ImageError(
                f"{path}: asks for an executable stack (PT_GNU_STACK RWX); denali "
                "never maps memory writable and executable"
            )
        if ptype != _PT_LOAD or memsz == 0:
            continue
        if off + filesz > len(data):
            raise ImageError(
                f"{path}: truncated: segment at 0x{vaddr:x} needs file bytes "
                f"up to {off + filesz}, file has {len(data)}"
            )
        if filesz > memsz:
            raise ImageError(f"{path}: segment at 0x{vaddr:x} has filesz > memsz")
        if (vaddr - off) % page:
            raise ImageError(
                f"{path}: segment at 0x{vaddr:x} is not page-aligned with its file offset 0x{off:x}"
            )
        lead = vaddr % page  # Linux maps from the page start: the bytes before vaddr too
        if off - lead <= phoff and phoff + phnum * 32 <= off + filesz:
            phdr = vaddr + phoff - off  # this segment maps the program headers (AT_PHDR)
        segments.append(Segment(vaddr - lead, memsz + lead, data[off - lead : off + filesz], _prot(flags)))
    if not segments:
        raise ImageError(f"{path}: no loadable segments")
    segments.sort(key=lambda s: s.vaddr)
    prev_end = LINUX_BASE
    for seg in segments:
        if seg.prot & PROT_W and seg.prot & PROT_X:
            raise ImageError(f"{path}: segment at 0x{seg.vaddr:x} is writable and executable")
        if seg.vaddr < LINUX_BASE or seg.vaddr + seg.memsz > abi.MAX_MEMORY:
            raise ImageError(
                f"{path}: segment 0x{seg.vaddr:x}+0x{seg.memsz:x} is outside "
                f"[0x{LINUX_BASE:x}, 0x{abi.MAX_MEMORY:x}), where Linux programs load"
            )
        if seg.page_start < prev_end:
            raise ImageError(
                f"{path}: segment at 0x{seg.vaddr:x} shares a page with the previous "
                "one (each segment must start on its own page)"
            )
        prev_end = seg.page_end
    if not any(s.prot & PROT_X and s.vaddr <= entry < s.vaddr + s.memsz for s in segments):
        raise ImageError(f"{path}: entry point 0x{entry:x} is not in an executable segment")
    if not phdr:
        raise ImageError(f"{path}: no loadable segment maps the program headers (AT_PHDR)")
    return LinuxProgram(path, name, entry, phdr, phnum, phentsize, tuple(segments), tls)


def load_linux_program(path: str) -> LinuxProgram:
    """Read and validate a static Linux program at ``path``; raises ``ImageError``
    (anything but a regular file is refused before it is opened, as by ``load_image``)."""
    return parse_linux_program(_read_elf(path, "program"), path)
