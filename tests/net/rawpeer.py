"""A scripted IPv4 host on the virtual switch, for conformance tests of the guest stack.

``RawPeer`` is a switch port with its own MAC and IPv4 address. It answers ARP for its
address, keeps every other frame it receives, and sends hand-built Ethernet/IPv4/TCP,
UDP and ICMP packets (fragmented when asked), so a test can send exactly the segment an
RFC rule is about (a FIN to a listener, an in-window RST, one fragment of a datagram)
and see exactly what the guest answers.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from denali.net import Port

ETH_IP = 0x0800
ETH_ARP = 0x0806
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def ip_aton(s: str) -> bytes:
    return bytes(int(x) for x in s.split("."))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@dataclass
class Tcp:
    """A parsed TCP segment from the guest."""

    src: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    options: bytes


@dataclass
class Ip:
    """A parsed IPv4 datagram (one frame: a fragment stays a fragment)."""

    src: bytes
    dst: bytes
    proto: int
    ident: int
    frag: int
    payload: bytes


class RawPeer(Port):
    """A host at ``ip`` with MAC ``mac`` on the switch; see the module docstring."""

    __slots__ = ("_event", "frames", "ip", "my_mac")

    def __init__(self, name: str, mac: bytes, ip: str) -> None:
        super().__init__(name, mac=mac)
        self.my_mac = mac
        self.ip = ip_aton(ip)
        self.frames: list[bytes] = []
        self._event = asyncio.Event()

    def deliver(self, frame: bytes) -> None:
        self.stats.rx_frames += 1
        etype = struct.unpack_from("!H", frame, 12)[0]
        if etype == ETH_ARP and frame[21] == 1 and frame[38:42] == self.ip:  # a request for us
            reply = (
                frame[6:12]
                + self.my_mac
                + struct.pack("!HHHBBH", ETH_ARP, 1, ETH_IP, 6, 4, 2)
                + self.my_mac
                + self.ip
                + frame[22:28]
                + frame[28:32]
            )
            self.submit(reply + bytes(60 - len(reply)))
            return
        if etype == ETH_IP and frame[0:6] in (self.my_mac, b"\xff" * 6):
            self.frames.append(frame)
            self._event.set()

    # ---- sending ----
    def send_ip(
        self,
        dst_mac: bytes,
        dst: str,
        proto: int,
        payload: bytes,
        *,
        ident: int = 1,
        frag: int = 0x4000,
        total_payload: bytes | None = None,
    ) -> None:
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0, self.ip, ip_aton(dst)
        )
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        frame = dst_mac + self.my_mac + struct.pack("!H", ETH_IP) + hdr + payload
        self.submit(frame + bytes(max(0, 60 - len(frame))))

    def send_fragmented(
        self,
        dst_mac: bytes,
        dst: str,
        proto: int,
        payload: bytes,
        piece: int = 1480,
        ident: int = 77,
        order: list[int] | None = None,
    ) -> None:
        """``payload`` (an L4 packet) in fragments of ``piece`` bytes (a multiple of 8),
        sent in ``order`` (indices; default in order)."""
        pieces = [payload[o : o + piece] for o in range(0, len(payload), piece)]
        for i in order if order is not None else range(len(pieces)):
            more = 0x2000 if i < len(pieces) - 1 else 0
            self.send_ip(dst_mac, dst, proto, pieces[i], ident=ident, frag=more | (i * piece // 8))

    def tcp_segment(
        self,
        dst: str,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes = b"",
        window: int = 65535,
        options: bytes = b"",
    ) -> bytes:
        off = (20 + len(options)) // 4
        seg = (
            struct.pack(
                "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, flags, window, 0, 0
            )
            + options
            + payload
        )
        pseudo = self.ip + ip_aton(dst) + struct.pack("!BBH", 0, 6, len(seg))
        return seg[:16] + struct.pack("!H", checksum(pseudo + seg)) + seg[18:]

    def send_tcp(
        self,
        dst_mac: bytes,
        dst: str,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes = b"",
        window: int = 65535,
        options: bytes = b"",
    ) -> None:
        self.send_ip(
            dst_mac, dst, 6, self.tcp_segment(dst, sport, dport, seq, ack, flags, payload, window, options)
        )

    def udp_packet(self, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
        pkt = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        pseudo = self.ip + ip_aton(dst) + struct.pack("!BBH", 0, 17, len(pkt))
        c = checksum(pseudo + pkt) or 0xFFFF
        return pkt[:6] + struct.pack("!H", c) + pkt[8:]

    @staticmethod
    def icmp_echo(ident: int, seq: int, data: bytes) -> bytes:
        pkt = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
        return pkt[:2] + struct.pack("!H", checksum(pkt)) + pkt[4:]

    # ---- receiving ----
    @staticmethod
    def parse_ip(frame: bytes) -> Ip:
        ihl = (frame[14] & 15) * 4
        total = struct.unpack_from("!H", frame, 16)[0]
        ident, frag = struct.unpack_from("!HH", frame, 18)
        return Ip(frame[26:30], frame[30:34], frame[23], ident, frag, frame[14 + ihl : 14 + total])

    @staticmethod
    def parse_tcp(frame: bytes) -> Tcp | None:
        ip = RawPeer.parse_ip(frame)
        if ip.proto != 6:
            return None
        p = ip.payload
        sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", p)
        hl = (off >> 4) * 4
        return Tcp(ip.src, sport, dport, seq, ack, flags, window, p[hl:], p[20:hl])

    async def wait_for(self, match, within: float = 2.0):  # type: ignore[no-untyped-def]
        """The first kept frame (oldest first) for which ``match(frame)`` is truthy, removed
        from ``frames``; None after ``within`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while True:
            for i, f in enumerate(self.frames):
                if match(f):
                    del self.frames[i]
                    return f
            left = end - loop.time()
            if left <= 0:
                return None
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except TimeoutError:
                return None

    async def wait_tcp(self, dport: int, within: float = 2.0) -> Tcp | None:
        f = await self.wait_for(
            lambda fr: fr[23] == 6 and (s := self.parse_tcp(fr)) is not None and s.dport == dport, within
        )
        return self.parse_tcp(f) if f is not None else None
