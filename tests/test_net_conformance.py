"""IP, ICMP and TCP conformance of the guest stack, driven by a scripted host on the LAN
(tests/net/rawpeer.py) that sends exactly the packets an RFC rule is about: LISTEN-state
handling (RFC 9293 3.10.7.2), RFC 5961 challenge ACKs, fragment reassembly and fragmented
replies, ICMP port unreachable, broadcast pings, reassembly timeouts."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator

import pytest

from denali.kernel import Kernel
from denali.vm import Vm
from tests.conftest import need_image
from tests.net.rawpeer import ACK, FIN, PSH, RST, SYN, URG, RawPeer

GUEST = "10.9.0.1"
PEER = "10.9.0.2"


async def _up(vm: Vm, word: str) -> None:
    for _ in range(500):
        if word in vm.console.text():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(vm.console.text())


@pytest.fixture
async def lan() -> AsyncIterator[tuple[Kernel, RawPeer]]:
    need_image("httpd")
    async with Kernel() as k:
        peer = RawPeer("peer", bytes.fromhex("02aa00000002"), PEER)
        k.switch.attach(peer)
        yield k, peer


async def _httpd(k: Kernel, extra: str = "") -> tuple[Vm, bytes]:
    vm = await k.spawn("httpd", cmdline=f"ip={GUEST}/24 {extra}")
    await _up(vm, "listening")
    assert vm.nic is not None
    return vm, vm.nic.fixed_mac


async def _handshake(peer: RawPeer, mac: bytes, sport: int, isn: int = 1000) -> int:
    """Opens a connection to port 80; returns the guest's ISN + 1 (its next sequence)."""
    peer.send_tcp(mac, GUEST, sport, 80, isn, 0, SYN)
    synack = await peer.wait_tcp(sport)
    assert synack is not None and synack.flags == SYN | ACK and synack.ack == isn + 1
    peer.send_tcp(mac, GUEST, sport, 80, isn + 1, synack.seq + 1, ACK)
    return synack.seq + 1


@pytest.mark.parametrize(
    "flags,name", [(FIN, "FIN"), (0, "NULL"), (FIN | PSH | URG, "Xmas"), (SYN | FIN, "SYN+FIN")]
)
async def test_listen_drops_fin_null_xmas(lan: tuple[Kernel, RawPeer], flags: int, name: str) -> None:
    k, peer = lan
    _vm, mac = await _httpd(k)
    peer.send_tcp(mac, GUEST, 5000, 80, 1, 0, flags)
    assert await peer.wait_tcp(5000, within=0.4) is None, f"{name} to a listener was answered"
    # the listener is fine: a SYN still gets its SYN-ACK, an ACK gets a RST (3.10.7.2)
    peer.send_tcp(mac, GUEST, 5001, 80, 1, 0, SYN)
    s = await peer.wait_tcp(5001)
    assert s is not None and s.flags == SYN | ACK
    peer.send_tcp(mac, GUEST, 5002, 80, 1, 777, ACK)
    r = await peer.wait_tcp(5002)
    assert r is not None and r.flags & RST and r.seq == 777


async def test_closed_port_answers_rst(lan: tuple[Kernel, RawPeer]) -> None:
    k, peer = lan
    _vm, mac = await _httpd(k)
    peer.send_tcp(mac, GUEST, 5003, 81, 100, 0, FIN)
    r = await peer.wait_tcp(5003)
    assert r is not None and r.flags == RST | ACK and r.ack == 101


async def test_rfc5961_in_window_rst_and_syn_get_challenge_acks(lan: tuple[Kernel, RawPeer]) -> None:
    k, peer = lan
    _vm, mac = await _httpd(k)
    gseq = await _handshake(peer, mac, 6000)
    await asyncio.sleep(0.05)
    # an in-window RST that is not exactly rcv_nxt: challenge ACK, connection lives
    peer.send_tcp(mac, GUEST, 6000, 80, 1001 + 100, 0, RST)
    c = await peer.wait_tcp(6000)
    assert c is not None and c.flags == ACK and c.ack == 1001 and c.seq == gseq
    # a SYN on the established connection: challenge ACK too
    peer.send_tcp(mac, GUEST, 6000, 80, 5555, 0, SYN)
    c = await peer.wait_tcp(6000)
    assert c is not None and c.flags == ACK and c.ack == 1001
    # still alive: a request is answered
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    peer.send_tcp(mac, GUEST, 6000, 80, 1001, gseq, ACK | PSH, req)
    got = b""
    for _ in range(5):
        s = await peer.wait_tcp(6000)
        assert s is not None
        got += s.payload
        if b"Hello" in got:
            break
    assert got.startswith(b"HTTP/1.1 200") and b"Hello from a denali VM" in got
    peer.send_tcp(mac, GUEST, 6000, 80, 1001 + len(req), gseq + len(got), ACK)
    await asyncio.sleep(0.05)
    peer.frames.clear()
    # an out-of-window RST is ignored silently; the exact one resets
    peer.send_tcp(mac, GUEST, 6000, 80, 1001 + len(req) + 10_000_000, 0, RST)
    assert await peer.wait_tcp(6000, within=0.3) is None
    peer.send_tcp(mac, GUEST, 6000, 80, 1001 + len(req), 0, RST)
    await asyncio.sleep(0.1)
    peer.frames.clear()
    peer.send_tcp(mac, GUEST, 6000, 80, 1001 + len(req), gseq + len(got), ACK)
    r = await peer.wait_tcp(6000)
    assert r is not None and r.flags & RST  # the connection is gone


