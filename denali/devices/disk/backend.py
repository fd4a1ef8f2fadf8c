"""Host block devices behind a VM's disks: read, write and flush whole 4 KiB blocks.

``open_backend(spec)`` opens what a ``DiskSpec`` asks for:

======================  =======================================================
mode                    backend
======================  =======================================================
``ro``                  ``ImageBackend`` on the shared base, read-only
``rw``                  ``ImageBackend`` on the image's own descriptor (exclusive lock)
``overlay-discard``     ``OverlayBackend``: shared base + throwaway overlay
``overlay-keep``        ``OverlayBackend``: shared base + kept, checked overlay
======================  =======================================================

Contract for every backend: ``read``/``write``/``flush`` are coroutines that either
complete or raise ``OSError`` (the caller turns it into ``Result.IO``); each runs its
file I/O as one job in the executor and checks afterwards that no file it used was
truncated or removed (so a disk file cut under a running VM fails that VM's I/O and
nothing else). Ranges are checked by the caller (``denali.devices.disk.device``). One
request at a time per backend (the disk's worker serialises them), and ``close()`` is
called once, after the last request finished: no descriptor is closed under a running
job.
"""

from __future__ import annotations

import os
from typing import Protocol

from denali.devices.disk import aio
from denali.devices.disk.base import BLOCK, BaseImage, acquire_base, check_disk_size, open_checked
from denali.devices.disk.overlay import Overlay, create_temporary, open_kept
from denali.devices.disk.spec import DiskSpec
from denali.errors import DiskError


class Backend(Protocol):
    """What a VM's disk needs from its host storage (see the module docstring)."""

    @property
    def blocks(self) -> int: ...

    @property
    def readonly(self) -> bool: ...

    @property
    def where(self) -> str:
        """The files behind it, for messages."""
        ...

    async def read(self, block: int, count: int) -> bytes: ...

    async def write(self, block: int, data: bytes) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


class ImageBackend:
    """The image file itself: a shared read-only base (``ro``) or an exclusive ``rw`` file."""

    __slots__ = ("_base", "_fd", "_path", "_size", "blocks", "readonly")

    def __init__(self, path: str, fd: int, size: int, base: BaseImage | None) -> None:
        self._path = path
        self._fd = fd
        self._size = size
        self._base = base
        self.blocks = size // BLOCK
        self.readonly = base is not None

    def _check(self) -> None:
        if self._base is not None:
            self._base.check_intact()
            return
        st = os.fstat(self._fd)
        if st.st_nlink == 0:
            raise OSError(f"{self._path}: disk image was removed")
        if st.st_size < self._size:
            raise OSError(f"{self._path}: disk image was truncated to {st.st_size} bytes")

    @property
    def where(self) -> str:
        return self._path

    def _read_job(self, block: int, count: int) -> bytes:
        try:
            data = aio.pread_exact(self._fd, count * BLOCK, block * BLOCK)
        except OSError:
            self._check()  # a short read: say that the file was cut, if it was
            raise
        self._check()
        return data

    def _write_job(self, block: int, data: bytes) -> None:
        self._check()
        aio.pwrite_all(self._fd, data, block * BLOCK)
        self._check()

    def _flush_job(self) -> None:
        self._check()
        os.fsync(self._fd)

    async def read(self, block: int, count: int) -> bytes:
        return await aio.run(self._read_job, block, count)

    async def write(self, block: int, data: bytes) -> None:
        if self.readonly:
            raise OSError("disk is read-only")
        await aio.run(self._write_job, block, data)

    async def flush(self) -> None:
        if not self.readonly:
            await aio.run(self._flush_job)

    async def close(self) -> None:
        if self._base is not None:
            base, self._base = self._base, None
            await base.release()
        elif self._fd >= 0:
            fd, self._fd = self._fd, -1
            await aio.close_fd(fd)


class OverlayBackend:
    """Copy-on-write: reads come from the overlay where it holds the block, else from the
    shared base; writes go to the overlay only, so the base never changes."""

    __slots__ = ("_base", "blocks", "overlay", "readonly")

    def __init__(self, base: BaseImage, overlay: Overlay) -> None:
        self._base = base
        self.overlay = overlay
        self.blocks = base.blocks
        self.readonly = False

    @property
    def where(self) -> str:
        ov = self.overlay
        return f"{self._base.path} with overlay {ov.path if ov.kept else '(throwaway)'}"

    def _read_job(self, runs: list[tuple[bool, int, int]]) -> bytes:
        ov, base = self.overlay, self._base
        parts = []
        try:
            for in_overlay, first, n in runs:
                if in_overlay:
                    parts.append(aio.pread_exact(ov.fd, n * BLOCK, ov.data_offset(first)))
                else:
                    parts.append(aio.pread_exact(base.fd, n * BLOCK, first * BLOCK))
        except OSError:
            base.check_intact()  # a short read: say which file was cut, if one was
            ov.check_intact()
            raise
        base.check_intact()
        ov.check_intact()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _write_job(self, block: int, data: bytes) -> None:
        ov = self.overlay
        ov.check_intact()
        aio.pwrite_all(ov.fd, data, ov.data_offset(block))
        ov.check_intact()

    async def read(self, block: int, count: int) -> bytes:
        return await aio.run(self._read_job, self.overlay.runs(block, count))

    async def write(self, block: int, data: bytes) -> None:
        await aio.run(self._write_job, block, data)
        self.overlay.mark(block, len(data) // BLOCK)

    async def flush(self) -> None:
        ov = self.overlay
        if ov.kept:
            await aio.run(ov.check_intact)
            await ov.flush()

    async def close(self) -> None:
        try:
            await self.overlay.close()
        finally:
            await self._base.release()


async def open_backend(spec: DiskSpec) -> Backend:
    """Open the storage for ``spec``; ``DiskError`` when a file is missing, in use, of a
    bad size, corrupt, or (overlay) made for another base."""
    path = spec.path
    if spec.mode == "rw":
        fd, st = await open_checked(path, os.O_RDWR)
        try:
            check_disk_size(path, st.st_size)
            if not await aio.try_lock(fd, exclusive=True):
                raise DiskError(f"{path}: disk image is in use (opened by another VM or process)", path)
        except BaseException:
            await aio.close_fd(fd)
            raise
        return ImageBackend(path, fd, st.st_size, None)
    base = await acquire_base(path)
    try:
        if spec.mode == "ro":
            return ImageBackend(path, base.fd, base.size, base)
        if spec.mode == "overlay-discard":
            ov = await create_temporary(spec.overlay_dir, base)
        else:
            ov_path = spec.overlay_path
            assert ov_path is not None
            ov = await open_kept(ov_path, base)
        return OverlayBackend(base, ov)
    except BaseException:
        await base.release()
        raise
