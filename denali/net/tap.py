"""A switch port on a Linux TAP device: the virtual LAN joined to a real network.

``TapPort(name)`` opens ``/dev/net/tun`` and attaches to the TAP device ``name``
(``IFF_TAP | IFF_NO_PI``): a device that does not exist is created (and removed again
when the port closes); an existing persistent one is opened and left in place. The
host side is configured with ordinary tools (``ip addr add ... dev NAME``, a bridge):
see ``docs/networking.md``.

Frames are read without blocking the event loop (``loop.add_reader``, at most
``batch`` frames per wake-up) and handed to the switch; frames shorter than 60 bytes
(Linux sends 42-byte ARP frames) are padded with zeros to the 60 bytes the VM NIC
contract promises. Frames the switch delivers are written without blocking; when the
kernel's queue for the device is full the frame is dropped and counted
(``stats.drop_egress_full``). A TAP port has no fixed MAC: it carries every address of
the real network behind it, and the switch learns them (it may not use a VM's MAC).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import struct
from typing import Final

from denali.errors import NetError
from denali.net.port import Port

TUNSETIFF: Final = 0x400454CA
IFF_TAP: Final = 0x0002
IFF_NO_PI: Final = 0x1000
IFNAMSIZ: Final = 16
_MIN_FRAME: Final = 60
_MAX_FRAME: Final = 1514


class TapPort(Port):
    """A port whose other end is the Linux TAP device ``name``. Call ``open()`` (done by
    ``start()``) inside the running loop; ``close()`` when done."""

    __slots__ = ("_batch", "_device", "_fd", "_loop", "_tun")

    def __init__(self, name: str, *, ingress_capacity: int = 256, batch: int = 64,
                 tun: str = "/dev/net/tun") -> None:
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
            raise NetError(f"invalid TAP device name {name!r} (1 to {IFNAMSIZ - 1} characters)")
        super().__init__(f"tap:{name}", ingress_capacity=ingress_capacity)
        self._device = name
        self._tun = tun
        self._batch = batch
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def device(self) -> str:
        return self._device

    def open(self) -> None:
        """Open or create the device and start reading it; ``NetError`` says why not."""
        if self._fd >= 0:
            return
        try:
            fd = os.open(self._tun, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetError(f"cannot open TAP device {self._device}: {self._tun} does not exist "
                           "(load the tun module or give the container /dev/net/tun)") from None
        except PermissionError:
            raise NetError(f"cannot open TAP device {self._device}: no permission to open "
                           f"{self._tun}") from None
        try:
            ifr = struct.pack("16sH", self._device.encode(), IFF_TAP | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise NetError(f"cannot create or attach TAP device {self._device}: "
                               "permission denied (needs CAP_NET_ADMIN)") from None
            if exc.errno == errno.EBUSY:
                raise NetError(f"TAP device {self._device} is in use by another process") from None
            raise NetError(f"cannot attach TAP device {self._device}: {exc.strerror}") from None
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        fd = self._fd
        st = self.stats
        for _ in range(self._batch):
            try:
                frame = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                st.drop_link_down += 1
                return
            n = len(frame)
            if n < 14 or n > _MAX_FRAME:
                st.drop_malformed += 1
                continue
            if n < _MIN_FRAME:
                frame += bytes(_MIN_FRAME - n)
            self.submit(frame)

    def deliver(self, frame: bytes) -> None:
        """Write a frame to the device; never blocks (a full device queue drops it)."""
        st = self.stats
        if self._fd < 0:
            st.drop_link_down += 1
            return
        try:
            os.write(self._fd, frame)
        except BlockingIOError:
            st.drop_egress_full += 1
            return
        except OSError:
            st.drop_link_down += 1
            return
        st.rx_frames += 1
        st.rx_bytes += len(frame)

    def close(self) -> None:
        """Stop reading and close the device (a device this port created disappears)."""
        if self._fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
