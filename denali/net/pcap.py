"""Packet capture: frames the switch forwards, written to a standard pcap file off the packet path.

Format: classic libpcap (magic ``0xa1b2c3d4`` in native byte order, version 2.4,
microsecond timestamps, ``LINKTYPE_ETHERNET``), readable by tcpdump, Wireshark and dpkt.

The switch calls ``offer(frame)``, which never blocks: it stamps the frame with the wall
clock and appends it to a bounded in-memory queue (beyond ``queue_frames`` the frame is
dropped from the capture only, and counted in ``dropped``). A writer task of this object
turns the queue into records and writes them with ``aiofiles`` (file I/O in a worker
thread), so the event loop never waits on the disk.

State machine::

    created --start()--> running --stop()--> stopped
                            |                  ^
                            +-- write error ---+   (stop() then raises NetError)

``start`` opens the file and writes the header (``NetError`` if it cannot); ``stop``
refuses further frames, writes everything queued, flushes and closes; it is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import aiofiles

from denali.errors import ConfigError, NetError

if TYPE_CHECKING:
    from aiofiles.threadpool.binary import AsyncBufferedIOBase

PCAP_MAGIC_US: Final = 0xA1B2C3D4
"""Magic of a pcap file with microsecond timestamps."""
LINKTYPE_ETHERNET: Final = 1
DEFAULT_SNAPLEN: Final = 65535
DEFAULT_QUEUE_FRAMES: Final = 4096
_WRITE_CHUNK: Final = 1024
"""Frames joined into one write call at most."""
_HEADER: Final = struct.Struct("=IHHiIII")
_RECORD: Final = struct.Struct("=IIII")

log = logging.getLogger(__name__)


def pcap_header(snaplen: int = DEFAULT_SNAPLEN) -> bytes:
    """The 24-byte global header of a microsecond, Ethernet pcap file."""
    return _HEADER.pack(PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


class PcapWriter:
    """Captures frames to ``path``; see the module docstring for the contract.

    ``clock`` returns wall-clock nanoseconds (default ``time.time_ns``).
    """

    __slots__ = (
        "_clock",
        "_error",
        "_event",
        "_file",
        "_queue",
        "_snaplen",
        "_state",
        "_task",
        "dropped",
        "path",
        "queue_frames",
        "written",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        queue_frames: int = DEFAULT_QUEUE_FRAMES,
        snaplen: int = DEFAULT_SNAPLEN,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if queue_frames < 1:
            raise ConfigError(f"queue_frames must be at least 1, not {queue_frames}")
        if not 14 <= snaplen <= 0x3FFF_FFFF:
            raise ConfigError(f"snaplen {snaplen} is out of range")
        self.path = os.fspath(path)
        self.queue_frames = queue_frames
        self._snaplen = snaplen
        self._clock = clock
        self._queue: deque[tuple[int, bytes]] = deque()
        self._event = asyncio.Event()
        self._state = "created"
        self._task: asyncio.Task[None] | None = None
        self._file: AsyncBufferedIOBase | None = None
        self._error: BaseException | None = None
        self.written = 0
        """Frames written to the file."""
        self.dropped = 0
        """Frames offered but not captured (queue full, or after stop or a write error)."""

    @property
    def state(self) -> str:
        """ "created", "running" or "stopped"."""
        return self._state

    async def start(self) -> None:
        """Open the file, write the header and start the writer task (``NetError`` on failure)."""
        if self._state != "created":
            raise NetError(f"pcap capture to {self.path} was already started")
        try:
            f = await aiofiles.open(self.path, "wb")
        except OSError as exc:
            raise NetError(f"cannot open pcap file {self.path}: {exc}") from exc
        try:
            await f.write(pcap_header(self._snaplen))
        except OSError as exc:
            await f.close()
            raise NetError(f"cannot write pcap file {self.path}: {exc}") from exc
        self._file = f
        self._state = "running"
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"denali-pcap {self.path}")

    def offer(self, frame: bytes) -> bool:
        """Queue a frame for the file; never blocks. False (and counted) when it is not captured."""
        q = self._queue
        if self._state != "running" or len(q) >= self.queue_frames:
            if not self.dropped and self._state == "running":
                log.warning(
                    "capture to %s: queue full (%d frames); frames beyond it are dropped "
                    "from the capture and counted",
                    self.path,
                    self.queue_frames,
                )
            self.dropped += 1
            return False
        q.append((self._clock(), frame))
        if len(q) == 1:
            self._event.set()
        return True

    async def stop(self) -> None:
        """Stop capturing: write what is queued, flush, close. Idempotent.

        Raises ``NetError`` if a write failed (the file then ends at the last good record).
        """
        if self._state == "created":
            self._state = "stopped"
            return
        self._state = "stopped"
        self._event.set()
        task = self._task
        if task is not None:
            await asyncio.shield(task)
        if self._error is not None:
            err, self._error = self._error, None
            raise NetError(f"writing pcap file {self.path} failed: {err}") from err

    async def _run(self) -> None:
        f = self._file
        assert f is not None
        q = self._queue
        rec = _RECORD.pack
        snap = self._snaplen
        inflight = 0
        try:
            while True:
                if not q:
                    if self._state != "running":
                        break
                    self._event.clear()
                    await self._event.wait()
                    continue
                parts: list[bytes] = []
                n = min(len(q), _WRITE_CHUNK)
                for _ in range(n):
                    ts, frame = q.popleft()
                    sec, ns = divmod(ts, 1_000_000_000)
                    size = len(frame)
                    if size > snap:
                        parts.append(rec(sec, ns // 1000, snap, size))
                        parts.append(frame[:snap])
                    else:
                        parts.append(rec(sec, ns // 1000, size, size))
                        parts.append(frame)
                inflight = n
                await f.write(b"".join(parts))
                inflight = 0
                self.written += n
            await f.flush()
        except OSError as exc:
            self._error = exc
            log.warning("capture to %s failed, frames are no longer captured: %s", self.path, exc)
        finally:
            self._state = "stopped"
            self.dropped += len(q) + inflight
            q.clear()
            try:
                await f.close()
            except OSError as exc:
                if self._error is None:
                    self._error = exc
