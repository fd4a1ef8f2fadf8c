"""Every blocking file operation of the disk code, as a coroutine run off the event loop.

All of them go through ``aiofiles`` (``aiofiles.os.wrap`` runs a function in the loop's
default executor), so the loop never waits on a disk. Disks use positional I/O on
descriptors (``pread``/``pwrite``): one descriptor of a base image is shared by every VM
that reads it, and positional calls on one descriptor are safe from several threads.

``run(fn, *args)`` runs any synchronous function the same way: a disk request is one
such call that does all its reads, writes and checks in one trip to the executor.

Invariant: a descriptor is closed only when no call using it is in flight (the callers
keep track; see ``denali.devices.disk.backend``), so a descriptor number is never reused under
a running ``pread``/``pwrite``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import Final, TypeVar

import aiofiles.os

_T = TypeVar("_T")

_open: Final = aiofiles.os.wrap(os.open)
_close: Final = aiofiles.os.wrap(os.close)
_fstat: Final = aiofiles.os.wrap(os.fstat)
_fsync: Final = aiofiles.os.wrap(os.fsync)
_ftruncate: Final = aiofiles.os.wrap(os.ftruncate)
_pread: Final = aiofiles.os.wrap(os.pread)
_pwrite: Final = aiofiles.os.wrap(os.pwrite)
_flock: Final = aiofiles.os.wrap(fcntl.flock)


async def run(fn: Callable[..., _T], *args: object) -> _T:
    """``fn(*args)`` in the executor; its result or its exception."""
    result: _T = await aiofiles.os.wrap(fn)(*args)
    return result


async def open_fd(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` with ``O_CLOEXEC`` added; raises ``OSError``."""
    fd: int = await _open(path, flags | os.O_CLOEXEC, mode)
    return fd


async def close_fd(fd: int) -> None:
    """``os.close``; errors are ignored (the descriptor is gone either way)."""
    try:
        await _close(fd)
    except OSError:
        pass


async def fstat(fd: int) -> os.stat_result:
    result: os.stat_result = await _fstat(fd)
    return result


async def fsync(fd: int) -> None:
    await _fsync(fd)


async def ftruncate(fd: int, size: int) -> None:
    await _ftruncate(fd, size)


async def pread(fd: int, size: int, offset: int) -> bytes:
    data: bytes = await _pread(fd, size, offset)
    return data


async def pwrite(fd: int, data: bytes, offset: int) -> int:
    n: int = await _pwrite(fd, data, offset)
    return n


async def try_lock(fd: int, exclusive: bool) -> bool:
    """Take a non-blocking ``flock`` (shared or exclusive); False if another holder conflicts."""
    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    try:
        await _flock(fd, op)
    except BlockingIOError:
        return False
    return True


async def unlink(path: str) -> None:
    await aiofiles.os.unlink(path)


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Synchronous helper for executor jobs: exactly ``size`` bytes or ``OSError``.

    A short read means the file ended early (it was truncated).
    """
    parts: list[bytes] = []
    got = 0
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            raise OSError(f"short read: {got} of {size} bytes at offset {offset} (file truncated?)")
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Synchronous helper for executor jobs: write every byte of ``data`` at ``offset``."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(f"pwrite wrote {n} bytes at offset {offset + done}")
        done += n
