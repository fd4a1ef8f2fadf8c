"""Base images: disk image files opened read-only and shared by every VM that reads them.

A base image is raw: block *i* of the disk is bytes ``[i*4096, (i+1)*4096)`` of the file,
and its size is a positive multiple of 4096 (anything else is refused as truncated).
One descriptor per image file (per inode) is shared by all the VMs of this process that
use it (``acquire_base``/``BaseImage.release``, reference counted), under a shared
``flock`` so that no one opens it read-write (``rw`` mode takes an exclusive lock) while
it serves as a base, in this process or another.

The identity of a base, recorded in every kept overlay, is the SHA-256 of its contents:
computed off the loop on first need and cached by (device, inode, size, mtime, ctime).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from collections import OrderedDict
from typing import Final

from denali import abi
from denali.devices.disk import aio
from denali.errors import DiskError

BLOCK: Final = abi.DISK_BLOCK_SIZE
MAX_DISK_BYTES: Final = 1 << 40
"""Largest disk accepted (1 TiB): an overlay's bitmap is 1/32768 of it, kept in memory."""
_HASH_CHUNK: Final = 4 << 20
_DIGEST_CACHE_MAX: Final = 256

log = logging.getLogger(__name__)

_open_bases: dict[tuple[int, int], BaseImage] = {}
_digests: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
_digest_jobs: dict[tuple[int, ...], asyncio.Future[bytes]] = {}


