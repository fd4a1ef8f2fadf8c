"""A disk passed down from a parent VM to a child: one backend, several views.

``share(disk, readonly)`` turns the parent's ``Disk`` backend into a ``SharedBackend``
(once) and returns another view of the same storage for a child. Every view takes one
lock per request, so the backend still runs one request at a time (its contract), and
the storage is closed when the last view closes. A view is read-only when the storage
is, or when the parent passed it down read-only.
"""

from __future__ import annotations

import asyncio

from denali.devices.disk.backend import Backend
from denali.devices.disk.device import Disk


class _Core:
    __slots__ = ("inner", "lock", "refs")

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.lock = asyncio.Lock()
        self.refs = 0


class SharedBackend:
    """One view of a shared backend (see the module docstring)."""

    __slots__ = ("_closed", "_core", "_readonly")

    def __init__(self, core: _Core, readonly: bool) -> None:
        self._core = core
        self._readonly = readonly or core.inner.readonly
        self._closed = False
        core.refs += 1

    @property
    def blocks(self) -> int:
        return self._core.inner.blocks

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def where(self) -> str:
        return self._core.inner.where

    async def read(self, block: int, count: int) -> bytes:
        async with self._core.lock:
            return await self._core.inner.read(block, count)

    async def write(self, block: int, data: bytes) -> None:
        if self._readonly:  # the device refuses first; never reached through it
            raise OSError(30, "read-only view of a shared disk")
        async with self._core.lock:
            await self._core.inner.write(block, data)

    async def flush(self) -> None:
        async with self._core.lock:
            await self._core.inner.flush()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        core = self._core
        core.refs -= 1
        if core.refs == 0:
            async with core.lock:
                await core.inner.close()


def share(disk: Disk, readonly: bool) -> SharedBackend:
    """A new view of ``disk``'s storage for a child (``disk`` keeps its own view): read-only
    when ``readonly``, or when ``disk`` is read-only for its own VM (a view passed down
    read-only stays read-only below it, at any depth)."""
    backend = disk.backend
    if not isinstance(backend, SharedBackend):
        backend = SharedBackend(_Core(backend), disk.readonly)
        disk.backend = backend
    return SharedBackend(backend._core, readonly or backend.readonly or disk.readonly)
