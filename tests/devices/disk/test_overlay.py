"""Backends and overlays: copy-on-write isolation, keep/discard, mismatch and damage refused."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from denali.devices.disk import DiskSpec, aio
from denali.devices.disk import overlay as O
from denali.devices.disk.backend import Backend, OverlayBackend, open_backend
from denali.errors import DiskError
from tests.devices.disk.conftest import (
    BLOCK,
    fd_count,
    make_image,
    names_in,
    pattern,
    read_at,
    sparse_file,
    write_at,
)

N = 40  # blocks in the test base: bitmap fits in one block


async def opened(spec: DiskSpec) -> Backend:
    return await open_backend(spec)


async def test_overlays_isolate_vms_and_never_touch_the_base(tmp_path: Path, overlay_dir: Path) -> None:
    base = make_image(tmp_path / "base.img", N, seed=7)
    before = base.read_bytes()
    a = await opened(DiskSpec(str(base), mode="overlay-discard", overlay_dir=str(overlay_dir)))
    b = await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(tmp_path / "b.ovl")))
    try:
        await a.write(3, pattern(1, 2))
        await b.write(4, pattern(2, 1))
        assert await a.read(0, N) == before[: 3 * BLOCK] + pattern(1, 2) + before[5 * BLOCK :]
        assert await b.read(0, N) == before[: 4 * BLOCK] + pattern(2, 1) + before[5 * BLOCK :]
        # runs that cross overlay/base boundaries
        assert (
            await a.read(2, 4)
            == before[2 * BLOCK : 3 * BLOCK] + pattern(1, 2) + before[5 * BLOCK : 6 * BLOCK]
        )
        assert base.read_bytes() == before
        await a.flush()
        await b.flush()
    finally:
        await a.close()
        await b.close()
    assert base.read_bytes() == before
    assert names_in(overlay_dir) == []  # the throwaway overlay was unlinked at once


async def test_kept_overlay_persists_and_discarded_vanishes(tmp_path: Path, overlay_dir: Path) -> None:
    base = make_image(tmp_path / "base.img", N)
    ovl = tmp_path / "vm.ovl"
    keep = DiskSpec(str(base), mode="overlay-keep", overlay=str(ovl))
    discard = DiskSpec(str(base), mode="overlay-discard", overlay_dir=str(overlay_dir))
    for spec in (keep, discard):
        be = await opened(spec)
        await be.write(N - 1, pattern(9, 1))
        await be.close()
    assert ovl.stat().st_size == (2 + N) * BLOCK
    assert ovl.stat().st_blocks * 512 <= 4 * BLOCK  # sparse: header, bitmap, one block
    be = await opened(keep)
    try:
        assert await be.read(N - 1, 1) == pattern(9, 1)
        assert isinstance(be, OverlayBackend) and be.overlay.blocks_held() == 1
    finally:
        await be.close()
    be = await opened(discard)
    try:
        assert await be.read(N - 1, 1) == bytes(BLOCK)
    finally:
        await be.close()
    assert names_in(overlay_dir) == []
    assert base.read_bytes() == bytes(N * BLOCK)


async def test_flush_is_durable_without_a_clean_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = make_image(tmp_path / "base.img", N, seed=1)
    ovl = tmp_path / "vm.ovl"
    synced: list[int] = []
    real_fsync = aio.fsync

    async def counting_fsync(fd: int) -> None:
        synced.append(fd)
        await real_fsync(fd)

    monkeypatch.setattr(aio, "fsync", counting_fsync)
    be = await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(ovl)))
    try:
        await be.write(5, pattern(3, 3))
        synced.clear()
        await be.flush()
        assert len(synced) == 1
        # what is on disk now, as if the host died here: a copy taken before any close
        shutil.copyfile(ovl, tmp_path / "crash.ovl")
        await be.write(20, pattern(4, 1))  # not flushed: may be lost
    finally:
        await be.close()
    crashed = await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(tmp_path / "crash.ovl")))
    try:
        assert await crashed.read(5, 3) == pattern(3, 3)
        assert await crashed.read(20, 1) == pattern(1, 21)[20 * BLOCK :]
    finally:
        await crashed.close()


async def test_rw_disk_writes_the_image_and_flush_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = make_image(tmp_path / "rw.img", N)
    synced: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    be = await opened(DiskSpec(str(img), mode="rw"))
    try:
        await be.write(1, pattern(5, 2))
        await be.flush()
        assert synced
        assert read_at(img, BLOCK, 2 * BLOCK) == pattern(5, 2)  # a separate open sees it
    finally:
        await be.close()


async def test_read_only_disk(tmp_path: Path) -> None:
    img = make_image(tmp_path / "ro.img", N, seed=2)
    be = await opened(DiskSpec(str(img), mode="ro"))
    try:
        assert be.readonly
        with pytest.raises(OSError):
            await be.write(0, bytes(BLOCK))
        assert await be.read(N - 2, 2) == pattern(2, N)[(N - 2) * BLOCK :]
        await be.flush()
    finally:
        await be.close()


async def test_sharing_and_exclusive_locks(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img", N)
    ovl = str(tmp_path / "o.ovl")
    readers = [await opened(DiskSpec(str(img), mode="ro")) for _ in range(3)]
    try:
        with pytest.raises(DiskError, match="in use"):
            await opened(DiskSpec(str(img), mode="rw"))
        k = await opened(DiskSpec(str(img), mode="overlay-keep", overlay=ovl))
        try:
            with pytest.raises(DiskError, match="in use by another VM"):
                await opened(DiskSpec(str(img), mode="overlay-keep", overlay=ovl))
        finally:
            await k.close()
    finally:
        for r in readers:
            await r.close()
    rw = await opened(DiskSpec(str(img), mode="rw"))
    try:
        with pytest.raises(DiskError, match="in use read-write"):
            await opened(DiskSpec(str(img), mode="ro"))
        with pytest.raises(DiskError, match="in use"):
            await opened(DiskSpec(str(img), mode="rw"))
    finally:
        await rw.close()


async def test_concurrent_opens_share_one_descriptor(tmp_path: Path) -> None:
    img = make_image(tmp_path / "img", N, seed=3)
    before = fd_count()
    bes = await asyncio.gather(*(opened(DiskSpec(str(img), mode="ro")) for _ in range(20)))
    assert fd_count() - before == 1
    reads = await asyncio.gather(*(be.read(i % N, 1) for i, be in enumerate(bes)))
    for i, data in enumerate(reads):
        assert data == pattern(3, N)[(i % N) * BLOCK : (i % N + 1) * BLOCK]
    for be in bes:
        await be.close()
    assert fd_count() == before


@pytest.mark.parametrize("bad", ["missing", "empty", "odd-size", "directory"])
async def test_bad_base_images(tmp_path: Path, bad: str) -> None:
    p = tmp_path / "bad.img"
    if bad == "empty":
        p.write_bytes(b"")
    elif bad == "odd-size":
        p.write_bytes(bytes(BLOCK + 1))
    elif bad == "directory":
        p.mkdir()
    for mode in ("ro", "rw", "overlay-discard", "overlay-keep"):
        with pytest.raises(DiskError, match=str(p)):
            await opened(DiskSpec(str(p), mode=mode))
    assert not (tmp_path / "bad.img.overlay").exists()


async def _kept(tmp_path: Path, base: Path) -> Path:
    ovl = tmp_path / "k.ovl"
    be = await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(ovl)))
    await be.write(2, pattern(8, 1))
    await be.close()
    return ovl


async def test_mismatched_overlay_is_refused(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.img", N, seed=1)
    ovl = await _kept(tmp_path, base)
    kept = ovl.read_bytes()
    other = make_image(tmp_path / "other.img", N, seed=2)  # same size, other contents
    with pytest.raises(DiskError, match="made for another base image"):
        await opened(DiskSpec(str(other), mode="overlay-keep", overlay=str(ovl)))
    bigger = make_image(tmp_path / "bigger.img", N + 1, seed=1)
    with pytest.raises(DiskError, match=f"base image of {N * BLOCK} bytes"):
        await opened(DiskSpec(str(bigger), mode="overlay-keep", overlay=str(ovl)))
    # the base edited in place after the overlay was made
    write_at(base, 7 * BLOCK, b"edited")
    with pytest.raises(DiskError, match="made for another base image"):
        await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(ovl)))
    assert ovl.read_bytes() == kept  # never "repaired"


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("truncate", "expected"),
        ("truncate-header", "truncated"),
        ("empty", "truncated"),
        ("magic", "not a denali overlay"),
        ("header-bit", "header is corrupt"),
        ("version", "version 2 is not supported"),
        ("bitmap-past-end", "bitmap is corrupt"),
        ("extended", "expected"),
    ],
)
async def test_damaged_overlay_is_refused(tmp_path: Path, damage: str, match: str) -> None:
    base = make_image(tmp_path / "base.img", N, seed=1)
    ovl = await _kept(tmp_path, base)
    raw = bytearray(ovl.read_bytes())
    if damage == "truncate":
        raw = raw[:-BLOCK]
    elif damage == "truncate-header":
        raw = raw[:50]
    elif damage == "empty":
        raw = bytearray()
    elif damage == "magic":
        raw[0] ^= 0xFF
    elif damage == "header-bit":
        raw[17] ^= 1
    elif damage == "version":
        raw[8:12] = struct.pack("<I", 2)
        raw[O.HEADER.size : O.HEADER.size + 4] = struct.pack("<I", zlib.crc32(raw[: O.HEADER.size]))
    elif damage == "bitmap-past-end":
        raw[BLOCK + N // 8] |= 0x80
    else:
        raw += bytes(BLOCK)
    ovl.write_bytes(bytes(raw))
    with pytest.raises(DiskError, match=match):
        await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(ovl)))
    assert ovl.read_bytes() == raw


async def test_overlay_of_itself_and_unwritable_places(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.img", N)
    with pytest.raises(DiskError, match="base image itself"):
        await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(base)))
    with pytest.raises(DiskError, match="cannot create overlay"):
        await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(tmp_path / "no/such/dir.ovl")))
    with pytest.raises(DiskError, match="throwaway overlay"):
        await opened(DiskSpec(str(base), mode="overlay-discard", overlay_dir=str(tmp_path / "nodir")))


async def test_big_base_bitmap_spans_blocks(tmp_path: Path) -> None:
    n = 32768 * 2 + 5  # three bitmap blocks
    base = sparse_file(tmp_path / "big.img", n * BLOCK)
    ovl = tmp_path / "big.ovl"
    be = await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(ovl)))
    await be.write(n - 1, pattern(1, 1))
    await be.write(32768, pattern(2, 1))
    await be.close()
    assert O.header_blocks_for(n) == 4
    assert ovl.stat().st_size == (4 + n) * BLOCK
    be = await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(ovl)))
    try:
        assert await be.read(n - 1, 1) == pattern(1, 1)
        assert await be.read(32767, 2) == bytes(BLOCK) + pattern(2, 1)
    finally:
        await be.close()


async def test_files_cut_under_a_running_disk_fail_its_io(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.img", N, seed=1)
    ovl = tmp_path / "o.ovl"
    be = await opened(DiskSpec(str(base), mode="overlay-keep", overlay=str(ovl)))
    try:
        await be.write(1, pattern(2, 1))
        os.truncate(ovl, BLOCK)
        with pytest.raises(OSError, match="truncated"):
            await be.read(1, 1)
        with pytest.raises(OSError, match="truncated"):
            await be.write(3, pattern(2, 1))
        with pytest.raises(OSError, match="truncated"):
            await be.flush()
    finally:
        with pytest.raises(DiskError, match="bitmap not saved"):
            await be.close()
    rw_img = make_image(tmp_path / "rw.img", N)
    rw = await opened(DiskSpec(str(rw_img), mode="rw"))
    try:
        os.unlink(rw_img)
        with pytest.raises(OSError, match="removed"):
            await rw.write(0, bytes(BLOCK))
        with pytest.raises(OSError, match="removed"):
            await rw.flush()
    finally:
        await rw.close()
    ro = await opened(DiskSpec(str(base), mode="ro"))
    try:
        os.truncate(base, 10 * BLOCK)
        with pytest.raises(OSError):
            await ro.read(20, 1)
        with pytest.raises(OSError, match="truncated"):
            await ro.read(0, 1)
    finally:
        await ro.close()


async def test_inspect_and_ls_describe_a_kept_overlay(tmp_path: Path) -> None:
    from denali.devices.disk import list_image

    base = make_image(tmp_path / "base.img", N, seed=1)
    ovl = await _kept(tmp_path, base)
    listing = await list_image(str(ovl))
    assert listing.kind == "overlay"
    assert listing.overlay_base_size == N * BLOCK
    assert listing.overlay_blocks_held == 1
    import hashlib

    assert listing.overlay_base_sha256 == hashlib.sha256(base.read_bytes()).digest()