async def test_unacceptable_ack_is_answered_not_taken(lan: tuple[Kernel, RawPeer]) -> None:
    k, peer = lan
    _vm, mac = await _httpd(k)
    gseq = await _handshake(peer, mac, 6100)
    peer.send_tcp(mac, GUEST, 6100, 80, 1001, gseq + 100000, ACK)  # acks data never sent
    c = await peer.wait_tcp(6100)
    assert c is not None and c.flags == ACK and c.seq == gseq


async def test_reassembled_ping_gets_a_fragmented_reply(lan: tuple[Kernel, RawPeer]) -> None:
    k, peer = lan
    _vm, mac = await _httpd(k)
    for size in (1473, 4000, 20000):
        data = os.urandom(size)
        # out of order, to exercise the bitmap
        pkt = RawPeer.icmp_echo(0x1234, size % 1000, data)
        n = (len(pkt) + 1479) // 1480
        peer.send_fragmented(mac, GUEST, 1, pkt, ident=size % 65536, order=list(reversed(range(n))))
        parts: dict[int, bytes] = {}
        more = True
        while more or len(b"".join(parts[o] for o in sorted(parts))) < len(pkt):
            f = await peer.wait_for(lambda fr: fr[23] == 1, within=2)
            assert f is not None, f"no reply to a {size}-byte ping"
            ip = RawPeer.parse_ip(f)
            parts[(ip.frag & 0x1FFF) * 8] = ip.payload
            if not ip.frag & 0x2000:
                more = False
        whole = b"".join(parts[o] for o in sorted(parts))
        assert whole[0] == 0 and whole[8:] == data  # an echo reply with every byte
    assert len(parts) > 1  # the reply to 20,000 bytes came in fragments


async def test_udp_large_datagram_echoed_and_closed_port_unreachable(lan: tuple[Kernel, RawPeer]) -> None:
    need_image("udpecho")
    k, peer = lan
    vm = await k.spawn("udpecho", cmdline=f"ip={GUEST}/24")
    await _up(vm, "udpecho")
    assert vm.nic is not None
    mac = vm.nic.fixed_mac
    data = os.urandom(8000)
    peer.send_fragmented(mac, GUEST, 17, peer.udp_packet(GUEST, 4444, 7, data), ident=9)
    parts: dict[int, bytes] = {}
    while True:
        f = await peer.wait_for(lambda fr: fr[23] == 17, within=2)
        assert f is not None
        ip = RawPeer.parse_ip(f)
        parts[(ip.frag & 0x1FFF) * 8] = ip.payload
        whole = b"".join(parts[o] for o in sorted(parts))
        if len(whole) >= 8 and len(whole) >= struct.unpack_from("!H", whole, 4)[0]:
            break
    assert whole[8:] == data
    peer.send_ip(mac, GUEST, 17, peer.udp_packet(GUEST, 4445, 9999, b"anyone?"))
    f = await peer.wait_for(lambda fr: fr[23] == 1, within=2)
    assert f is not None
    icmp = RawPeer.parse_ip(f).payload
    assert icmp[0] == 3 and icmp[1] == 3  # destination unreachable: port
    assert icmp[8 + 20 : 8 + 22] == struct.pack("!H", 4445)  # it quotes our datagram


async def test_broadcast_ping_is_not_answered(lan: tuple[Kernel, RawPeer]) -> None:
    k, peer = lan
    _vm, mac = await _httpd(k)
    peer.send_ip(b"\xff" * 6, "10.9.0.255", 1, RawPeer.icmp_echo(1, 1, b"x" * 32))
    peer.send_ip(b"\xff" * 6, "255.255.255.255", 1, RawPeer.icmp_echo(1, 2, b"x" * 32))
    assert await peer.wait_for(lambda fr: fr[23] == 1, within=0.4) is None
    peer.send_ip(mac, GUEST, 1, RawPeer.icmp_echo(1, 3, b"x" * 32))
    assert await peer.wait_for(lambda fr: fr[23] == 1, within=2) is not None  # unicast is


async def test_incomplete_datagram_times_out_with_time_exceeded(lan: tuple[Kernel, RawPeer]) -> None:
    k, peer = lan
    _vm, mac = await _httpd(k, "ipfrag_ms=300")
    pkt = RawPeer.icmp_echo(7, 7, os.urandom(3000))
    peer.send_ip(mac, GUEST, 1, pkt[:1480], ident=55, frag=0x2000)  # the first of three only
    f = await peer.wait_for(lambda fr: fr[23] == 1, within=3)
    assert f is not None
    icmp = RawPeer.parse_ip(f).payload
    assert icmp[0] == 11 and icmp[1] == 1  # time exceeded in reassembly
    # the rest arriving now does not complete anything: the first part is gone
    peer.send_ip(mac, GUEST, 1, pkt[1480:2960], ident=55, frag=0x2000 | 185)
    peer.send_ip(mac, GUEST, 1, pkt[2960:], ident=55, frag=370)
    assert await peer.wait_for(lambda fr: fr[23] == 1, within=0.5) is None


async def test_fragment_past_the_ipv4_limit_is_dropped(lan: tuple[Kernel, RawPeer]) -> None:
    k, peer = lan
    _vm, mac = await _httpd(k)
    peer.send_ip(mac, GUEST, 1, b"\0" * 1480, ident=66, frag=0x2000 | 8190)  # ends past 65,535
    peer.send_ip(mac, GUEST, 1, RawPeer.icmp_echo(2, 2, b"ok"))
    f = await peer.wait_for(lambda fr: fr[23] == 1, within=2)
    assert f is not None and RawPeer.parse_ip(f).payload[8:] == b"ok"
