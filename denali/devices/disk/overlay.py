"""Copy-on-write overlays: the blocks one VM wrote over a shared base image.

File layout (all little-endian; full description in ``docs/disk-format.md``)::

    block 0                  header (HEADER, 76 bytes used, the rest zero)
    blocks 1 .. H-1          bitmap: bit i (byte i//8, bit i%8) set = block i is here
    block H + i              the VM's copy of block i (a hole until written)

``H = 1 + ceil(base_blocks / 32768)``. The file is always exactly ``(H + base_blocks) *
4096`` bytes long and sparse, so it costs only the blocks written; a shorter file is
truncated and refused. The header records the base's size and the SHA-256 of its
contents: an overlay opened over any other base is refused (``DiskError``), never
"repaired".

Crash safety: data blocks are written before their bitmap bits, and bits only go from
0 to 1, so after a crash every bit is either its old or its new value and both are
valid (an unflushed write may be lost, nothing else). That is also why the bitmap has
no checksum: a checksum over it could not be updated atomically with it.

A *discarded* overlay (``create_temporary``) has the same layout but no header on disk:
its file is unlinked the moment it is created and its bitmap lives only in memory.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import uuid
import zlib
from typing import Final

from denali.devices.disk import aio
from denali.devices.disk.base import BLOCK, BaseImage, open_checked
from denali.errors import DiskError

MAGIC: Final = b"DENALIOV"
VERSION: Final = 1
HEADER: Final = struct.Struct("<8sIIQQII32s")
"""magic, version, block_size, base_size, base_blocks, header_blocks, flags, base_sha256."""
_CRC: Final = struct.Struct("<I")
HEADER_USED: Final = HEADER.size + _CRC.size
_BITS_PER_BLOCK: Final = BLOCK * 8

log = logging.getLogger(__name__)


def header_blocks_for(base_blocks: int) -> int:
    """Blocks before the data area: the header block and the bitmap."""
    return 1 + (base_blocks + _BITS_PER_BLOCK - 1) // _BITS_PER_BLOCK


def encode_header(base_size: int, digest: bytes) -> bytes:
    """The 4096-byte header block of an overlay over a base of ``base_size`` bytes."""
    base_blocks = base_size // BLOCK
    head = HEADER.pack(
        MAGIC, VERSION, BLOCK, base_size, base_blocks, header_blocks_for(base_blocks), 0, digest
    )
    head += _CRC.pack(zlib.crc32(head))
    return head + bytes(BLOCK - len(head))


def check_header(path: str, block0: bytes, base_size: int, digest: bytes | None) -> int:
    """Validate an overlay's header block against its base; returns its header_blocks.

    ``digest`` None skips the identity check (used by ``inspect``). Raises ``DiskError``
    naming what is wrong: not an overlay, a version from elsewhere, a corrupt header, an
    overlay made for another base.
    """
    if len(block0) < HEADER_USED:
        raise DiskError(f"{path}: overlay is truncated (no complete header)", path)
    magic, version, block_size, o_size, o_blocks, hdr_blocks, _flags, o_digest = HEADER.unpack_from(block0)
    if magic != MAGIC:
        raise DiskError(f"{path}: not a denali overlay (bad magic)", path)
    if version != VERSION:
        raise DiskError(f"{path}: overlay version {version} is not supported (expected {VERSION})", path)
    (crc,) = _CRC.unpack_from(block0, HEADER.size)
    if crc != zlib.crc32(block0[: HEADER.size]):
        raise DiskError(f"{path}: overlay header is corrupt (checksum mismatch)", path)
    if (
        block_size != BLOCK
        or o_size != o_blocks * BLOCK
        or o_blocks == 0
        or hdr_blocks != header_blocks_for(o_blocks)
    ):
        raise DiskError(f"{path}: overlay header is corrupt (inconsistent sizes)", path)
    if o_size != base_size:
        raise DiskError(
            f"{path}: overlay was made for a base image of {o_size} bytes, but the base is {base_size} bytes",
            path,
        )
    if digest is not None and o_digest != digest:
        raise DiskError(
            f"{path}: overlay was made for another base image (base SHA-256 "
            f"{o_digest.hex()[:16]}..., this base {digest.hex()[:16]}...)",
            path,
        )
    return int(hdr_blocks)


class Overlay:
    """An open overlay: which blocks it holds and where. Use ``open_kept``/``create_temporary``.

    All methods that touch the bitmap run on the event loop; file I/O goes through
    ``denali.devices.disk.aio``. ``close()`` must only be called when no I/O on ``fd`` is in
    flight (the disk's worker guarantees it).
    """

    __slots__ = ("_bitmap", "_dirty", "base_blocks", "fd", "header_blocks", "kept", "path", "size")

    def __init__(self, fd: int, path: str, base_blocks: int, kept: bool, bitmap: bytearray | None) -> None:
        self.fd = fd
        self.path = path
        self.base_blocks = base_blocks
        self.header_blocks = header_blocks_for(base_blocks)
        self.size = (self.header_blocks + base_blocks) * BLOCK
        self.kept = kept
        self._bitmap = bitmap
        self._dirty: set[int] = set()

    # ---- the map ----
    def has(self, block: int) -> bool:
        bm = self._bitmap
        return bm is not None and bool(bm[block >> 3] >> (block & 7) & 1)

    def runs(self, block: int, count: int) -> list[tuple[bool, int, int]]:
        """Split [block, block+count) into maximal runs: (in_overlay, first, n)."""
        if self._bitmap is None:
            return [(False, block, count)]
        out: list[tuple[bool, int, int]] = []
        start = block
        here = self.has(block)
        for b in range(block + 1, block + count):
            h = self.has(b)
            if h != here:
                out.append((here, start, b - start))
                start, here = b, h
        out.append((here, start, block + count - start))
        return out

    def mark(self, block: int, count: int) -> None:
        """Record that [block, block+count) now lives in the overlay (after the data is written)."""
        bm = self._bitmap
        if bm is None:
            bm = self._bitmap = bytearray((self.base_blocks + 7) // 8)
        for b in range(block, block + count):
            bm[b >> 3] |= 1 << (b & 7)
        if self.kept:
            first = block // _BITS_PER_BLOCK
            last = (block + count - 1) // _BITS_PER_BLOCK
            self._dirty.update(range(first, last + 1))

    def blocks_held(self) -> int:
        """How many blocks the overlay holds (for ``denali disk`` and tests)."""
        bm = self._bitmap
        return 0 if bm is None else sum(bin(x).count("1") for x in bm)

    def data_offset(self, block: int) -> int:
        return (self.header_blocks + block) * BLOCK

    def check_intact(self) -> None:
        """Executor-side check: ``OSError`` if the file was truncated or (when kept) removed."""
        st = os.fstat(self.fd)
        if self.kept and st.st_nlink == 0:
            raise OSError(f"{self.path}: overlay was removed")
        if st.st_size < self.size:
            raise OSError(f"{self.path}: overlay was truncated to {st.st_size} bytes")

    # ---- persistence ----
    async def write_bitmap(self) -> None:
        """Write the bitmap blocks changed since the last call (kept overlays only)."""
        if not self.kept or not self._dirty or self._bitmap is None:
            return
        dirty = sorted(self._dirty)
        self._dirty.clear()
        bm = self._bitmap
        writes = []
        for i in dirty:
            chunk = bytes(bm[i * BLOCK : (i + 1) * BLOCK])
            writes.append((chunk, (1 + i) * BLOCK))
        try:
            await aio.run(_write_blocks, self, writes)
        except BaseException:
            self._dirty.update(dirty)
            raise

    async def flush(self) -> None:
        """Make every completed write durable: the bitmap, then ``fsync`` (kept overlays)."""
        if not self.kept:
            return
        await self.write_bitmap()
        await aio.fsync(self.fd)

    async def close(self) -> None:
        """Write the bitmap (kept) and close. If the bitmap cannot be written (the file was
        truncated or removed, EIO) the file is closed anyway and ``DiskError`` says so:
        the writes since the last flush are lost, as in a crash."""
        fd = self.fd
        if fd < 0:
            return
        try:
            await self.write_bitmap()
        except OSError as exc:
            log.warning(
                "%s: overlay bitmap not saved at close, the writes since the last flush are lost: %s",
                self.path,
                exc,
            )
            raise DiskError(f"{self.path}: overlay bitmap not saved: {exc}", self.path) from None
        finally:
            self.fd = -1
            await aio.close_fd(fd)


def _write_blocks(ov: Overlay, writes: list[tuple[bytes, int]]) -> None:
    ov.check_intact()
    for data, off in writes:
        aio.pwrite_all(ov.fd, data, off)


async def open_kept(path: str, base: BaseImage) -> Overlay:
    """Open the kept overlay at ``path`` over ``base``, creating it if it does not exist.

    The overlay is locked (``flock`` exclusive) for as long as it is open. Raises
    ``DiskError`` if it is in use, truncated, corrupt, or made for another base.
    """
    digest = await base.digest()
    try:
        fd, st = await open_checked(path, os.O_RDWR, "overlay", missing_ok=True)
    except FileNotFoundError:
        return await _create_kept(path, base, digest)
    try:
        if (st.st_dev, st.st_ino) == base.key:
            raise DiskError(f"{path}: the overlay is the base image itself", path)
        if not await aio.try_lock(fd, exclusive=True):
            raise DiskError(f"{path}: overlay is in use by another VM", path)
        block0 = await aio.pread(fd, BLOCK, 0)
        hdr_blocks = check_header(path, block0, base.size, digest)
        size = (hdr_blocks + base.blocks) * BLOCK
        if st.st_size != size:
            raise DiskError(
                f"{path}: overlay is {st.st_size} bytes, expected {size} (truncated or damaged)", path
            )
        raw = await aio.run(aio.pread_exact, fd, (hdr_blocks - 1) * BLOCK, BLOCK)
        nbytes = (base.blocks + 7) // 8
        if any(raw[nbytes:]) or (base.blocks % 8 and raw[nbytes - 1] >> (base.blocks % 8)):
            raise DiskError(f"{path}: overlay bitmap is corrupt (bits past the end of the disk)", path)
        bitmap = bytearray(raw[:nbytes]) if any(raw) else None
        return Overlay(fd, path, base.blocks, kept=True, bitmap=bitmap)
    except BaseException as exc:
        await aio.close_fd(fd)
        if isinstance(exc, OSError):
            raise DiskError(f"{path}: cannot read overlay: {exc}", path) from None
        raise


async def _create_kept(path: str, base: BaseImage, digest: bytes) -> Overlay:
    # Built under a temporary name, then linked into place (atomic, never clobbers).
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = await aio.open_fd(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise DiskError(f"{path}: cannot create overlay: {exc.strerror}", path) from None
    try:
        if not await aio.try_lock(fd, exclusive=True):
            raise DiskError(f"{path}: cannot lock new overlay", path)
        ov = Overlay(fd, path, base.blocks, kept=True, bitmap=None)
        await aio.run(aio.pwrite_all, fd, encode_header(base.size, digest), 0)
        await aio.ftruncate(fd, ov.size)
        await aio.fsync(fd)
        try:
            await aio.run(os.link, tmp, path)
        except FileExistsError:
            raise DiskError(f"{path}: overlay is in use by another VM (created concurrently)", path) from None
        log.info("%s: created a kept overlay over %s", path, base.path)
        return ov
    except BaseException as exc:
        await aio.close_fd(fd)
        if isinstance(exc, OSError):
            raise DiskError(f"{path}: cannot create overlay: {exc}", path) from None
        raise
    finally:
        try:
            await aio.unlink(tmp)
        except OSError:
            pass


async def create_temporary(directory: str | None, base: BaseImage) -> Overlay:
    """A throwaway overlay over ``base``: a sparse file in ``directory`` (default: the
    system temporary directory), unlinked at once, so it vanishes when closed."""
    where = directory if directory is not None else tempfile.gettempdir()
    path = os.path.join(where, f"denali-overlay-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        fd = await aio.open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise DiskError(f"{where}: cannot create a throwaway overlay: {exc.strerror}", where) from None
    try:
        await aio.unlink(path)
        ov = Overlay(fd, path, base.blocks, kept=False, bitmap=None)
        await aio.ftruncate(fd, ov.size)
        return ov
    except BaseException as exc:
        await aio.close_fd(fd)
        if isinstance(exc, OSError):
            raise DiskError(f"{where}: cannot create a throwaway overlay: {exc}", where) from None
        raise


async def inspect(path: str) -> tuple[int, int, bytes, int]:
    """Read a kept overlay without a base: (base_size, header_blocks, base_sha256, blocks held).

    Raises ``DiskError`` if it is not a valid overlay.
    """
    fd, _st = await open_checked(path, os.O_RDONLY, "overlay")
    try:
        block0 = await aio.pread(fd, BLOCK, 0)
        if len(block0) >= HEADER.size:
            base_size = HEADER.unpack_from(block0)[3]
        else:
            base_size = 0
        hdr_blocks = check_header(path, block0, base_size, None)
        digest = HEADER.unpack_from(block0)[7]
        raw = await aio.run(aio.pread_exact, fd, (hdr_blocks - 1) * BLOCK, BLOCK)
        held = sum(bin(x).count("1") for x in raw)
        return int(base_size), hdr_blocks, bytes(digest), held
    except OSError as exc:
        raise DiskError(f"{path}: cannot read overlay: {exc}", path) from None
    finally:
        await aio.close_fd(fd)
