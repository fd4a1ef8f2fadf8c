"""A switch port on a Linux TAP device: the virtual LAN joined to a real network.

``TapPort(name)`` opens ``/dev/net/tun`` and attaches to the TAP device ``name``
(``IFF_TAP | IFF_NO_PI``): a device that does not exist is created (and removed again
when the port closes); an existing persistent one is opened and left in place.
``TapPort(name, host=IPv4Interface("10.77.0.2/24"))`` (``TapPort.parse("dtap0,host=
10.77.0.2/24")``, the ``--net tap:`` syntax) also gives the host side that address and
brings the device up when it opens, so the host reaches the VMs at once; without it the
host side is configured with ordinary tools (``ip addr add ... dev NAME``, a bridge),
and ``host_side()`` tells what it has: see ``docs/networking.md``.

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
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Final

from denali.errors import ConfigError, NetError
from denali.net.port import Port

TUNSETIFF: Final = 0x400454CA
IFF_TAP: Final = 0x0002
IFF_NO_PI: Final = 0x1000
IFNAMSIZ: Final = 16
SIOCGIFFLAGS: Final = 0x8913
SIOCSIFFLAGS: Final = 0x8914
SIOCGIFADDR: Final = 0x8915
SIOCSIFADDR: Final = 0x8916
SIOCGIFNETMASK: Final = 0x891B
SIOCSIFNETMASK: Final = 0x891C
IFF_UP: Final = 0x1
_IFREQ: Final = 40
_MIN_FRAME: Final = 60
_MAX_FRAME: Final = 1514


@dataclass(frozen=True)
class HostSide:
    """What the host's end of a TAP device has: whether it is up, its IPv4 address."""

    up: bool
    address: ipaddress.IPv4Interface | None


