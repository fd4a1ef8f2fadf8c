"""Corrupted kept overlays (500, seeded): each is refused with one DiskError line or, when
the damage is of a kind the format cannot see, opened and read back consistently.

The format's promises (docs/disk-format.md): the header is checksummed and records the
base's size and SHA-256, so any damage to it, and an overlay of the wrong size, made for
another base, or with bitmap bits past the end of the disk, is refused; the bitmap has
no checksum by design (bits only go from 0 to 1, so a crash leaves each bit valid), and
data blocks are the guest's bytes: damage to those is not detectable and is read back as
it is. So: header damage must always be refused; no corruption may raise anything but
DiskError, read outside the disk, change the base, or leave a descriptor open.
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

import pytest

from denali.devices.disk import DiskSpec, list_image
from denali.devices.disk import overlay as O
from denali.devices.disk.backend import open_backend
from denali.devices.disk.base import open_base_count
from denali.errors import DiskError
from tests.devices.disk.conftest import BLOCK, fd_count, pattern

N = 100  # blocks of the base: one bitmap block, 100 bits used
MUTANTS = 500
WRITTEN = (0, 7, 8, 50, 99)


async def make_overlay(base: Path, ov: Path) -> bytes:
    """A kept overlay over ``base`` holding WRITTEN, as bytes."""
    b = await open_backend(DiskSpec(str(base), mode="overlay-keep", overlay=str(ov)))
    try:
        for blk in WRITTEN:
            await b.write(blk, pattern(1000 + blk, 1))
        await b.flush()
    finally:
        await b.close()
    return contents(ov)


def contents(path: Path) -> bytes:
    return path.read_bytes()  # small local files: blocking is fine, outside the coroutine


def resign(raw: bytearray) -> None:
    raw[O.HEADER.size : O.HEADER_USED] = struct.pack("<I", zlib.crc32(bytes(raw[: O.HEADER.size])))


def corrupt(rng: random.Random, good: bytes) -> tuple[bytes, bool]:
    """A damaged copy of ``good``; True when the format must refuse it."""
    raw = bytearray(good)
    kind = rng.randrange(7)
    if kind == 0:  # header bytes the checksum covers
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(O.HEADER_USED)
            raw[at] ^= rng.randrange(1, 256)
        return bytes(raw), raw[: O.HEADER_USED] != good[: O.HEADER_USED]
    if kind == 1:  # a header field changed and the checksum recomputed: consistent but wrong
        fields = list(O.HEADER.unpack_from(raw))
        i = rng.randrange(len(fields))
        if i == 0:
            fields[0] = rng.randbytes(8)
        elif i == 7:
            fields[7] = rng.randbytes(32)
        else:
            fields[i] = rng.choice(
                (0, 1, fields[i] + 1, fields[i] - 1, 1 << 31, (1 << 32) - 1, fields[i] * 2)
            ) & ((1 << (64 if i in (3, 4) else 32)) - 1)
        raw[: O.HEADER.size] = O.HEADER.pack(*fields)
        resign(raw)
        changed = raw[: O.HEADER.size] != good[: O.HEADER.size]
        flags_only = i == 6  # flags: no meaning yet, not checked
        return bytes(raw), changed and not flags_only
    if kind == 2:  # truncated or extended
        size = rng.choice(
            (
                0,
                1,
                BLOCK - 1,
                BLOCK,
                2 * BLOCK - 1,
                len(raw) - 1,
                len(raw) + 1,
                len(raw) + BLOCK,
                rng.randrange(len(raw)),
            )
        )
        out = bytes(raw[:size]) if size <= len(raw) else bytes(raw) + bytes(size - len(raw))
        return out, True
    if kind == 3:  # bitmap bits past the end of the disk
        at = BLOCK + N // 8 + rng.randrange(BLOCK - N // 8)
        raw[at] |= 1 << rng.randrange(8) if at > BLOCK + N // 8 else 0x80
        return bytes(raw), True
    if kind == 4:  # bitmap bits within the disk: undetectable by design
        at = BLOCK + rng.randrange(N // 8)
        raw[at] ^= 1 << rng.randrange(8)
        return bytes(raw), False
    if kind == 5:  # data blocks: the guest's bytes, undetectable
        for _ in range(rng.randint(1, 20)):
            at = 2 * BLOCK + rng.randrange(len(raw) - 2 * BLOCK)
            raw[at] = rng.randrange(256)
        return bytes(raw), False
    raw[O.HEADER_USED + rng.randrange(BLOCK - O.HEADER_USED)] ^= 0xFF  # the unused rest of block 0
    return bytes(raw), False


async def test_corrupted_overlays_are_refused_or_read_consistently(tmp_path: Path) -> None:
    rng = random.Random(3333)
    base = tmp_path / "base.img"
    base.write_bytes(pattern(1, N))
    ov = tmp_path / "vm.ovl"
    good = await make_overlay(base, ov)
    base_bytes = base.read_bytes()
    fds = fd_count()
    outcomes = {"refused": 0, "opened": 0}
    for _ in range(MUTANTS):
        data, must_refuse = corrupt(rng, good)
        ov.write_bytes(data)
        for probe in (list_image(str(ov)), O.inspect(str(ov))):  # denali disk ls
            try:
                await probe
            except DiskError as exc:
                assert "\n" not in str(exc)
        try:
            b = await open_backend(DiskSpec(str(base), mode="overlay-keep", overlay=str(ov)))
        except DiskError as exc:
            assert exc.path == str(ov) and "\n" not in str(exc), exc
            outcomes["refused"] += 1
            continue
        assert not must_refuse, "a damaged header or size was accepted"
        outcomes["opened"] += 1
        try:
            assert isinstance(b, type(b)) and b.blocks == N
            disk = await b.read(0, N)
            assert len(disk) == N * BLOCK
            overlay = b.overlay  # type: ignore[attr-defined]
            for blk in range(N):
                got = disk[blk * BLOCK : (blk + 1) * BLOCK]
                if not overlay.has(blk):
                    assert got == base_bytes[blk * BLOCK : (blk + 1) * BLOCK], blk
                else:  # from the overlay's own data area: what the file holds there
                    at = overlay.data_offset(blk)
                    assert got == data[at : at + BLOCK], blk
            await b.write(3, pattern(7, 1))
            assert await b.read(3, 1) == pattern(7, 1)
        finally:
            await b.close()
    assert base.read_bytes() == base_bytes
    assert fd_count() == fds and open_base_count() == 0
    assert outcomes["refused"] > MUTANTS // 3 and outcomes["opened"] > MUTANTS // 5, outcomes


@pytest.mark.parametrize("field", ["base_size", "base_blocks", "header_blocks", "block_size"])
async def test_a_resigned_header_that_lies_about_sizes_is_refused(tmp_path: Path, field: str) -> None:
    base = tmp_path / "base.img"
    base.write_bytes(pattern(2, N))
    ov = tmp_path / "vm.ovl"
    raw = bytearray(await make_overlay(base, ov))
    names = ("magic", "version", "block_size", "base_size", "base_blocks", "header_blocks", "flags", "sha")
    fields = list(O.HEADER.unpack_from(raw))
    i = names.index(field)
    fields[i] = fields[i] * 4096 if field != "block_size" else 512
    raw[: O.HEADER.size] = O.HEADER.pack(*fields)
    resign(raw)
    ov.write_bytes(bytes(raw))
    with pytest.raises(DiskError, match="overlay"):
        await open_backend(DiskSpec(str(base), mode="overlay-keep", overlay=str(ov)))
    assert open_base_count() == 0
    os.unlink(ov)
