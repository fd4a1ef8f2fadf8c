"""Mutated guest images (3,000, seeded): the loader answers each with an Image or an
ImageError, nothing else, and quickly; what it accepts keeps the loader's promises and
boots without a kernel error.

Mutations start from the real built images and from small hand-built ones: random byte
flips, ELF and program header fields set to edge values, truncation, insertion and
deletion. Every accepted image is checked against what ``parse_image`` guarantees (no
writable and executable segment, segments inside the image area on pages of their own,
the entry in an executable segment); a sample of them is booted.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from pathlib import Path

import pytest

from denali import abi
from denali.errors import GuestFault, ImageError, VmKilledError
from denali.images import builtin_images
from denali.kernel import Kernel
from denali.loader import Image, load_image, parse_image
from denali.memory import PROT_W, PROT_X
from tests.elfmaker import PF_R, PF_W, PF_X, Elf, Seg

MUTANTS = 3000
EDGES = (
    0,
    1,
    2,
    0x34,
    0x1000,
    0xFFF,
    0x10000,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xBFFF_F000,
    0xC000_0000,
    0xFFFF_F000,
    0xFFFF_FFFF,
)


def seeds() -> list[bytes]:
    imgs = builtin_images()
    for name in ("hello", "test-spin", "test-hostile"):
        if name not in imgs:
            pytest.fail(f"guest image {name!r} is not built")
    real = [imgs[n].read_bytes() for n in ("hello", "test-spin", "test-hostile")]
    small = [
        Elf().build(),
        Elf(
            segments=[
                Seg(0x10000, b"\x90" * 32 + b"\xf4", PF_R | PF_X),
                Seg(0x11000, b"data", PF_R | PF_W, memsz=0x3000),
            ]
        ).build(),
    ]
    return real + small


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    if not b:
        return rng.randbytes(rng.randint(0, 64))
    kind = rng.randrange(6)
    if kind == 2 and len(b) < 0x2E:
        kind = 0
    if kind == 0:  # byte flips
        for _ in range(rng.randint(1, 16)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:  # an ELF header field
        off, size = rng.choice(
            (
                (0x18, 4),
                (0x1C, 4),
                (0x20, 4),
                (0x2A, 2),
                (0x2C, 2),
                (0x2E, 2),
                (0x30, 2),
                (0x32, 2),
                (0x10, 2),
                (0x12, 2),
                (4, 1),
                (5, 1),
            )
        )
        _put(b, off, size, rng.choice(EDGES) if rng.randrange(3) else rng.randrange(1 << (8 * size)))
    elif kind == 2:  # a program header field
        phoff, phnum = struct.unpack_from("<I", b, 0x1C)[0], struct.unpack_from("<H", b, 0x2C)[0]
        i = rng.randrange(max(phnum, 1) + 1)
        field = rng.randrange(8)
        at = phoff + 32 * i + 4 * field
        if at + 4 <= len(b):
            _put(b, at, 4, rng.choice(EDGES) if rng.randrange(3) else rng.getrandbits(32))
    elif kind == 3:  # truncation
        del b[rng.randrange(len(b)) :]
    elif kind == 4:  # insertion
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.randint(1, 64))
    else:  # deletion
        at = rng.randrange(len(b))
        del b[at : at + rng.randint(1, 64)]
    return bytes(b)


def _put(b: bytearray, off: int, size: int, value: int) -> None:
    if off + size <= len(b):
        b[off : off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def check_promises(img: Image) -> None:
    """What parse_image guarantees of every image it returns."""
    prev_end = abi.Layout.IMAGE_BASE
    for s in img.segments:
        assert not (s.prot & PROT_W and s.prot & PROT_X)
        assert abi.Layout.IMAGE_BASE <= s.vaddr and s.vaddr + s.memsz <= abi.MAX_MEMORY
        assert s.page_start >= prev_end and len(s.data) <= s.memsz
        prev_end = s.page_end
    assert any(s.prot & PROT_X and s.vaddr <= img.entry < s.vaddr + s.memsz for s in img.segments)


async def test_mutated_images_give_an_image_or_an_image_error(tmp_path: Path) -> None:
    rng = random.Random(20_02)
    originals = seeds()
    accepted: list[Image] = []
    refused = 0
    slowest = 0.0
    for i in range(MUTANTS):
        data = mutate(rng, rng.choice(originals))
        if rng.randrange(2):  # a second mutation half of the time
            data = mutate(rng, data)
        t0 = time.monotonic()
        try:
            if i % 10 == 0:  # through the file path too
                path = tmp_path / f"m{i}.elf"
                path.write_bytes(data)
                img = load_image(str(path), f"m{i}")
            else:
                img = parse_image(data, f"mutant-{i}.elf", f"m{i}")
        except ImageError as exc:
            assert "\n" not in str(exc), exc
            refused += 1
        else:  # anything but ImageError propagates: the test fails with the traceback
            check_promises(img)
            accepted.append(img)
        slowest = max(slowest, time.monotonic() - t0)
    assert refused + len(accepted) == MUTANTS
    assert refused > MUTANTS // 4 and accepted, (refused, len(accepted))  # the mutations bite
    assert slowest < 2.0, f"one image took {slowest:.2f} s to refuse"  # no hang
    # A sample of what was accepted boots: it ends, faults or is stopped; never a kernel error.
    async with Kernel(slice_us=1000) as k:
        vms = []
        for img in accepted[:60]:
            try:
                vms.append(await k.spawn(img, memory=max(abi.MIN_MEMORY, _mib(img.min_memory())), nic=False))
            except ImageError:
                pass  # does not fit its memory: refused like any bad image
        for vm in vms:
            asyncio.get_running_loop().call_later(0.05, vm.kill)
            try:
                await vm.wait()
            except (GuestFault, VmKilledError):
                pass
    assert vms


def _mib(n: int) -> int:
    return (n + (1 << 20) - 1) & ~((1 << 20) - 1)