class TapPort(Port):
    """A port whose other end is the Linux TAP device ``name``. Call ``open()`` (done by
    ``start()``) inside the running loop; ``close()`` when done. With ``host``, ``open()``
    also gives the device (the host side) that address and brings it up."""

    __slots__ = ("_batch", "_device", "_fd", "_loop", "_tun", "host")

    def __init__(
        self,
        name: str,
        *,
        host: ipaddress.IPv4Interface | None = None,
        ingress_capacity: int = 256,
        batch: int = 64,
        tun: str = "/dev/net/tun",
    ) -> None:
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name or "," in name:
            raise NetError(f"invalid TAP device name {name!r} (1 to {IFNAMSIZ - 1} characters)")
        super().__init__(f"tap:{name}", ingress_capacity=ingress_capacity)
        self._device = name
        self.host = host
        self._tun = tun
        self._batch = batch
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def parse(cls, spec: str) -> TapPort:
        """A port from ``NAME[,host=ADDR/PREFIX]`` (what follows ``tap:`` in ``--net``)."""
        name, *opts = spec.split(",")
        host = None
        for opt in opts:
            key, eq, value = opt.partition("=")
            if key != "host" or not eq:
                raise ConfigError(f"tap:{spec}: unknown option {opt!r} (tap:NAME[,host=ADDR/PREFIX])")
            if "/" not in value:
                raise ConfigError(f"tap:{spec}: host={value} needs a prefix length, e.g. host={value}/24")
            try:
                host = ipaddress.IPv4Interface(value)
            except ValueError:
                raise ConfigError(f"tap:{spec}: host={value} is not an IPv4 address/prefix") from None
            if host.network.prefixlen > 30 or host.ip in (
                host.network.network_address,
                host.network.broadcast_address,
            ):
                raise ConfigError(
                    f"tap:{spec}: host={value} is not a host address of a subnet "
                    "with room for VMs (prefix at most /30)"
                )
        try:
            return cls(name, host=host)
        except NetError as exc:
            raise ConfigError(f"tap:{spec}: {exc}") from None

    @property
    def device(self) -> str:
        return self._device

    def host_commands(self, address: ipaddress.IPv4Interface) -> list[str]:
        """The commands that give the host side ``address`` and bring it up, as a user
        would type them (what ``host=`` does)."""
        return [f"ip addr add {address} dev {self._device}", f"ip link set {self._device} up"]

    def open(self) -> None:
        """Open or create the device and start reading it; ``NetError`` says why not."""
        if self._fd >= 0:
            return
        try:
            fd = os.open(self._tun, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetError(
                f"cannot open TAP device {self._device}: {self._tun} does not exist "
                "(load the tun module or give the container /dev/net/tun)"
            ) from None
        except PermissionError:
            raise NetError(
                f"cannot open TAP device {self._device}: no permission to open {self._tun}"
            ) from None
        try:
            ifr = struct.pack("16sH", self._device.encode(), IFF_TAP | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise NetError(
                    f"cannot create or attach TAP device {self._device}: "
                    "permission denied (needs CAP_NET_ADMIN)"
                ) from None
            if exc.errno == errno.EBUSY:
                raise NetError(f"TAP device {self._device} is in use by another process") from None
            raise NetError(f"cannot attach TAP device {self._device}: {exc.strerror}") from None
        if self.host is not None:
            try:
                self._configure_host(self.host)
            except NetError:
                os.close(fd)
                raise
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)

    def _ifreq(self, payload: bytes = b"") -> bytes:
        return struct.pack(f"{IFNAMSIZ}s", self._device.encode()) + payload.ljust(_IFREQ - IFNAMSIZ, b"\0")

    @staticmethod
    def _sockaddr(ip: ipaddress.IPv4Address) -> bytes:
        return struct.pack("=H2s4s", socket.AF_INET, b"", ip.packed)

    def _configure_host(self, host: ipaddress.IPv4Interface) -> None:
        """Give the device ``host`` and bring it up (the ioctls behind ``ip addr add``
        and ``ip link set up``); ``NetError`` says why not and what to run instead."""
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sk:
                fcntl.ioctl(sk, SIOCSIFADDR, self._ifreq(self._sockaddr(host.ip)))
                fcntl.ioctl(sk, SIOCSIFNETMASK, self._ifreq(self._sockaddr(host.netmask)))
                got = fcntl.ioctl(sk, SIOCGIFFLAGS, self._ifreq())
                flags = struct.unpack_from("=H", got, IFNAMSIZ)[0]
                fcntl.ioctl(sk, SIOCSIFFLAGS, self._ifreq(struct.pack("=H", flags | IFF_UP)))
        except OSError as exc:
            why = (
                "permission denied (needs CAP_NET_ADMIN)"
                if exc.errno in (errno.EPERM, errno.EACCES)
                else exc.strerror or str(exc)
            )
            raise NetError(
                f"cannot give TAP device {self._device} the host address {host}: {why}; "
                f"an administrator can run: {' && '.join(self.host_commands(host))}"
            ) from None

    def host_side(self) -> HostSide:
        """Whether the device is up on the host and the IPv4 address it has there (read
        from the kernel now; a device that is gone reads as down, no address)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sk:
            try:
                got = fcntl.ioctl(sk, SIOCGIFFLAGS, self._ifreq())
            except OSError:
                return HostSide(False, None)
            up = bool(struct.unpack_from("=H", got, IFNAMSIZ)[0] & IFF_UP)
            try:
                addr = fcntl.ioctl(sk, SIOCGIFADDR, self._ifreq())
                mask = fcntl.ioctl(sk, SIOCGIFNETMASK, self._ifreq())
            except OSError:
                return HostSide(up, None)
        ip = ipaddress.IPv4Address(addr[IFNAMSIZ + 4 : IFNAMSIZ + 8])
        prefix = bin(int.from_bytes(mask[IFNAMSIZ + 4 : IFNAMSIZ + 8], "big")).count("1")
        return HostSide(up, ipaddress.IPv4Interface(f"{ip}/{prefix}"))

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
