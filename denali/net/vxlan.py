"""A switch port that tunnels the LAN over UDP with VXLAN (RFC 7348).

``VxlanPort(vni, remotes, local)`` joins this kernel's switch to other denali kernels
or to Linux ``vxlan`` devices with the same VNI: every frame the switch delivers is
sent, with an 8-byte VXLAN header (flags 0x08, 24-bit VNI), to each remote; every
datagram received on the local address with that VNI is handed to the switch. Packets
that are too short or too long, lack the I flag, carry another VNI or come from an
address that is not a remote are dropped and counted (``drop_malformed`` /
``drop_spoofed``; the first of each kind is logged); the inner frame then meets the
switch's own checks.

Trust: VXLAN has no authentication. Anyone who can send UDP to the local address can
forge a remote's source address and inject frames into the LAN, and anyone on the path
reads every frame. Join kernels over a trusted underlay (a private network of your own)
or an encrypted one (WireGuard or IPsec between the hosts); the checks here stop
mistakes and strangers, not a forger on the path. Sending
never blocks (the datagram transport buffers; a full buffer drops, counted).

Syntax for the CLI (``parse``): ``vxlan:VNI@REMOTE[:PORT][+REMOTE[:PORT]...][,local=ADDR[:PORT]]``
with UDP port 4789 by default on both ends.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Final

from denali.errors import ConfigError, NetError
from denali.net.port import Port

log = logging.getLogger(__name__)

VXLAN_PORT: Final = 4789
_HDR: Final = struct.Struct("!II")
_FLAG_I: Final = 0x08000000
MAX_INNER_FRAME: Final = 1518
"""Largest inner frame taken (1514 bytes of Ethernet without FCS, plus a VLAN tag);
a larger one is dropped as malformed here, before the switch sees it."""


def _addr(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    try:
        socket.inet_aton(host)
        p = int(port)
    except (OSError, ValueError):
        raise ConfigError(f"invalid VXLAN address {text!r} (IPv4[:port])") from None
    if not 0 < p < 65536:
        raise ConfigError(f"invalid UDP port in {text!r}")
    return host, p


class VxlanPort(Port, asyncio.DatagramProtocol):
    """The LAN over VXLAN. ``await open()`` binds the local address; ``close()`` unbinds."""

    def __init__(
        self,
        vni: int,
        remotes: list[tuple[str, int]],
        local: tuple[str, int] = ("0.0.0.0", VXLAN_PORT),
        *,
        ingress_capacity: int = 1024,
    ) -> None:
        if not 0 <= vni < 1 << 24:
            raise ConfigError(f"VNI {vni} is outside 0..16777215")
        if not remotes:
            raise ConfigError("a VXLAN port needs at least one remote")
        Port.__init__(self, f"vxlan:{vni}", ingress_capacity=ingress_capacity)
        self.vni = vni
        self.remotes = list(remotes)
        self.local = local
        self._transport: asyncio.DatagramTransport | None = None
        self._header = _HDR.pack(_FLAG_I, vni << 8)
        self._remote_hosts = frozenset(r[0] for r in self.remotes)
        self._warned: set[str] = set()

    def _warn_once(self, what: str, message: str, *args: object) -> None:
        """Log the first drop of each kind as a warning; the counters have the rest."""
        if what in self._warned:
            return
        self._warned.add(what)
        log.warning("%s: " + message + " (later ones are only counted)", self.name, *args)

    @classmethod
    def parse(cls, spec: str) -> VxlanPort:
        """A port from ``VNI@REMOTE[:PORT][+REMOTE...][,local=ADDR[:PORT]]`` (after ``vxlan:``)."""
        main, _, opts = spec.partition(",")
        vni_text, at, remotes_text = main.partition("@")
        if not at:
            raise ConfigError(f"vxlan:{spec}: expected vxlan:VNI@REMOTE[:PORT]")
        try:
            vni = int(vni_text)
        except ValueError:
            raise ConfigError(f"vxlan:{spec}: VNI {vni_text!r} is not a number") from None
        remotes = [_addr(r, VXLAN_PORT) for r in remotes_text.split("+") if r]
        local = ("0.0.0.0", VXLAN_PORT)
        if opts:
            key, _, value = opts.partition("=")
            if key != "local" or not value:
                raise ConfigError(f"vxlan:{spec}: unknown option {opts!r} (local=ADDR[:PORT])")
            local = _addr(value, VXLAN_PORT)
        return cls(vni, remotes, local)

    async def open(self) -> None:
        """Bind the local UDP address; ``NetError`` if it is taken or not ours."""
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=self.local)
        except OSError as exc:
            raise NetError(
                f"cannot bind VXLAN port on {self.local[0]}:{self.local[1]}: {exc.strerror or exc}"
            ) from None
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        st = self.stats
        if len(data) < 8 + 14 or len(data) > 8 + MAX_INNER_FRAME:
            st.drop_malformed += 1
            self._warn_once(
                "malformed", "a datagram of %d bytes from %s:%s (not a VXLAN frame) dropped", len(data), *addr
            )
            return
        flags, vni = _HDR.unpack_from(data)
        if not flags & _FLAG_I or vni >> 8 != self.vni:
            st.drop_malformed += 1
            self._warn_once(
                "vni", "a datagram from %s:%s without the I flag or for VNI %d dropped", *addr, vni >> 8
            )
            return
        if addr[0] not in self._remote_hosts:
            st.drop_spoofed += 1
            self._warn_once("spoofed", "a datagram from %s:%s, which is not a remote, dropped", *addr)
            return
        frame = data[8:]
        if len(frame) < 60:
            frame += bytes(60 - len(frame))
        self.submit(frame)

    def error_received(self, exc: Exception) -> None:  # ICMP errors from a remote: count
        self.stats.drop_link_down += 1
        self._warn_once("error", "the underlay reports an error: %s", exc)

    def deliver(self, frame: bytes) -> None:
        t = self._transport
        st = self.stats
        if t is None or t.is_closing():
            st.drop_link_down += 1
            return
        packet = self._header + frame
        for remote in self.remotes:
            t.sendto(packet, remote)
        st.rx_frames += 1
        st.rx_bytes += len(frame)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
