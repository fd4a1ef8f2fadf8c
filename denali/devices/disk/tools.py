"""Disk image tools: create a blank image, pack a directory into a DNLFS image, list one.

Coroutines doing all their file I/O through ``aiofiles``; ``denali.cli.disk`` runs them.
Outputs are built under a temporary name and renamed into place, so a failed or
interrupted run never leaves a half-written image behind. Every malformed input raises
``DiskError`` with the file and the problem; nothing is repaired.
"""

from __future__ import annotations

import os
import stat
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiofiles
import aiofiles.os
from aiofiles.threadpool.binary import AsyncBufferedIOBase, AsyncBufferedReader

from denali.devices.disk import fsformat, overlay
from denali.devices.disk.base import BLOCK, MAX_DISK_BYTES, check_disk_size, open_checked
from denali.devices.disk.fsformat import Entry, Superblock
from denali.errors import DiskError

_CHUNK: Final = 1 << 20

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` (bytes) after every chunk a long operation moves."""


def _tmp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def _refuse_existing(path: str, force: bool) -> None:
    if not force and await aiofiles.os.path.exists(path):
        raise DiskError(f"{path}: already exists (use --force to replace it)", path)


async def _discard(tmp: str) -> None:
    try:
        await aiofiles.os.unlink(tmp)
    except OSError:
        pass


def _check_size(path: str, size: int) -> None:
    if size <= 0 or size % BLOCK or size > MAX_DISK_BYTES:
        raise DiskError(
            f"{path}: size {size} must be a positive multiple of {BLOCK} bytes, at most {MAX_DISK_BYTES}",
            path,
        )


async def create_image(path: str, size: int, force: bool = False) -> None:
    """Create a blank (all-zero, sparse) disk image of ``size`` bytes at ``path``."""
    _check_size(path, size)
    await _refuse_existing(path, force)
    tmp = _tmp_name(path)
    try:
        async with aiofiles.open(tmp, "xb") as f:
            await f.truncate(size)
        await aiofiles.os.replace(tmp, path)
    except OSError as exc:
        await _discard(tmp)
        raise DiskError(f"{path}: cannot create image: {exc.strerror or exc}", path) from None


@dataclass(frozen=True)
class _Source:
    path: str
    host: str
    size: int
    mode: int
    mtime: int


async def _collect(root: str, rel: str, out: list[_Source]) -> None:
    where = os.path.join(root, rel) if rel else root
    for name in sorted(await aiofiles.os.listdir(where)):
        host = os.path.join(where, name)
        inner = f"{rel}/{name}" if rel else name
        lst = await aiofiles.os.stat(host, follow_symlinks=False)
        if stat.S_ISLNK(lst.st_mode):
            try:
                st = await aiofiles.os.stat(host)
            except OSError:
                raise DiskError(f"{host}: dangling symbolic link", host) from None
            if not stat.S_ISREG(st.st_mode):
                raise DiskError(f"{host}: symbolic link to a non-file is not packed", host)
        else:
            st = lst
        if stat.S_ISDIR(st.st_mode):
            await _collect(root, inner, out)
        elif stat.S_ISREG(st.st_mode):
            fsformat.check_path(inner)
            out.append(_Source(inner, host, st.st_size, stat.S_IMODE(st.st_mode), int(st.st_mtime)))
        else:
            raise DiskError(f"{host}: only regular files and directories can be packed", host)


async def pack_directory(
    directory: str,
    image: str,
    size: int | None = None,
    label: str = "",
    force: bool = False,
    progress: ProgressFn | None = None,
) -> list[Entry]:
    """Pack every regular file under ``directory`` into a new DNLFS image at ``image``.

    ``size`` (bytes) defaults to the smallest image that holds the files; a larger one
    leaves free blocks at the end. ``progress(done, total)`` is called with the file
    bytes copied so far after every chunk. Returns the directory entries written.
    """
    if not await aiofiles.os.path.isdir(directory):
        raise DiskError(f"{directory}: not a directory", directory)
    sources: list[_Source] = []
    try:
        await _collect(directory, "", sources)
    except OSError as exc:
        raise DiskError(f"{directory}: cannot read: {exc}", directory) from None
    by_path = {s.path: s for s in sources}
    _dir_blocks, data_start, placed = fsformat.layout([(s.path, s.size) for s in sources])
    end = max((first + (sz + BLOCK - 1) // BLOCK for _p, first, sz in placed if sz), default=data_start)
    need = end * BLOCK
    if size is None:
        size = need
    _check_size(image, size)
    if size < need:
        raise DiskError(f"{image}: the files need {need} bytes, more than --size {size}", image)
    await _refuse_existing(image, force)
    tmp = _tmp_name(image)
    entries: list[Entry] = []
    total = sum(s.size for s in sources)
    moved = [0]

    def copied(n: int) -> None:
        moved[0] += n
        if progress is not None:
            progress(moved[0], total)

    try:
        async with aiofiles.open(tmp, "xb") as out:
            await out.truncate(size)
            for path, first, sz in placed:
                src = by_path[path]
                crc = 0
                if sz:
                    await out.seek(first * BLOCK)
                    crc = await _copy(src, out, copied)
                entries.append(Entry(path, first, sz, crc, src.mode, src.mtime))
            directory_raw = fsformat.encode_directory(entries)
            sb = fsformat.encode_superblock(size // BLOCK, entries, directory_raw, label, uuid.uuid4().bytes)
            await out.seek(0)
            await out.write(sb)
            await out.write(directory_raw)
            await out.flush()
        await aiofiles.os.replace(tmp, image)
    except OSError as exc:
        await _discard(tmp)
        raise DiskError(f"{image}: cannot write image: {exc}", image) from None
    except BaseException:
        await _discard(tmp)
        raise
    return entries


async def _copy(src: _Source, out: AsyncBufferedIOBase, copied: Callable[[int], None]) -> int:
    crc = 0
    got = 0
    async with aiofiles.open(src.host, "rb") as f:
        while True:
            chunk = await f.read(min(_CHUNK, src.size - got + 1))
            if not chunk:
                break
            got += len(chunk)
            if got > src.size:
                break
            crc = zlib.crc32(chunk, crc)
            await out.write(chunk)
            copied(len(chunk))
    if got != src.size:
        raise DiskError(f"{src.host}: file changed size while being packed", src.host)
    return crc


@dataclass(frozen=True)
class Listing:
    """What ``list_image`` found: a DNLFS image, a blank disk, or a kept overlay."""

    kind: str
    """"dnlfs", "blank" or "overlay"."""
    size: int
    superblock: Superblock | None = None
    entries: tuple[Entry, ...] = ()
    overlay_base_size: int = 0
    overlay_base_sha256: bytes = b""
    overlay_blocks_held: int = 0


async def list_image(image: str, verify: bool = False, progress: ProgressFn | None = None) -> Listing:
    """Read and validate ``image``; with ``verify`` also check every file's CRC-32
    (``progress(done, total)``: file bytes checked so far, after every chunk).

    A blank (all-zero block 0) image is reported as such; a kept overlay is recognised
    and described. Raises ``DiskError`` for anything truncated or corrupt.
    """
    fd, st = await open_checked(image, os.O_RDONLY)
    try:
        async with aiofiles.open(fd, "rb") as f:
            block0 = await f.read(BLOCK)
            if block0[: len(overlay.MAGIC)] == overlay.MAGIC:
                base_size, _h, digest, held = await overlay.inspect(image)
                return Listing(
                    "overlay",
                    st.st_size,
                    overlay_base_size=base_size,
                    overlay_base_sha256=digest,
                    overlay_blocks_held=held,
                )
            blocks = check_disk_size(image, st.st_size)
            if fsformat.is_blank(block0):
                return Listing("blank", st.st_size)
            sb = fsformat.decode_superblock(image, block0, blocks)
            raw = await f.read(sb.dir_blocks * BLOCK)
            entries = fsformat.decode_directory(image, sb, raw)
            if verify:
                total = sum(e.size for e in entries)
                done = [0]

                def checked(n: int) -> None:
                    done[0] += n
                    if progress is not None:
                        progress(done[0], total)

                for e in entries:
                    await _verify(image, f, e, checked)
            return Listing("dnlfs", st.st_size, sb, tuple(entries))
    except OSError as exc:
        raise DiskError(f"{image}: cannot read: {exc.strerror or exc}", image) from None


async def _verify(image: str, f: AsyncBufferedReader, e: Entry, checked: Callable[[int], None]) -> None:
    await f.seek(e.first_block * BLOCK)
    left = e.size
    crc = 0
    while left:
        chunk = await f.read(min(_CHUNK, left))
        if not chunk:
            raise DiskError(f"{image}: {e.path} is truncated", image)
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
        checked(len(chunk))
    if crc != e.crc32:
        raise DiskError(
            f"{image}: {e.path} is corrupt (CRC-32 {crc:08x}, directory says {e.crc32:08x})", image
        )


def format_listing(image: str, listing: Listing) -> list[str]:
    """Human-readable lines for ``denali disk ls``."""
    mib = listing.size / (1 << 20)
    if listing.kind == "overlay":
        return [
            f"{image}: overlay, {listing.size} bytes (sparse)",
            f"base: {listing.overlay_base_size} bytes, SHA-256 {listing.overlay_base_sha256.hex()}",
            f"blocks written: {listing.overlay_blocks_held}",
        ]
    if listing.kind == "blank":
        return [
            f"{image}: {listing.size} bytes ({mib:.1f} MiB), {listing.size // BLOCK} blocks, "
            "no file system (blank)"
        ]
    sb = listing.superblock
    assert sb is not None
    lines = [
        f"{image}: DNLFS, {listing.size} bytes ({mib:.1f} MiB), {sb.total_blocks} blocks, "
        f"{sb.file_count} files, {sb.data_blocks} data blocks" + (f", label {sb.label!r}" if sb.label else "")
    ]
    for e in listing.entries:
        lines.append(f"{e.size:12d}  {e.crc32:08x}  {oct(e.mode)[2:]:>4}  {e.path}")
    return lines
