"""The console device: CONSOLE_WRITE, CONSOLE_WRITE_ERR and CONSOLE_READ; what the guest
wrote as an async byte stream, and input the host gives it.

Bounded like every queue in denali: unread output beyond ``limit`` bytes is dropped
(oldest first) and counted in ``dropped``. A ``sink`` callback, when given, receives
every chunk as it is written (the CLI prints through one) and nothing is queued.
The last ``history`` bytes are also kept for ``text()`` (diagnostics and tests).

The error stream (CONSOLE_WRITE_ERR) goes to ``err_sink`` when one is set, and otherwise
joins the output stream, as on a terminal. Input (CONSOLE_READ) exists once the host
opened it (``open_input``): the host writes bytes with ``write_input`` (which waits while
``input_limit`` bytes are unread: the queue is bounded) and ends it with
``close_input``; each arrival (and the end) raises ``Irq.CONSOLE`` on the VM.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, ClassVar, Final

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.devices.base import SLOT_CONSOLE, Device
from denali.memory import PROT_R, PROT_RW

if TYPE_CHECKING:
    from denali.memory import GuestMemory

ConsoleSink = Callable[[bytes], None]
_WRITE: Final = struct.Struct("<II")
_WRITE_AT: Final = abi.HYPERCALL_BY_NR[Hc.CONSOLE_WRITE].args.offsets()["buf"]
_ERR_AT: Final = abi.HYPERCALL_BY_NR[Hc.CONSOLE_WRITE_ERR].args.offsets()["buf"]
_READ: Final = abi.HYPERCALL_BY_NR[Hc.CONSOLE_READ].args.offsets()
_GOT_EOF: Final = struct.Struct("<II")
assert _READ["eof"] == _READ["got"] + 4


class Console(Device):
    """A VM's console: the output stream the host reads (CONSOLE_WRITE), the error
    stream (CONSOLE_WRITE_ERR) and the input stream the host writes (CONSOLE_READ).

    ``read()`` returns b"" once the VM has ended.
    """

    SLOT: ClassVar[int] = SLOT_CONSOLE
    HYPERCALLS: ClassVar = {
        Hc.CONSOLE_WRITE: "hc_write",
        Hc.CONSOLE_WRITE_ERR: "hc_write_err",
        Hc.CONSOLE_READ: "hc_read",
    }
    __slots__ = (
        "_chunks",
        "_closed",
        "_event",
        "_hist_limit",
        "_history",
        "_in",
        "_in_eof",
        "_in_room",
        "_limit",
        "_queued",
        "dropped",
        "err_sink",
        "err_written",
        "input_limit",
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
        self.err_sink: ConsoleSink | None = None
        self.err_written = 0
        self._in: bytearray | None = None
        """Unread input; None while the host has not opened input."""
        self._in_eof = False
        self._in_room: asyncio.Event | None = None
        self.input_limit = 64 << 10

    # ---- the error stream ----
    def feed_err(self, data: bytes) -> None:
        """Called by the kernel with bytes the guest wrote to its error stream."""
        self.err_written += len(data)
        if self.err_sink is not None:
            self.err_sink(data)
        else:
            self.feed(data)

    # ---- input ----
    def open_input(self) -> None:
        """Give the guest console input (until then CONSOLE_READ answers NODEV)."""
        if self._in is None:
            self._in = bytearray()

    @property
    def has_input(self) -> bool:
        return self._in is not None

    async def write_input(self, data: bytes) -> None:
        """Queue input for the guest, waiting while ``input_limit`` bytes are unread.
        Input written after ``close_input`` or after the VM ended is dropped."""
        self.open_input()
        view = memoryview(data)
        while view and not self._closed and not self._in_eof:
            assert self._in is not None
            room = self.input_limit - len(self._in)
            if room <= 0:
                if self._in_room is None:
                    self._in_room = asyncio.Event()
                self._in_room.clear()
                await self._in_room.wait()
                continue
            self._in += view[:room]
            view = view[room:]
            self._input_arrived()

    def close_input(self) -> None:
        """End of input: once the guest has read what is queued it sees end of file."""
        self.open_input()
        self._in_eof = True
        self._input_arrived()

    def _input_arrived(self) -> None:
        if getattr(self, "_host", None) is not None and not self._closed:
            self.host.raise_irq(Irq.CONSOLE)

    def read_input(self, n: int) -> bytes | None:
        """Up to ``n`` bytes of input for the guest: b"" at end of input, None when
        nothing waits yet (or input was never opened: check ``has_input``)."""
        buf = self._in
        if buf is None:
            return None
        if not buf:
            return b"" if self._in_eof else None
        data = bytes(buf[:n])
        del buf[:n]
        if self._in_room is not None:
            self._in_room.set()
        return data

    def hc_write(self, mem: GuestMemory, arg: int) -> int:
        buf, length = _WRITE.unpack_from(mem.buf, arg + _WRITE_AT)
        if length > abi.CONSOLE_MAX_WRITE:
            return Result.INVAL
        if not mem.check(buf, length, PROT_R):
            return Result.FAULT
        if length:
            self.feed(mem.read(buf, length))
        return Result.OK

    def hc_write_err(self, mem: GuestMemory, arg: int) -> int:
        buf, length = _WRITE.unpack_from(mem.buf, arg + _ERR_AT)
        if length > abi.CONSOLE_MAX_WRITE:
            return Result.INVAL
        if not mem.check(buf, length, PROT_R):
            return Result.FAULT
        if length:
            self.feed_err(mem.read(buf, length))
        return Result.OK

    def hc_read(self, mem: GuestMemory, arg: int) -> int:
        buf, length = _WRITE.unpack_from(mem.buf, arg + _READ["buf"])
        if length > abi.CONSOLE_MAX_READ:
            return Result.INVAL
        if not mem.check(buf, length, PROT_RW):
            return Result.FAULT
        if self._in is None:
            return Result.NODEV
        data = self.read_input(length) if length else b""
        if data is None:
            return Result.AGAIN
        mem.write(buf, data)
        _GOT_EOF.pack_into(mem.buf, arg + _READ["got"], len(data), 1 if length and not data else 0)
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
        if self._in_room is not None:
            self._in_room.set()

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
