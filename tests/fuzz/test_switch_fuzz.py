"""Spoofed and malformed frames and broadcast storms into the switch (60,000, seeded).

A hostile VM-like port (fixed MAC) and a hostile bridged port (no fixed MAC, like a TAP)
send frames of every wrong length, from spoofed, multicast, broadcast and random source
addresses, to every kind of destination, ARP frames claiming the victims' addresses, and
bursts beyond their ingress queues. Every frame is accounted for exactly as the switch's
contract says; no victim ever receives a frame from a source it did not send (beyond the
switch's own ARP answers from true bindings); the victims' ARP bindings hold; a clean
frame still goes through. Then the same attack runs against real guests exchanging UDP
and pings, which must all get through.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct

import pytest

from denali.kernel import Kernel
from denali.net import Switch, SwitchConfig
from denali.net.ethernet import BROADCAST, MAX_FRAME
from tests.conftest import need_image
from tests.net.helpers import Recorder, frame, mac

FRAMES = 60_000
V1, V2, H = mac(1), mac(2), mac(3)
IP1, IP2 = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
LENGTHS = (0, 1, 6, 12, 13, 14, 15, 41, 42, 59, 60, 61, 100, 1514, 1515, 1518, 9000, 65535)


def arp(
    op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes, src: bytes | None = None, dst: bytes = BROADCAST
) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa + tha + tpa
    f = dst + (src if src is not None else sha) + b"\x08\x06" + body
    return f + bytes(60 - len(f))


class Attack:
    """Seeded hostile frames from a port, and what the switch must make of each."""

    def __init__(self, rng: random.Random, own: bytes | None, ips: tuple[bytes, ...] = (IP1, IP2)) -> None:
        self.rng = rng
        self.own = own  # the port's fixed MAC, or None (a bridged port)
        self.ips = ips  # the addresses its ARP frames claim
        self.expect = {"malformed": 0, "spoofed": 0, "passed": 0}

    def source(self) -> bytes:
        r = self.rng
        return r.choice(
            (
                self.own or mac(r.randrange(100, 200)),
                V1,
                V2,
                H,
                BROADCAST,
                b"\x01\x00\x5e\x00\x00\x01",
                bytes(6),
                r.randbytes(6),
                bytes((r.randrange(256) & 0xFE,)) + r.randbytes(5),
            )
        )

    def frame(self) -> bytes:
        r = self.rng
        src = self.source()
        dst = r.choice(
            (BROADCAST, V1, V2, H, mac(r.randrange(100, 200)), r.randbytes(6), b"\x33\x33\x00\x00\x00\x01")
        )
        kind = r.randrange(10)
        if kind < 3:  # ARP: claims on the victims' addresses, requests, garbage
            sha = r.choice((src, V1, V2, r.randbytes(6)))
            spa = r.choice((*self.ips, bytes(4), r.randbytes(4)))
            f = arp(
                r.choice((1, 2, 3, 0)), sha, spa, r.randbytes(6), r.choice((*self.ips, spa)), src=src, dst=dst
            )
            if r.randrange(4) == 0:
                f = f[: r.randrange(len(f))]
        else:
            n = r.choice(LENGTHS) if r.randrange(2) else r.randrange(60, 1515)
            head = dst + src + r.randbytes(2)
            f = (head + r.randbytes(max(0, n - 14)))[:n]
        return f

    def verdict(self, f: bytes) -> str:
        """What the switch must do with ``f`` from this port (see denali.net.switch)."""
        if not 14 <= len(f) <= MAX_FRAME:
            return "malformed"
        if self.own is not None:
            return "spoofed" if f[6:12] != self.own else "passed"
        if f[6] & 1:
            return "malformed"
        return "spoofed" if f[6:12] in (V1, V2, H) else "passed"


def check_received(port: Recorder, sent_by_port: set[bytes]) -> None:
    """Nothing a victim received claims a source it did not have: frames from the victims'
    and the hostile VM's fixed MACs were sent by them, or are the switch's ARP answers
    from their true bindings."""
    true = {V1: IP1, V2: IP2}
    for f in port.frames:
        assert len(f) >= 14 and not f[6] & 1, f[:14].hex()
        src = f[6:12]
        if src in (V1, V2) and f not in sent_by_port:
            assert f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02", f[:42].hex()  # an ARP reply
            assert f[22:28] == src and f[28:32] == true[src], f[:42].hex()  # from the true binding


async def test_hostile_frames_are_counted_and_never_impersonate_anyone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(1111)
    async with Switch(SwitchConfig(max_macs=512)) as sw:
        v1, v2 = Recorder("v1", mac=V1), Recorder("v2", mac=V2)
        hostile = Recorder("hostile", mac=H, ingress_capacity=256)
        bridged = Recorder("bridged", ingress_capacity=256)
        for p in (v1, v2, hostile, bridged):
            sw.attach(p)
        legit = [arp(1, V1, IP1, bytes(6), IP1), arp(1, V2, IP2, bytes(6), IP2)]  # announcements
        v1.submit(legit[0])
        v2.submit(legit[1])
        await sw.join()
        attacks = {hostile: Attack(rng, H), bridged: Attack(rng, None)}
        refused = {hostile: 0, bridged: 0}
        sent = 0
        while sent < FRAMES:
            for port, attack in attacks.items():
                burst = rng.choice((10, 64, 256, 400))  # 400: beyond the ingress queue
                for _ in range(burst):
                    f = attack.frame()
                    if port.submit(f):
                        attack.expect[attack.verdict(f)] += 1
                    else:  # a full queue: counted there, and never forwarded
                        refused[port] += 1
                sent += burst
            await sw.join()
        for port, attack in attacks.items():
            st = port.stats
            assert st.drop_ingress_full == refused[port] and refused[port] > 0
            assert (st.drop_malformed, st.drop_spoofed) == (
                attack.expect["malformed"],
                attack.expect["spoofed"],
            ), port.name
        stats = sw.stats()
        assert stats.frames == 2 + sent - sum(refused.values())
        assert stats.port_errors == 0 and stats.fdb_learned <= 512
        # the victims' bindings held: V2 asks for 10.0.0.1 and gets V1's MAC
        v2.frames.clear()
        v2.submit(arp(1, V2, IP2, bytes(6), IP1))
        v1.submit(frame(V2, V1, tag=77))
        await sw.join()
        assert v2.frames[-2][22:28] == V1 and v2.frames[-2][28:32] == IP1  # the switch's answer
        assert v2.frames[-1] == frame(V2, V1, tag=77)  # and a clean frame goes through
        for victim in (v1, v2):
            check_received(victim, set(legit) | {frame(V2, V1, tag=77)})
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_guests_talk_through_an_attack() -> None:
    need_image("udpecho")
    need_image("test-netudp")
    rng = random.Random(2222)
    async with Kernel() as k:
        srv = await k.spawn("udpecho", cmdline="ip=10.0.0.1/24")
        cli = await k.spawn("test-netudp", cmdline="ip=10.0.0.2/24 dst=10.0.0.1 count=200 ping=1")
        assert srv.nic is not None and cli.nic is not None
        hostile = Recorder("hostile", mac=H, ingress_capacity=256)
        bridged = Recorder("bridged", ingress_capacity=256)
        k.switch.attach(hostile)
        k.switch.attach(bridged)
        victims = {srv.nic.fixed_mac, cli.nic.fixed_mac}
        # ARP claims on the guests' own addresses are left out: the switch forwards a claim
        # it does not learn (see denali.net.switch), so they would poison the guests' caches
        others = (bytes((10, 0, 0, 3)), bytes((10, 0, 0, 4)))
        attacks = [(hostile, Attack(rng, H, others)), (bridged, Attack(rng, None, others))]
        sent = rounds = 0
        while not cli.done:
            rounds += 1
            for port, attack in attacks:
                for _ in range(64):
                    f = attack.frame()
                    if f[6:12] in (V1, V2) and len(f) >= 14:  # impersonate the real guests
                        f = f[:6] + rng.choice(sorted(victims)) + f[12:]
                    port.submit(f)
                    sent += 1
            await asyncio.sleep(0.001)
        assert await cli.wait() == 0, cli.console.text()
        assert "ping: 200/200 replies" in cli.console.text() and "udp: 200/200 echoed" in cli.console.text()
        # The attack ran for the client's whole life, 128 frames per round; how many rounds
        # fit depends on the machine's speed, so only a floor that any machine reaches is set.
        assert rounds >= 10 and sent == rounds * 128
        # Nothing came from the server's address but the server (ARP and IPv4 only; the
        # client's address is free again once it ended, so frames from it may be anyone's).
        assert not srv.done
        for port in (hostile, bridged):
            for f in port.frames:
                if f[6:12] == srv.nic.fixed_mac:
                    assert f[12:14] in (b"\x08\x06", b"\x08\x00"), f[:14].hex()
        assert k.switch.stats().port_errors == 0
