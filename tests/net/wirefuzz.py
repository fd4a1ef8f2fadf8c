"""A seeded generator of malformed and adversarial frames, sent through a TAP device at
guest VMs (the guest TCP/IP stack attacked from outside).

Run inside a network namespace that holds the TAP device (``ip netns exec NS python3 -m
tests.net.wirefuzz ...``): it sends raw Ethernet frames on the device with an
``AF_PACKET`` socket, as hosts it invents on the VMs' subnet (it answers ARP for them,
so the guests' replies reach it), and prints one JSON line with what it sent and saw.

Every ``--batch`` frames it pings each VM from one of its hosts and waits (up to
``--probe-wait`` seconds) for the replies: the flood is paced to what the guests
process, and a VM that stops answering shows in ``probes_lost``.

Classes (``CLASSES``), chosen at random per frame with the seeded generator:

- ``eth``: frames of every wrong length (0 to 9,000 bytes), 802.3 length fields,
  VLAN tags, unknown ethertypes, truncated headers;
- ``arp``: wrong hardware/protocol types and sizes, every opcode, truncated bodies,
  requests and replies from and for odd addresses (never the Linux host's own);
- ``ip``: bad version, IHL (0-15, beyond the datagram), total length (below the
  header, beyond the frame, below the frame), checksum, options (every type, lengths
  0, 1, beyond the header), TTL 0, odd protocols and addresses;
- ``frag``: fragments at random offsets, overlapping and duplicated fragments, ones
  past 65,535 bytes, tiny ones, DF with MF, and endless streams of first fragments
  with new IDs that never complete;
- ``icmp``: every type 0-255 with random codes and bodies (short, empty, bad checksum,
  errors quoting garbage or live connections), echo requests of every size;
- ``udp``: length field 0, below 8, beyond and below the IP payload, zero and bad
  checksums, to the echo and stats ports, closed ports, broadcast;
- ``tcp``: data offsets 0-15 (beyond the segment), options (MSS, window scale,
  SACK-permitted, SACK, timestamps with every wrong length and value; EOL/NOP runs;
  unknown kinds; lengths past the header), urgent pointers, all 12 flag bits in every
  combination, to the listener, closed ports and live connections;
- ``conn``: real connections (the generator completes handshakes and sends requests)
  then attacked: data, ACKs, SACK blocks, FINs and SYNs with sequence and
  acknowledgment numbers at, just inside and just outside the window edges, and far away;
- ``synflood``: bursts of SYNs from many invented hosts and ports that never complete;
- ``rststorm``: bursts of RSTs (and RST+ACK) with sequence numbers across the window of
  live connections and everywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from denali.kernel import Kernel
from denali.net.ethernet import format_mac
from denali.net.tap import TapPort

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
BROADCAST = b"\xff" * 6
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
CLASSES = ("eth", "arp", "ip", "frag", "icmp", "udp", "tcp", "conn", "synflood", "rststorm")
PROBE_ID = 0xD15A
ROOT = Path(__file__).resolve().parents[2]


def aton(s: str) -> bytes:
    return socket.inet_aton(s)


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    *,
    ident: int = 0,
    frag: int = 0,
    ttl: int = 64,
    options: bytes = b"",
) -> bytes:
    """A well-formed IPv4 header (options padded to 4 bytes) and its payload."""
    options += bytes(-len(options) % 4)
    ihl = 5 + len(options) // 4
    h = (
        struct.pack(
            "!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), ident, frag, ttl, proto, 0, src, dst
        )
        + options
    )
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


def l4sum(src: bytes, dst: bytes, proto: int, seg: bytes) -> int:
    return csum(src + dst + struct.pack("!BBH", 0, proto, len(seg)) + seg)


def tcp_seg(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    *,
    wnd: int = 65535,
    options: bytes = b"",
    data: bytes = b"",
    urg: int = 0,
    offset: int | None = None,
    good_sum: bool = True,
) -> bytes:
    """A TCP segment; ``offset`` overrides the data offset field (in words), and the
    12 flag bits (NS, CWR, ECE, URG, ACK, PSH, RST, SYN, FIN) come from ``flags``."""
    options += bytes(-len(options) % 4)
    off = 5 + len(options) // 4 if offset is None else offset
    h = (
        struct.pack(
            "!HHIIHHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            ((off & 15) << 12) | (flags & 0xFFF),
            wnd & 0xFFFF,
            0,
            urg & 0xFFFF,
        )
        + options
    )
    seg = h + data
    s = l4sum(src, dst, 6, seg) ^ (0 if good_sum else 0x5A5A)
    return seg[:16] + struct.pack("!H", s) + seg[18:]


def udp_dgram(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    data: bytes,
    *,
    length: int | None = None,
    sum_: int | None = None,
) -> bytes:
    n = 8 + len(data) if length is None else length
    seg = struct.pack("!HHHH", sport, dport, n & 0xFFFF, 0) + data
    s = l4sum(src, dst, 17, seg) if sum_ is None else sum_
    return seg[:6] + struct.pack("!H", s) + seg[8:]


def icmp_msg(typ: int, code: int, body: bytes, *, good_sum: bool = True) -> bytes:
    m = struct.pack("!BBH", typ, code, 0) + body
    s = csum(m) ^ (0 if good_sum else 0xA5A5)
    return m[:2] + struct.pack("!H", s) + m[4:]


@dataclass
class Target:
    """A VM under attack: its address, MAC and the TCP port it listens on (0: none)."""

    ip: bytes
    mac: bytes
    tcp_port: int


@dataclass
class Conn:
    """A connection the generator opened: our side's numbers and the guest's."""

    target: Target
    ip: bytes
    mac: bytes
    sport: int
    snd_nxt: int
    rcv_nxt: int = 0
    wnd: int = 0
    established: bool = False
    born: float = field(default_factory=time.monotonic)


@dataclass
class Counts:
    sent: int = 0
    send_errors: int = 0
    per_class: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    probes: int = 0
    probes_answered: int = 0
    probes_lost: int = 0
    arp_answered: int = 0
    received: int = 0
    synacks: int = 0
    rsts_seen: int = 0
    established: int = 0
    tcp_flag_combinations: int = 0  # distinct 12-bit flag combinations sent
    icmp_types: int = 0  # distinct ICMP types sent


class Fuzzer:
    """Seeded frame generator and sender over one ``AF_PACKET`` socket."""

    def __init__(self, dev: str, seed: int, targets: list[Target], subnet: str) -> None:
        self.rng = random.Random(seed)
        self.targets = targets
        base = subnet.rsplit(".", 1)[0]
        # the hosts we play: .128-.191, MAC 02:66:7a:00:00:NN
        self.hosts = {aton(f"{base}.{n}"): bytes((2, 0x66, 0x7A, 0, 0, n)) for n in range(128, 192)}
        self.host_ips = list(self.hosts)
        self.subnet_bcast = aton(f"{base}.255")
        self.linux_ip = aton(f"{base}.100")
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((dev, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.c = Counts()
        self.conns: list[Conn] = []
        self.pending: dict[tuple[bytes, int], Conn] = {}
        self.probe_seq = 0
        self.awaiting: set[tuple[bytes, int]] = set()
        self.flag_combo = 0  # the next of the 4,096 TCP flag combinations (all, in turn)
        self.icmp_type = 0  # the next of the 256 ICMP types (all, in turn)

    # ---- sending ----
    def send(self, frame: bytes, cls: str | None = None) -> None:
        try:
            self.sock.send(frame)
            self.c.sent += 1
            if cls:
                self.c.per_class[cls] += 1
        except OSError:
            self.c.send_errors += 1  # too long for the device, or too short for Linux

    def eth(self, dst: bytes, src: bytes, etype: int, payload: bytes) -> bytes:
        return dst + src + struct.pack("!H", etype) + payload

    def ip_frame(self, t: Target, src: bytes, packet: bytes) -> bytes:
        mac = self.hosts.get(src) or self.rng.choice(list(self.hosts.values()))
        return self.eth(t.mac, mac, 0x0800, packet)

    def me(self) -> tuple[bytes, bytes]:
        ip = self.rng.choice(self.host_ips)
        return ip, self.hosts[ip]

    def odd_ip(self) -> bytes:
        r = self.rng
        return r.choice(
            (
                bytes(4),
                b"\xff" * 4,
                self.subnet_bcast,
                aton("127.0.0.1"),
                aton("224.0.0.1"),
                r.choice(self.targets).ip,
                r.choice(self.host_ips),
                r.randbytes(4),
            )
        )

    # ---- receiving ----
    def poll(self, wait: float) -> None:
        """Handles what arrived (ARP for our hosts, probe replies, SYN-ACKs), waiting
        up to ``wait`` seconds for the first frame."""
        end = time.monotonic() + wait
        while True:
            left = end - time.monotonic()
            r, _, _ = select.select([self.sock], [], [], max(left, 0) if self.awaiting else 0)
            if not r:
                return
            for _ in range(256):
                try:
                    frame, addr = self.sock.recvfrom(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                self.c.received += 1
                self.handle(frame)
            if not self.awaiting or time.monotonic() >= end:
                return

    def handle(self, f: bytes) -> None:
        if len(f) < 14:
            return
        etype = struct.unpack("!H", f[12:14])[0]
        if etype == 0x0806 and len(f) >= 42:
            op = struct.unpack("!H", f[20:22])[0]
            tpa = f[38:42]
            if op == 1 and tpa in self.hosts:
                sha, spa = f[22:28], f[28:32]
                body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + self.hosts[tpa] + tpa + sha + spa
                self.send(self.eth(sha, self.hosts[tpa], 0x0806, body))
                self.c.arp_answered += 1
            return
        if etype != 0x0800 or len(f) < 34:
            return
        ihl = (f[14] & 15) * 4
        proto, src, dst = f[23], f[26:30], f[30:34]
        p = f[14 + ihl :]
        if proto == 1 and len(p) >= 8 and p[0] == 0:
            ident, seq = struct.unpack("!HH", p[4:8])
            if ident == PROBE_ID:
                self.awaiting.discard((src, seq))
        elif proto == 6 and len(p) >= 20 and dst in self.hosts:
            sport, dport, seq, ack, offfl, wnd = struct.unpack("!HHIIHH", p[:16])
            flags = offfl & 0x3F
            if flags & RST:
                self.c.rsts_seen += 1
            c = self.pending.get((dst, dport))
            if c is None or sport != c.target.tcp_port or c.target.ip != src:
                return
            if flags & SYN and flags & ACK and ack == c.snd_nxt:
                self.c.synacks += 1
                c.rcv_nxt = (seq + 1) & 0xFFFFFFFF
                c.wnd = wnd
                if not c.established:
                    c.established = True
                    self.c.established += 1
                    self.send(
                        self.ip_frame(
                            c.target,
                            c.ip,
                            ipv4(
                                c.ip,
                                c.target.ip,
                                6,
                                tcp_seg(
                                    c.ip, c.target.ip, c.sport, c.target.tcp_port, c.snd_nxt, c.rcv_nxt, ACK
                                ),
                            ),
                        )
                    )
                    self.conns.append(c)
            elif flags & RST:
                self.pending.pop((dst, dport), None)
                if c in self.conns:
                    self.conns.remove(c)
            elif c.established:
                dlen = len(p) - (offfl >> 12) * 4
                if dlen > 0:
                    c.rcv_nxt = (seq + dlen) & 0xFFFFFFFF
                if flags & FIN:
                    c.rcv_nxt = (seq + max(dlen, 0) + 1) & 0xFFFFFFFF
                c.wnd = wnd

    # ---- probing ----
    def probe(self, wait: float) -> None:
        """Pings every target and waits for all replies (or ``wait`` seconds)."""
        self.probe_seq = (self.probe_seq + 1) & 0xFFFF
        ip, _ = self.me()
        for t in self.targets:
            body = struct.pack("!HH", PROBE_ID, self.probe_seq) + b"denali-wirefuzz-probe"
            self.send(self.ip_frame(t, ip, ipv4(ip, t.ip, 1, icmp_msg(8, 0, body))))
            self.awaiting.add((t.ip, self.probe_seq))
            self.c.probes += 1
        self.poll(wait)
        self.c.probes_lost += len(self.awaiting)
        self.c.probes_answered += len(self.targets) - len(self.awaiting)
        self.awaiting.clear()

    # ---- the classes ----
    def gen_eth(self) -> None:
        r = self.rng
        t = r.choice(self.targets)
        _, mac = self.me()
        n = r.choice(
            (
                0,
                1,
                6,
                12,
                13,
                14,
                15,
                20,
                33,
                41,
                42,
                59,
                60,
                61,
                64,
                100,
                1000,
                1513,
                1514,
                1515,
                1518,
                1519,
                1522,
                2000,
                9000,
                r.randrange(0, 1600),
            )
        )
        dst = r.choice((t.mac, BROADCAST, b"\x01\x00\x5e\x00\x00\x01", r.randbytes(6)))
        etype = r.choice(
            (0x0800, 0x0806, 0x8100, 0x88A8, 0x86DD, 0x0000, 0x05DC, 0x05FF, 0x0600, r.randrange(0x10000))
        )
        head = dst + mac + struct.pack("!H", etype)
        if etype == 0x8100:
            head += struct.pack("!HH", r.randrange(0x10000), r.choice((0x0800, 0x0806, 0x8100)))
        body = r.randbytes(max(0, n - len(head)))
        if r.random() < 0.5 and etype == 0x0800 and len(body) >= 20:  # an IP header, wrong frame size
            ip, _ = self.me()
            pkt = ipv4(ip, t.ip, r.choice((1, 6, 17)), r.randbytes(40))
            body = pkt[: len(body)] + body[len(pkt) :]
        self.send((head + body)[:n], "eth")

    def gen_arp(self) -> None:
        r = self.rng
        t = r.choice(self.targets)
        ip, mac = self.me()
        htype = r.choice((1, 1, 0, 6, 0xFFFF))
        ptype = r.choice((0x0800, 0x0800, 0x86DD, 0, 0x0806))
        hlen = r.choice((6, 6, 0, 1, 5, 7, 8, 16, 255))
        plen = r.choice((4, 4, 0, 1, 3, 5, 6, 16, 255))
        op = r.choice((1, 2, 1, 2, 0, 3, 4, 8, 9, 0xFFFF, r.randrange(0x10000)))
        spa = r.choice((ip, ip, bytes(4), b"\xff" * 4, aton("224.0.0.5"), r.randbytes(4)))
        sha = r.choice((mac, mac, BROADCAST, bytes(6), b"\x01\x00\x5e\x00\x00\x01"))
        tpa = r.choice((t.ip, t.ip, self.subnet_bcast, r.randbytes(4)))
        body = struct.pack("!HHBBH", htype, ptype, hlen, plen, op)
        body += (sha + r.randbytes(max(0, hlen - 6)))[:hlen] + (spa + r.randbytes(max(0, plen - 4)))[:plen]
        body += (r.randbytes(6) + r.randbytes(max(0, hlen - 6)))[:hlen]
        body += (tpa + r.randbytes(max(0, plen - 4)))[:plen]
        cut = r.choice((len(body), len(body), 0, 4, 7, 8, 20, 27, r.randrange(len(body) + 1)))
        dst = r.choice((BROADCAST, t.mac))
        self.send(self.eth(dst, mac, 0x0806, body[:cut]), "arp")

    def gen_ip(self) -> None:
        r = self.rng
        t = r.choice(self.targets)
        ip, _ = self.me()
        proto = r.choice((1, 6, 17, 0, 2, 4, 41, 47, 50, 255, r.randrange(256)))
        payload = r.randbytes(r.choice((0, 1, 7, 8, 19, 20, 40, 100, 1000, 1480)))
        if proto == 1 and r.random() < 0.5:
            payload = icmp_msg(8, 0, r.randbytes(r.randrange(64)))
        opts = b""
        if r.random() < 0.4:
            kinds = (0, 1, 7, 68, 130, 131, 137, 148, r.randrange(256))
            while len(opts) < r.choice((1, 4, 20, 40)):
                k = r.choice(kinds)
                if k in (0, 1):
                    opts += bytes((k,))
                else:
                    ln = r.choice((0, 1, 2, 3, 4, 11, 39, 40, 41, 255))
                    opts += bytes((k, ln)) + r.randbytes(max(0, min(ln, 40) - 2))
            opts = opts[:40]
        pkt = bytearray(
            ipv4(
                ip,
                r.choice((t.ip, t.ip, self.odd_ip())),
                proto,
                payload,
                ident=r.randrange(0x10000),
                ttl=r.choice((64, 0, 1, 255)),
                options=opts,
            )
        )
        mode = r.randrange(8)
        if mode == 0:
            pkt[0] = (r.randrange(16) << 4) | (pkt[0] & 15)  # version
        elif mode == 1:
            pkt[0] = 0x40 | r.randrange(16)  # IHL
        elif mode == 2:
            total = r.choice((0, 1, 19, 20, 21, len(pkt) - 1, len(pkt) + 1, 1500, 65535))
            struct.pack_into("!H", pkt, 2, total)
        elif mode == 3:
            struct.pack_into("!H", pkt, 10, r.randrange(0x10000))  # checksum
        elif mode == 4:
            pkt[12:16] = self.odd_ip()  # source
        if mode in (0, 1, 2, 4) and r.random() < 0.7:  # keep the checksum right so parsing goes further
            ihl = min((pkt[0] & 15) * 4, len(pkt))
            struct.pack_into("!H", pkt, 10, 0)
            if ihl >= 12:
                struct.pack_into("!H", pkt, 10, csum(bytes(pkt[:ihl])))
        if r.random() < 0.2:
            pkt = pkt[: r.randrange(len(pkt) + 1)]
        self.send(self.ip_frame(t, ip, bytes(pkt)), "ip")

    def gen_frag(self) -> None:
        r = self.rng
        t = r.choice(self.targets)
        ip, _ = self.me()
        proto = r.choice((1, 17, 6))
        ident = r.randrange(0x10000)
        mode = r.randrange(6)
        whole = (
            icmp_msg(8, 0, r.randbytes(r.choice((1500, 3000, 8000, 20000))))
            if proto == 1
            else udp_dgram(ip, t.ip, 9999, 7, r.randbytes(r.choice((1500, 4000, 9000))))
        )
        frags: list[tuple[int, int, bytes]] = []  # (offset in 8-byte units, MF, data)
        if mode == 0:  # overlapping pieces of a real datagram, shuffled, some duplicated
            at = 0
            while at < len(whole):
                n = r.choice((8, 16, 64, 512, 1024, 1480)) & ~7
                start = max(0, at - r.choice((0, 0, 8, 16, 64)))
                start -= start % 8
                frags.append((start // 8, int(start + n < len(whole)), whole[start : start + n]))
                at = start + n
            r.shuffle(frags)
            frags += [r.choice(frags) for _ in range(r.randrange(3))]
        elif mode == 1:  # endless: first fragments with new IDs that never complete
            for _ in range(r.randrange(1, 20)):
                frags.append((0, 1, r.randbytes(r.choice((8, 64, 1480)))))
        elif mode == 2:  # past 65,535 bytes
            frags.append((r.choice((8189, 8190, 8191)), r.randrange(2), r.randbytes(r.choice((8, 64, 1480)))))
        elif mode == 3:  # tiny, unaligned, DF with MF
            frags.append((r.randrange(8192), 1, r.randbytes(r.randrange(1, 8))))
        elif mode == 4:  # conflicting overlaps: same offset, different data and sizes
            for _ in range(r.randrange(2, 6)):
                frags.append((r.choice((0, 1, 2)), r.randrange(2), r.randbytes(r.choice((8, 16, 24, 1000)))))
        else:  # a last fragment only, or a middle one
            frags.append((r.randrange(1, 2000), r.randrange(2), r.randbytes(r.choice((8, 100, 1480)))))
        for off, mf, data in frags[:40]:
            flags = (mf << 13) | (r.random() < 0.05) << 14
            pkt = ipv4(
                ip,
                t.ip,
                proto,
                data,
                ident=ident if mode != 1 else r.randrange(0x10000),
                frag=flags | (off & 0x1FFF),
            )
            self.send(self.ip_frame(t, ip, pkt), "frag")

    def gen_icmp(self) -> None:
        r = self.rng
        t = r.choice(self.targets)
        ip, _ = self.me()
        if r.random() < 0.7:
            typ = self.icmp_type & 255
            self.icmp_type += 1
            self.c.icmp_types = min(self.icmp_type, 256)
        else:
            typ = r.choice((0, 3, 4, 5, 8, 11, 12, 13, 14, 17, 18))
        code = r.choice((0, 1, 2, 3, 4, 13, 255, r.randrange(256)))
        body = r.randbytes(r.choice((0, 1, 3, 4, 8, 27, 28, 64, 548, 1472)))
        if typ in (3, 4, 5, 11, 12) and r.random() < 0.6:  # an error quoting a datagram of ours
            quoted_src = t.ip
            c = r.choice(self.conns) if self.conns and r.random() < 0.5 else None
            if c is not None:
                inner = ipv4(c.target.ip, c.ip, 6, struct.pack("!HHI", c.target.tcp_port, c.sport, c.rcv_nxt))
                t = c.target
            else:
                inner = ipv4(quoted_src, ip, r.choice((6, 17, 1)), r.randbytes(r.choice((0, 4, 8, 20))))
                if r.random() < 0.3:
                    inner = inner[: r.randrange(len(inner) + 1)]
            body = struct.pack("!I", r.choice((0, 576, 68, 1, r.randrange(1 << 32)))) + inner
        msg = icmp_msg(typ, code, body, good_sum=r.random() < 0.85)
        dst = r.choice((t.ip, t.ip, t.ip, self.subnet_bcast, b"\xff" * 4))
        frame = self.ip_frame(t, ip, ipv4(ip, dst, 1, msg))
        if dst != t.ip and r.random() < 0.5:
            frame = BROADCAST + frame[6:]
        self.send(frame, "icmp")

    def gen_udp(self) -> None:
        r = self.rng
        t = r.choice(self.targets)
        ip, _ = self.me()
        data = r.randbytes(r.choice((0, 1, 7, 8, 100, 1472, 1473)))
        dport = r.choice((7, 7, 8, 0, 53, 80, 65535, r.randrange(0x10000)))
        n = r.choice((None, None, 0, 1, 7, 8, len(data) + 7, len(data) + 9, len(data) + 1000, 65535))
        s = r.choice((None, None, None, 0, r.randrange(0x10000)))
        seg = udp_dgram(ip, t.ip, r.choice((7, 8, 68, r.randrange(0x10000))), dport, data, length=n, sum_=s)
        dst = r.choice((t.ip, t.ip, t.ip, self.subnet_bcast))
        if r.random() < 0.2:
            seg = seg[: r.randrange(len(seg) + 1)]
        self.send(self.ip_frame(t, ip, ipv4(ip, dst, 17, seg)), "udp")

    def tcp_options(self) -> bytes:
        r = self.rng
        out = b""
        for _ in range(r.randrange(1, 6)):
            k = r.choice((0, 1, 2, 3, 4, 5, 8, 30, 34, 254, r.randrange(256)))
            if k in (0, 1):
                out += bytes((k,)) * r.randrange(1, 4)
                continue
            normal = {2: 4, 3: 3, 4: 2, 5: 2 + 8 * r.randrange(1, 5), 8: 10}.get(k, r.randrange(2, 12))
            ln = normal if r.random() < 0.5 else r.choice((0, 1, 2, 3, normal - 1, normal + 1, 40, 255))
            if k == 2:
                val = struct.pack("!H", r.choice((0, 1, 88, 536, 1460, 9000, 65535)))
            elif k == 3:
                val = bytes((r.choice((0, 7, 14, 15, 16, 255)),))
            elif k == 5:
                base = r.choice(self.conns).rcv_nxt if self.conns else r.getrandbits(32)
                val = b"".join(
                    struct.pack(
                        "!II",
                        (base + r.randrange(-70000, 70000)) & 0xFFFFFFFF,
                        (base + r.randrange(-70000, 70000)) & 0xFFFFFFFF,
                    )
                    for _ in range(4)
                )
            else:
                val = r.randbytes(40)
            out += bytes((k, ln & 255)) + val[: max(0, min(ln, 40) - 2)]
        return out[:40]

    def gen_tcp(self) -> None:
        r = self.rng
        t = r.choice(self.targets)
        ip, _ = self.me()
        if r.random() < 0.6:  # every combination of the 12 flag bits in turn, the classic 8 first
            flags = self.flag_combo & 0xFFF
            self.flag_combo += 1
            self.c.tcp_flag_combinations = min(self.flag_combo, 4096)
        else:
            flags = r.choice((SYN, SYN | ACK, FIN, 0, 0x3F, FIN | PSH | URG, SYN | FIN, SYN | RST, RST, ACK))
        opts = self.tcp_options() if r.random() < 0.6 else b""
        data = r.randbytes(r.choice((0, 0, 1, 10, 100, 1000, 1460)))
        off = None if r.random() < 0.6 else r.randrange(16)
        dport = r.choice((t.tcp_port or 80, t.tcp_port or 80, 7, 0, r.randrange(0x10000)))
        urg = r.choice((0, 1, len(data), len(data) + 1, 65535, r.randrange(0x10000)))
        seg = tcp_seg(
            ip,
            t.ip,
            r.randrange(1024, 65536),
            dport,
            r.getrandbits(32),
            r.getrandbits(32),
            flags,
            wnd=r.choice((0, 1, 65535, r.randrange(0x10000))),
            options=opts,
            data=data,
            urg=urg,
            offset=off,
            good_sum=r.random() < 0.9,
        )
        if r.random() < 0.1:
            seg = seg[: r.randrange(len(seg) + 1)]
        self.send(self.ip_frame(t, ip, ipv4(ip, t.ip, 6, seg)), "tcp")

    def open_conn(self, cls: str) -> None:
        r = self.rng
        tcp_targets = [t for t in self.targets if t.tcp_port]
        if not tcp_targets:
            return
        t = r.choice(tcp_targets)
        ip, mac = self.me()
        sport = r.randrange(20000, 60000)
        iss = r.getrandbits(32)
        normal = struct.pack("!BBH", 2, 4, r.choice((536, 1460, 88))) + b"\x04\x02\x01\x03\x03\x07"
        opts = r.choice((b"", normal, self.tcp_options()))
        seg = tcp_seg(ip, t.ip, sport, t.tcp_port, iss, 0, SYN, wnd=r.choice((65535, 1024, 0)), options=opts)
        self.send(self.ip_frame(t, ip, ipv4(ip, t.ip, 6, seg)), cls)
        if cls == "conn" and len(self.pending) < 2048:
            self.pending[(ip, sport)] = Conn(t, ip, mac, sport, (iss + 1) & 0xFFFFFFFF)

    def gen_synflood(self) -> None:
        for _ in range(self.rng.randrange(1, 40)):
            self.open_conn("synflood")

    def gen_conn(self) -> None:
        r = self.rng
        live = [c for c in self.conns if c.established]
        if len(live) < 8 or r.random() < 0.1:
            self.open_conn("conn")
            return
        c = r.choice(live)
        t = c.target
        w = max(c.wnd, 1)
        edge = r.choice((0, 1, -1, w - 1, w, w + 1, 2 * w, -w, 1 << 31, (1 << 31) - 1, r.getrandbits(32)))
        seq = c.snd_nxt + r.choice((0, 0, 0, 1, -1, 65535, 65536, -65536, 1 << 31, r.getrandbits(32)))
        ack = c.rcv_nxt + edge
        kind = r.randrange(8)
        data = b""
        flags = ACK
        if kind == 0:  # a request, in order: the guest answers with data we then ACK weirdly
            data = b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % r.choice((1, 100, 3000, 20000))
            seq = c.snd_nxt
            ack = c.rcv_nxt
            flags = ACK | PSH
            c.snd_nxt = (c.snd_nxt + len(data)) & 0xFFFFFFFF
        elif kind == 1:
            data = r.randbytes(r.choice((1, 100, 1460)))
            flags = ACK | r.choice((0, PSH, URG, FIN))
        elif kind == 2:
            flags = r.choice((ACK | FIN, FIN, ACK | SYN, SYN, ACK | RST, ACK | URG))
        elif kind == 3:  # duplicate ACKs with SACK blocks
            flags = ACK
            seq = c.snd_nxt
        else:
            flags = r.randrange(1 << 9)
        opts = b""
        if kind == 3 or r.random() < 0.3:
            opts = self.tcp_options()
        seg = tcp_seg(
            c.ip,
            t.ip,
            c.sport,
            t.tcp_port,
            seq,
            ack,
            flags,
            wnd=r.choice((0, 1, 100, 65535)),
            options=opts,
            data=data,
            urg=r.choice((0, 1, 65535)),
        )
        self.send(self.ip_frame(t, c.ip, ipv4(c.ip, t.ip, 6, seg)), "conn")
        if flags & (RST | SYN) and r.random() < 0.5:  # the guest may have dropped it
            self.conns.remove(c)
            self.pending.pop((c.ip, c.sport), None)
        if len(self.conns) > 64:
            old = self.conns.pop(0)
            self.pending.pop((old.ip, old.sport), None)

    def gen_rststorm(self) -> None:
        r = self.rng
        live = [c for c in self.conns if c.established]
        for _ in range(r.randrange(1, 50)):
            if live and r.random() < 0.7:
                c = r.choice(live)
                t, ip, sport = c.target, c.ip, c.sport
                seq = c.snd_nxt + r.choice((0, 1, -1, r.randrange(-70000, 70000), r.getrandbits(32)))
                ack = c.rcv_nxt + r.choice((0, 1, -1, r.getrandbits(32)))
            else:
                t = r.choice(self.targets)
                ip, _ = self.me()
                sport = r.randrange(1024, 65536)
                seq, ack = r.getrandbits(32), r.getrandbits(32)
            flags = r.choice((RST, RST | ACK, RST | ACK, RST | SYN, RST | FIN))
            seg = tcp_seg(ip, t.ip, sport, t.tcp_port or 80, seq, ack, flags, wnd=0)
            self.send(self.ip_frame(t, ip, ipv4(ip, t.ip, 6, seg)), "rststorm")

    # ---- the run ----
    def run(self, count: int, batch: int, probe_wait: float) -> Counts:
        gens = {name: getattr(self, f"gen_{name}") for name in CLASSES}
        # weights: stateless classes most, the stateful ones often enough to matter
        weights = {
            "eth": 8,
            "arp": 6,
            "ip": 12,
            "frag": 8,
            "icmp": 10,
            "udp": 10,
            "tcp": 18,
            "conn": 14,
            "synflood": 2,
            "rststorm": 2,
        }
        names = list(CLASSES)
        w = [weights[n] for n in names]
        for _ in range(2):
            self.probe(probe_wait)  # ARP resolved both ways before the flood
        next_probe = batch
        while self.c.sent < count:
            gens[self.rng.choices(names, w)[0]]()
            self.poll(0)
            if self.c.sent >= next_probe:
                self.probe(probe_wait)
                next_probe = self.c.sent + batch
        self.probe(probe_wait)
        return self.c


def udp_stats(ip: str, timeout: float = 2.0) -> dict[str, int]:
    """A udpecho VM's figures (its port 8), by name; {} if it does not answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for _ in range(3):
            s.sendto(b"stats", (ip, 8))
            try:
                data = s.recv(2048)
            except TimeoutError:
                continue
            return {k: int(v) for k, v in (line.split() for line in data.decode().splitlines())}
    return {}