def check_disk_size(path: str, size: int) -> int:
    """Return the number of blocks of a disk of ``size`` bytes, or raise ``DiskError``."""
    if size <= 0:
        raise DiskError(f"{path}: empty file, not a disk image", path)
    if size % BLOCK:
        raise DiskError(
            f"{path}: size {size} is not a multiple of {BLOCK} bytes (truncated, or not a disk image)", path
        )
    if size > MAX_DISK_BYTES:
        raise DiskError(f"{path}: size {size} is above the {MAX_DISK_BYTES}-byte limit", path)
    return size // BLOCK


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words ("a FIFO", "a regular file", ...)."""
    for test, words in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return words
    return "not a file"


class _NotRegular(Exception):
    def __init__(self, mode: int) -> None:
        super().__init__(file_kind(mode))


def _open_regular(path: str, flags: int) -> tuple[int, os.stat_result]:
    # Executor job. The path is looked at before it is opened: opening a FIFO blocks
    # until a writer comes (for ever, and no signal can end the wait), opening a device
    # or a socket does what that device does. O_NONBLOCK covers a path replaced by a
    # FIFO between the stat and the open (regular files ignore it; it is cleared after).
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _NotRegular(st.st_mode)
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular(st.st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


async def open_checked(
    path: str, flags: int, what: str = "disk image", missing_ok: bool = False
) -> tuple[int, os.stat_result]:
    """Open an existing disk image (or overlay: ``what``) file; (fd, stat).

    Anything but a regular file (after symbolic links: a FIFO, socket, character or
    block device, directory) is refused with ``DiskError`` before it is opened; so is a
    file that cannot be opened, or a missing one (``missing_ok``: ``FileNotFoundError``
    is raised as is, for the caller to create the file).
    """
    try:
        return await aio.run(_open_regular, path, flags)
    except _NotRegular as exc:
        raise DiskError(
            f"{path}: {exc}, not a regular file: a {what} must be a regular file (see docs/disk-format.md)",
            path,
        ) from None
    except FileNotFoundError as exc:
        if missing_ok:
            raise
        raise DiskError(f"{path}: cannot open {what}: {exc.strerror}", path) from None
    except OSError as exc:
        raise DiskError(f"{path}: cannot open {what}: {exc.strerror or exc}", path) from None


class BaseImage:
    """A shared read-only image. Use ``acquire_base``; never construct directly.

    ``blocks`` and ``size`` are as of opening; every request re-checks the file (see
    ``check_intact``) so a base truncated or removed under running VMs fails their I/O.
    """

    __slots__ = ("blocks", "fd", "key", "path", "refs", "size")

    def __init__(self, path: str, fd: int, st: os.stat_result) -> None:
        self.path = path
        self.fd = fd
        self.size = st.st_size
        self.blocks = st.st_size // BLOCK
        self.key = (st.st_dev, st.st_ino)
        self.refs = 1

    def check_intact(self) -> None:
        """Executor-side check after a read: ``OSError`` if the file shrank or was removed."""
        st = os.fstat(self.fd)
        if st.st_nlink == 0:
            raise OSError(f"{self.path}: disk image was removed")
        if st.st_size < self.size:
            raise OSError(f"{self.path}: disk image was truncated to {st.st_size} bytes")

    async def digest(self) -> bytes:
        """SHA-256 of the image's contents (cached); ``DiskError`` if it cannot be read."""
        try:
            st = await aio.fstat(self.fd)
        except OSError as exc:
            raise DiskError(f"{self.path}: {exc.strerror}", self.path) from None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = _digests.get(key)
        if cached is not None:
            _digests.move_to_end(key)
            return cached
        loop = asyncio.get_running_loop()
        job = _digest_jobs.get(key)
        if job is None or job.get_loop() is not loop:
            job = loop.create_future()
            _digest_jobs[key] = job
            try:
                value = await self._hash(st.st_size)
            except BaseException as exc:
                _digest_jobs.pop(key, None)
                err = (
                    exc
                    if isinstance(exc, DiskError)
                    else DiskError(f"{self.path}: digest not computed: {exc!r}", self.path)
                )
                job.set_exception(err)
                job.exception()  # marked retrieved: waiters get it, no warning if none
                raise
            _digest_jobs.pop(key, None)
            job.set_result(value)
            _digests[key] = value
            while len(_digests) > _DIGEST_CACHE_MAX:
                _digests.popitem(last=False)
            return value
        return await asyncio.shield(job)

    async def _hash(self, size: int) -> bytes:
        log.debug("%s: computing the SHA-256 of %d bytes (the identity its overlays record)", self.path, size)
        h = hashlib.sha256()
        try:
            for off in range(0, size, _HASH_CHUNK):
                await aio.run(_hash_chunk, h, self.fd, min(_HASH_CHUNK, size - off), off)
        except OSError as exc:
            raise DiskError(f"{self.path}: cannot read disk image: {exc}", self.path) from None
        return h.digest()

    async def release(self) -> None:
        """Drop one reference; the last one closes the descriptor (no call may be in flight)."""
        self.refs -= 1
        if self.refs > 0:
            return
        if _open_bases.get(self.key) is self:
            del _open_bases[self.key]
        fd, self.fd = self.fd, -1
        if fd >= 0:
            await aio.close_fd(fd)


def _hash_chunk(h: hashlib._Hash, fd: int, size: int, offset: int) -> None:
    h.update(aio.pread_exact(fd, size, offset))


async def acquire_base(path: str) -> BaseImage:
    """Open (or share) ``path`` as a read-only base image; release it with ``release()``.

    Raises ``DiskError`` when the file is missing, not a multiple of 4 KiB, or locked
    read-write by someone else.
    """
    fd, st = await open_checked(path, os.O_RDONLY)
    try:
        check_disk_size(path, st.st_size)
        key = (st.st_dev, st.st_ino)
        shared = _open_bases.get(key)
        if shared is None:
            if not await aio.try_lock(fd, exclusive=False):
                raise DiskError(f"{path}: disk image is in use read-write", path)
            shared = _open_bases.get(key)  # someone may have opened it while we locked
            if shared is None:
                image = BaseImage(path, fd, st)
                _open_bases[key] = image
                log.debug("%s: opened as a shared base image (%d blocks)", path, image.blocks)
                return image
    except BaseException:
        await aio.close_fd(fd)
        raise
    shared.refs += 1
    await aio.close_fd(fd)
    return shared


def open_base_count() -> int:
    """How many base images this process holds open (for tests and diagnostics)."""
    return len(_open_bases)
