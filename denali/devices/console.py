"""The console device: CONSOLE_WRITE, and what the guest wrote as an async byte stream.

Bounded like every queue in denali: unread output beyond ``limit`` bytes is dropped
(oldest first) and counted in ``dropped``. A ``sink`` callback, when given, receives
every chunk as it is written (the CLI prints through one) and nothing is queued.
The last ``history`` bytes are also kept for ``text()`` (diagnostics and tests).
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, ClassVar, Final

from denali import abi
from denali.abi import Hc, Result
from denali.devices.base import SLOT_CONSOLE, Device
from denali.memory import PROT_R

if TYPE_CHECKING:
    from denali.memory import GuestMemory

ConsoleSink = Callable[[bytes], None]
_WRITE: Final = struct.Struct("<II")
_WRITE_AT: Final = abi.HYPERCALL_BY_NR[Hc.CONSOLE_WRITE].args.offsets()["buf"]


class Console(Device):
    """A VM's console: the CONSOLE_WRITE hypercall and the output stream the host reads.

    ``read()`` returns b"" once the VM has ended.
    """

    SLOT: ClassVar[int] = SLOT_CONSOLE
    HYPERCALLS: ClassVar = {Hc.CONSOLE_WRITE: "hc_write"}
    __slots__ = (
        "_chunks",
        "_closed",
        "_event",
        "_hist_limit",
        "_history",
        "_limit",
        "_queued",
        "dropped",
        "sink",
        "written",
    )

    def __init__(
        self, sink: ConsoleSink | None = None, limit: int = 1 << 20, history: int = 64 << 10
    ) -> None:
        # Created on first use: most VMs of a large kernel print little or nothing.
        self._chunks: deque[bytes] | None = None
        self._queued = 0
        self._limit = limit
        self._history = bytearray()
        self._hist_limit = history
        self._event: asyncio.Event | None = None
        self._closed = False
        self.sink = sink
        self.dropped = 0
        self.written = 0

    def hc_write(self, mem: GuestMemory, arg: int) -> int:
        buf, length = _WRITE.unpack_from(mem.buf, arg + _WRITE_AT)
        if length > abi.CONSOLE_MAX_WRITE:
            return Result.INVAL
        if not mem.check(buf, length, PROT_R):
            return Result.FAULT
        if length:
            self.feed(mem.read(buf, length))
        return Result.OK

    def feed(self, data: bytes) -> None:
        """Called by the kernel with bytes the guest wrote."""
        self.written += len(data)
        hist = self._history
        hist += data
        if len(hist) > self._hist_limit:
            del hist[: len(hist) - self._hist_limit]
        if self.sink is not None:
            self.sink(data)
            return
        if self._chunks is None:
            self._chunks = deque()
        self._chunks.append(data)
        self._queued += len(data)
        while self._queued > self._limit and self._chunks:
            old = self._chunks.popleft()
            self._queued -= len(old)
            self.dropped += len(old)
        if self._event is not None:
            self._event.set()

    def close(self) -> None:
        """The VM ended: readers get what is left, then b""."""
        self._closed = True
        if self._event is not None:
            self._event.set()

    async def read(self) -> bytes:
        """The next chunk of output, waiting for one; b"" at end of stream."""
        while not self._chunks:
            if self._closed:
                return b""
            if self._event is None:
                self._event = asyncio.Event()
            self._event.clear()
            await self._event.wait()
        assert self._chunks is not None
        data = self._chunks.popleft()
        self._queued -= len(data)
        return data

    async def read_all(self) -> bytes:
        """Everything until the end of the stream."""
        parts = []
        while data := await self.read():
            parts.append(data)
        return b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while data := await self.read():
            yield data

    def text(self) -> str:
        """The last ``history`` bytes written, decoded leniently."""
        return self._history.decode("utf-8", "replace")
