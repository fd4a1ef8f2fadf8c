"""Regressions from attacking the guest stack from outside (tests/net/wirefuzz.py,
tests/net/test_wirefuzz.py): each test sends, from a scripted host on the LAN
(tests/net/rawpeer.py), the traffic that once took a guest service down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from denali.kernel import Kernel
from denali.vm import Vm
from tests.conftest import need_image
from tests.net.rawpeer import ACK, PSH, RST, SYN, RawPeer

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


async def _get(peer: RawPeer, mac: bytes, sport: int, path: str) -> bytes:
    """A whole HTTP/1.0 exchange over a hand-made connection; the reply's bytes."""
    peer.send_tcp(mac, GUEST, sport, 80, 1000, 0, SYN)
    synack = await peer.wait_tcp(sport)
    assert synack is not None and synack.flags == SYN | ACK, synack
    nxt = synack.seq + 1
    req = f"GET {path} HTTP/1.0\r\n\r\n".encode()
    peer.send_tcp(mac, GUEST, sport, 80, 1001, nxt, ACK | PSH, req)
    body = b""
    while True:
        s = await peer.wait_tcp(sport, within=5)
        assert s is not None, body
        if s.payload and s.seq == nxt:
            body += s.payload
            nxt += len(s.payload)
        if s.flags & 1 and s.seq + len(s.payload) == nxt:  # FIN
            peer.send_tcp(mac, GUEST, sport, 80, 1001 + len(req), nxt + 1, ACK)
            return body
        peer.send_tcp(mac, GUEST, sport, 80, 1001 + len(req), nxt, ACK)


async def test_syn_flood_beyond_the_table_does_not_lock_clients_out(lan: tuple[Kernel, RawPeer]) -> None:
    """Half-open connections from a SYN flood once filled the table (4,004 in 16 MiB)
    and every real client was refused (RST) until their SYN-ACK retries ran out, 13 s
    later. Now the oldest half-open connection makes room for a new SYN."""
    k, peer = lan
    vm = await k.spawn("httpd", cmdline=f"ip={GUEST}/24")
    await _up(vm, "listening")
    assert vm.nic is not None
    mac = vm.nic.fixed_mac
    page = await _get(peer, mac, 4000, "/stats")
    stats = dict(line.split() for line in page.decode().split("\r\n\r\n", 1)[1].splitlines())
    table = int(stats["tcp_max_conns"])
    sent = 0
    while sent < table + 1000:  # never answered: every one stays half-open
        for _ in range(100):
            peer.send_tcp(mac, GUEST, 10000 + sent, 80, sent, 0, SYN)
            sent += 1
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.3)
    refused = [f for f in peer.frames if (s := peer.parse_tcp(f)) is not None and s.flags & RST]
    assert not refused, f"{len(refused)} SYNs of the flood were refused"
    peer.frames.clear()
    page = await _get(peer, mac, 4001, "/stats")
    after = dict(line.split() for line in page.decode().split("\r\n\r\n", 1)[1].splitlines())
    # the table filled (SYNs the NIC's queue dropped on a loaded machine never got there)
    assert int(after["tcp_conns_peak"]) == table and int(after["tcp_syn_evicted"]) > 0, (after, vm.nic.stats)
    assert int(after["tcp_refused"]) == 0
    body = await _get(peer, mac, 4002, "/bytes/100")
    assert body.endswith(bytes(ord("a") + i % 26 for i in range(100)))
