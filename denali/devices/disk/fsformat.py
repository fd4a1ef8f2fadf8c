"""DNLFS: the small read-only file system that ``denali disk pack`` writes and guestos reads.

Layout, in 4096-byte blocks (every integer little-endian; ``docs/disk-format.md`` is the
full description, ``guestos/fs/fs.c`` the guest reader)::

    block 0                     superblock (SUPERBLOCK, then its CRC-32)
    blocks 1 .. 1+D-1           directory: file_count entries of 128 bytes (ENTRY)
    blocks data_start ..        file contents, each file contiguous from a block boundary,
                                in directory order; the rest of the image is free

Entries are sorted by path (bytewise) and paths are unique, relative, '/'-separated,
without empty, '.' or '..' components, at most ``PATH_MAX`` bytes. An empty file has
first_block 0. Checksums are CRC-32 (IEEE, as ``zlib.crc32``): of the superblock, of the
directory, and of each file's contents.

This module only encodes and decodes bytes; ``denali.devices.disk.tools`` does the file I/O.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

from denali.devices.disk.base import BLOCK
from denali.errors import DiskError

MAGIC: Final = b"DENALIFS"
VERSION: Final = 1
SUPERBLOCK: Final = struct.Struct("<8sIIQQIIQQII32s16s")
"""magic, version, block_size, total_blocks, dir_start, dir_blocks, file_count, data_start,
data_blocks, dir_crc32, flags, label, uuid."""
_CRC: Final = struct.Struct("<I")
ENTRY: Final = struct.Struct("<96sQQIIQ")
"""path (NUL-padded), first_block, size, crc32, mode, mtime."""
PATH_MAX: Final = 95
LABEL_MAX: Final = 31
MAX_FILES: Final = 65536

assert ENTRY.size == 128
assert SUPERBLOCK.size + _CRC.size <= BLOCK


@dataclass(frozen=True)
class Entry:
    """One file of a DNLFS image."""

    path: str
    first_block: int
    size: int
    crc32: int
    mode: int = 0o644
    mtime: int = 0

    @property
    def blocks(self) -> int:
        return (self.size + BLOCK - 1) // BLOCK


@dataclass(frozen=True)
class Superblock:
    """The decoded superblock of a DNLFS image."""

    total_blocks: int
    dir_start: int
    dir_blocks: int
    file_count: int
    data_start: int
    data_blocks: int
    dir_crc32: int
    label: str
    uuid: bytes


def check_path(path: str) -> bytes:
    """The encoded form of a file path, or ``DiskError`` if it cannot be stored."""
    raw = path.encode("utf-8")
    parts = path.split("/")
    if not raw or len(raw) > PATH_MAX or b"\0" in raw or any(p in ("", ".", "..") for p in parts):
        raise DiskError(
            f"cannot store path {path!r}: paths are 1-{PATH_MAX} bytes, relative, "
            "without empty, '.' or '..' components",
            path,
        )
    return raw


def dir_blocks_for(file_count: int) -> int:
    return max(1, (file_count * ENTRY.size + BLOCK - 1) // BLOCK)


def layout(files: list[tuple[str, int]]) -> tuple[int, int, list[tuple[str, int, int]]]:
    """Place files (path, size), sorted by path: (dir_blocks, data_start, [(path, first, size)])."""
    files = sorted(files, key=lambda f: f[0].encode("utf-8"))
    if len(files) > MAX_FILES:
        raise DiskError(f"{len(files)} files: at most {MAX_FILES} fit in a DNLFS image")
    seen: set[str] = set()
    for path, _size in files:
        check_path(path)
        if path in seen:
            raise DiskError(f"duplicate path {path!r}", path)
        seen.add(path)
    dir_blocks = dir_blocks_for(len(files))
    data_start = 1 + dir_blocks
    nxt = data_start
    placed = []
    for path, size in files:
        if size == 0:
            placed.append((path, 0, 0))
            continue
        placed.append((path, nxt, size))
        nxt += (size + BLOCK - 1) // BLOCK
    return dir_blocks, data_start, placed


def encode_directory(entries: list[Entry]) -> bytes:
    """The directory table, padded to whole blocks."""
    out = bytearray()
    for e in entries:
        out += ENTRY.pack(check_path(e.path), e.first_block, e.size, e.crc32, e.mode, e.mtime)
    pad = dir_blocks_for(len(entries)) * BLOCK - len(out)
    return bytes(out) + bytes(pad)


def encode_superblock(
    total_blocks: int, entries: list[Entry], directory: bytes, label: str, uuid: bytes
) -> bytes:
    """The 4096-byte superblock for ``entries`` whose encoded directory is ``directory``."""
    raw_label = label.encode("utf-8")
    if len(raw_label) > LABEL_MAX or b"\0" in raw_label:
        raise DiskError(f"label {label!r} is longer than {LABEL_MAX} bytes or has a NUL")
    dir_blocks = dir_blocks_for(len(entries))
    data_start = 1 + dir_blocks
    data_end = max((e.first_block + e.blocks for e in entries if e.size), default=data_start)
    sb = SUPERBLOCK.pack(
        MAGIC,
        VERSION,
        BLOCK,
        total_blocks,
        1,
        dir_blocks,
        len(entries),
        data_start,
        data_end - data_start,
        zlib.crc32(directory[: len(entries) * ENTRY.size]),
        0,
        raw_label,
        uuid,
    )
    sb += _CRC.pack(zlib.crc32(sb))
    return sb + bytes(BLOCK - len(sb))


def is_blank(block0: bytes) -> bool:
    """True when block 0 is all zeros (a disk never formatted)."""
    return not any(block0)


def decode_superblock(path: str, block0: bytes, image_blocks: int) -> Superblock:
    """Validate and decode a superblock; ``DiskError`` naming what is wrong."""
    if len(block0) < SUPERBLOCK.size + _CRC.size:
        raise DiskError(f"{path}: truncated (no superblock)", path)
    (
        magic,
        version,
        block_size,
        total,
        dir_start,
        dir_blocks,
        count,
        data_start,
        data_blocks,
        dir_crc,
        _flags,
        label,
        uuid,
    ) = SUPERBLOCK.unpack_from(block0)
    if magic != MAGIC:
        raise DiskError(f"{path}: not a DNLFS file-system image (bad magic)", path)
    if version != VERSION:
        raise DiskError(f"{path}: DNLFS version {version} is not supported (expected {VERSION})", path)
    (crc,) = _CRC.unpack_from(block0, SUPERBLOCK.size)
    if crc != zlib.crc32(block0[: SUPERBLOCK.size]):
        raise DiskError(f"{path}: superblock is corrupt (checksum mismatch)", path)
    if (
        block_size != BLOCK
        or dir_start != 1
        or count > MAX_FILES
        or dir_blocks != dir_blocks_for(count)
        or data_start != 1 + dir_blocks
        or data_start + data_blocks > total
    ):
        raise DiskError(f"{path}: superblock is corrupt (inconsistent layout)", path)
    if total != image_blocks:
        raise DiskError(
            f"{path}: the file system spans {total} blocks but the image has "
            f"{image_blocks} (truncated or resized)",
            path,
        )
    return Superblock(
        total,
        dir_start,
        dir_blocks,
        count,
        data_start,
        data_blocks,
        dir_crc,
        label.rstrip(b"\0").decode("utf-8", "replace"),
        uuid,
    )


def decode_directory(path: str, sb: Superblock, raw: bytes) -> list[Entry]:
    """Validate and decode the directory table (``raw`` = its blocks)."""
    table = raw[: sb.file_count * ENTRY.size]
    if len(table) != sb.file_count * ENTRY.size:
        raise DiskError(f"{path}: truncated directory", path)
    if zlib.crc32(table) != sb.dir_crc32:
        raise DiskError(f"{path}: directory is corrupt (checksum mismatch)", path)
    entries = []
    prev: bytes | None = None
    data_end = sb.data_start + sb.data_blocks
    nxt = sb.data_start
    for i in range(sb.file_count):
        name, first, size, crc, mode, mtime = ENTRY.unpack_from(table, i * ENTRY.size)
        raw_path = name.split(b"\0", 1)[0]
        if len(raw_path) == len(name) or any(name[len(raw_path) :]):
            raise DiskError(f"{path}: directory entry {i} has an unterminated path", path)
        try:
            text = raw_path.decode("utf-8")
            check_path(text)
        except (UnicodeDecodeError, DiskError):
            raise DiskError(f"{path}: directory entry {i} has an invalid path {raw_path!r}", path) from None
        if prev is not None and raw_path <= prev:
            raise DiskError(f"{path}: directory is not sorted or has duplicates at {text!r}", path)
        prev = raw_path
        e = Entry(text, first, size, crc, mode, mtime)
        if size == 0:
            if first != 0:
                raise DiskError(f"{path}: empty file {text!r} has a data block", path)
        elif first != nxt or first + e.blocks > data_end:
            raise DiskError(
                f"{path}: file {text!r} lies outside the data area or overlaps another (corrupt directory)",
                path,
            )
        else:
            nxt = first + e.blocks
        entries.append(e)
    if nxt != data_end:
        raise DiskError(f"{path}: data area size disagrees with the directory (corrupt)", path)
    return entries