def parse_target(s: str) -> Target:
    """``IP,MAC[,PORT]``."""
    parts = s.split(",")
    port = int(parts[2]) if len(parts) > 2 else 0
    return Target(aton(parts[0]), bytes.fromhex(parts[1].replace(":", "")), port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--udp-stats", metavar="IP", help="only print a udpecho VM's figures (JSON) and exit")
    ap.add_argument("--dev")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=64, help="frames between probes")
    ap.add_argument("--probe-wait", type=float, default=2.0)
    ap.add_argument("--subnet", default="10.78.0.0", help="the VMs' /24 (the generator plays .128-.191)")
    ap.add_argument("--target", action="append", default=[], help="IP,MAC[,TCP_PORT], repeatable")
    args = ap.parse_args(argv)
    if args.udp_stats:
        print(json.dumps(udp_stats(args.udp_stats)))
        return 0
    if not args.dev or not args.target:
        ap.error("--dev and --target are needed")
    fz = Fuzzer(args.dev, args.seed, [parse_target(t) for t in args.target], args.subnet)
    t0 = time.monotonic()
    c = fz.run(args.count, args.batch, args.probe_wait)
    out = {**c.__dict__, "seconds": round(time.monotonic() - t0, 2)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---- the test bed: a namespace, a TAP device, an httpd VM and a udpecho VM ----


class Bed:
    """``async with Bed(kernel, tag) as bed``: namespace ``dwf<tag>`` holding TAP device
    ``dwf<tag>`` (10.78.0.100/24, MTU 9,000) on the kernel's LAN, an httpd VM at
    10.78.0.1 and a udpecho VM at 10.78.0.2; all removed on exit."""

    def __init__(self, kernel: Kernel, tag: int, *, httpd_cmdline: str = "") -> None:
        self.kernel = kernel
        self.ns = f"dwf{tag}"
        self.dev = f"dwf{tag % 1000000}"
        self.httpd_cmdline = httpd_cmdline
        self.tap: TapPort | None = None

    async def __aenter__(self) -> Bed:
        rc, out = await self.host("ip", "netns", "add", self.ns)
        if rc:
            raise RuntimeError(out.decode())
        try:
            self.tap = TapPort(self.dev)
            self.tap.open()
            self.kernel.switch.attach(self.tap)
            for cmd in (
                ("ip", "link", "set", self.dev, "netns", self.ns),
                ("ip", "-n", self.ns, "addr", "add", "10.78.0.100/24", "dev", self.dev),
                ("ip", "-n", self.ns, "link", "set", self.dev, "mtu", "9000", "up"),
            ):
                rc, out = await self.host(*cmd)
                if rc:
                    raise RuntimeError(f"{' '.join(cmd)}: {out.decode()}")
            self.httpd = await self.kernel.spawn("httpd", cmdline=f"ip=10.78.0.1/24 {self.httpd_cmdline}")
            self.udpecho = await self.kernel.spawn("udpecho", cmdline="ip=10.78.0.2/24")
            for _ in range(1000):
                if all("listening" in vm.console.text() for vm in (self.httpd, self.udpecho)):
                    break
                await asyncio.sleep(0.01)
            else:
                raise RuntimeError("the VMs did not start listening")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.tap is not None:
            self.tap.close()
        await self.host("ip", "netns", "del", self.ns)

    @staticmethod
    async def host(*cmd: str, limit: float = 30) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
        assert proc.returncode is not None
        return proc.returncode, out

    async def in_ns(self, *cmd: str, limit: float = 30) -> tuple[int, bytes]:
        """Runs a command in the namespace: (exit status, stdout + stderr)."""
        return await self.host("ip", "netns", "exec", self.ns, *cmd, limit=limit)

    async def curl(self, path: str, limit: float = 10) -> tuple[int, bytes]:
        return await self.in_ns("curl", "-s", "-m", str(limit), f"http://10.78.0.1{path}", limit=limit + 5)

    async def figures(self) -> tuple[dict[str, int], dict[str, int]]:
        """(httpd's /stats, udpecho's port-8 figures), fetched from the namespace; {} for
        one that does not answer."""
        rc, page = await self.curl("/stats")
        http = (
            {k: int(v) for k, v in (ln.split() for ln in page.decode().splitlines() if ln.strip())}
            if rc == 0
            else {}
        )
        rc, udp = await self.in_ns(sys.executable, "-m", "tests.net.wirefuzz", "--udp-stats", "10.78.0.2")
        return http, (json.loads(udp) if rc == 0 else {})

    def command(self, count: int, seed: int) -> list[str]:
        assert self.httpd.nic is not None and self.udpecho.nic is not None
        return [
            "ip",
            "netns",
            "exec",
            self.ns,
            sys.executable,
            "-m",
            "tests.net.wirefuzz",
            "--dev",
            self.dev,
            "--seed",
            str(seed),
            "--count",
            str(count),
            "--target",
            f"10.78.0.1,{format_mac(self.httpd.nic.fixed_mac)},80",
            "--target",
            f"10.78.0.2,{format_mac(self.udpecho.nic.fixed_mac)}",
        ]

    async def fuzz(self, count: int, seed: int, limit: float) -> dict[str, Any]:
        """Runs the generator in the namespace; its summary."""
        proc = await asyncio.create_subprocess_exec(
            *self.command(count, seed),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), limit)
        if proc.returncode:
            raise RuntimeError(f"wirefuzz failed: {err.decode()[-2000:]}")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result
