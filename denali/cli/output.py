"""The consoles of ``denali boot`` on stdout: written by a thread, so the event loop never waits.

``ConsoleOutput.write`` (called on the event loop, by the console sinks) only appends
to a bounded buffer; a thread of its own writes the buffer to the file descriptor with
ordinary blocking writes. When the reader of stdout does not keep up and ``limit``
bytes are waiting, whatever comes next is dropped, a whole chunk at a time (a chunk is
a VM's complete lines when several VMs share stdout), and counted in ``dropped``; when
the reader is gone (``EPIPE``) everything from then on is. The VMs never wait for
stdout and never learn about either.

``close()`` lets the thread write what is still buffered for as long as the reader
takes it (so ``| less`` gets everything), but gives up when nothing could be written
for ``idle_s`` (a reader that stopped reading), or at once after a stop signal; what is
left is then counted as dropped (including the one 4 KiB write still blocked, which a
reader waking up before the process ends may yet receive). ``report()`` is the line for
stderr, if anything was dropped.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

DEFAULT_LIMIT: Final = 1 << 20
"""Bytes of console output buffered for a slow stdout before more is dropped."""
_WRITE: Final = 4096
"""Bytes per write (PIPE_BUF: a pipe takes all of them or none), so that what ``close``
counts as dropped is exact but for the one write that may still be blocked in flight."""
IDLE_S: Final = 2.0
"""How long ``close()`` waits for a stdout that takes nothing more."""


class ConsoleOutput:
    """Console bytes to ``fd`` through a bounded buffer and a writer thread (see the module)."""

    def __init__(self, fd: int = 1, limit: int = DEFAULT_LIMIT) -> None:
        self.fd = fd
        self.limit = limit
        self.dropped = 0
        """Bytes dropped: buffer full, stdout closed, or left over at ``close()``."""
        self.broken = False
        """True once a write failed (the reader went away, or an I/O error)."""
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._busy = 0  # bytes taken by the thread and not yet written
        self._closing = False
        self._abandoned = False
        self._last_progress = time.monotonic()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="denali-stdout", daemon=True)
        self._thread.start()

    # ---- the event loop's side ----
    def write(self, data: bytes) -> None:
        """Queue ``data`` for stdout, or drop it (counted) if the buffer is full; never blocks."""
        if not data:
            return
        with self._cond:
            if self.broken or self._closing or self._queued + len(data) > self.limit:
                self.dropped += len(data)
                return
            self._chunks.append(data)
            self._queued += len(data)
            self._cond.notify()

    def sink_for(self, index: int | None) -> PrefixedSink:
        """A console sink for VM ``index``: its lines prefixed with ``[vmN]``; with
        ``index`` None its bytes as they come (one VM)."""
        return PrefixedSink(self, index)

    def close(self, idle_s: float = IDLE_S, stopped: Callable[[], bool] = lambda: False) -> None:
        """Let the thread write out the buffer (see the module docstring), then stop it."""
        with self._cond:
            self._closing = True
            self._last_progress = time.monotonic()
            self._cond.notify()
            while (self._queued or self._busy) and not self.broken and not stopped():
                if time.monotonic() - self._last_progress >= idle_s:
                    break
                self._cond.wait(0.1)  # notified on progress; the timeout checks idle_s
            self.dropped += self._queued + self._busy
            self._chunks.clear()
            self._queued = self._busy = 0
            self._abandoned = True
        # A thread stuck in write() (a reader that never reads) is a daemon: left behind.
        self._thread.join(timeout=0.1)

    def report(self) -> str | None:
        """The line for stderr when output was dropped, else None."""
        return dropped_line(self.dropped, self.broken)

    # ---- the writer thread ----
    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._chunks and not self._closing:
                    cond.wait()
                if not self._chunks:
                    if self._closing:
                        return
                    continue
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._queued -= len(data)
                self._busy = len(data)
            view = memoryview(data)
            try:
                while view:
                    if self._abandoned:  # close() gave up and counted the rest as dropped
                        return
                    n = os.write(self.fd, view[:_WRITE])
                    view = view[n:]
                    with cond:
                        if not self._abandoned:
                            self._busy = len(view)
                        self._last_progress = time.monotonic()
                        cond.notify_all()
            except OSError:  # EPIPE (the reader went away), EIO, ...: drop from now on
                with cond:
                    if self._abandoned:  # close() counted it all already
                        return
                    self.broken = True
                    self.dropped += len(view) + self._queued
                    self._busy = 0
                    self._chunks.clear()
                    self._queued = 0
                    cond.notify_all()
                return
            with cond:
                cond.notify_all()


class PrefixedSink:
    """One VM's console sink on a ``ConsoleOutput`` (called on the event loop)."""

    __slots__ = ("_out", "_partial", "_prefix")

    def __init__(self, out: ConsoleOutput, index: int | None) -> None:
        self._out = out
        self._prefix = b"" if index is None else b"[vm%d] " % index
        self._partial = bytearray()

    def __call__(self, data: bytes) -> None:
        if not self._prefix:
            self._out.write(data)
            return
        partial = self._partial
        partial += data
        end = partial.rfind(b"\n")
        if end < 0:
            return
        lines = partial[:end].split(b"\n")
        del partial[: end + 1]
        self._out.write(b"".join(b"%s%s\n" % (self._prefix, line) for line in lines))

    def finish(self) -> None:
        """The VM ended: write its last line even if it had no newline."""
        if self._partial:
            self._out.write(b"%s%s\n" % (self._prefix, bytes(self._partial)))
            self._partial.clear()


def dropped_line(dropped: int, closed: bool) -> str | None:
    """The line for stderr when ``dropped`` bytes of console output were dropped (``closed``:
    because stdout was closed), else None; a host of several kernels sums its members'."""
    if not dropped:
        return None
    why = "stdout was closed" if closed else "stdout was not read fast enough"
    return f"denali: {dropped:,} bytes of console output dropped ({why})"
