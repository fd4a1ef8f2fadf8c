"""ARP suppression in the switch: bindings learned from ARP, requests answered by the
switch, announcements swallowed unless an address moved, conflicts refused."""

from __future__ import annotations

import struct

from denali.net import Switch, SwitchConfig
from denali.net.ethernet import BROADCAST
from tests.net.helpers import Recorder, mac


def ip(n: int) -> bytes:
    return bytes((10, 0, 0, n))


def arp(
    op: int,
    sha: bytes,
    spa: bytes,
    tpa: bytes,
    *,
    src: bytes | None = None,
    dst: bytes = BROADCAST,
    tha: bytes = bytes(6),
) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, spa, tha, tpa)
    return dst + (src or sha) + b"\x08\x06" + body + bytes(18)


def vm_ports(sw: Switch, n: int) -> list[Recorder]:
    ports = [Recorder(f"vm{i}", mac=mac(i)) for i in range(1, n + 1)]
    for p in ports:
        sw.attach(p)
    return ports


async def test_announcement_learned_not_flooded_and_requests_answered(switch: Switch) -> None:
    a, b, c = vm_ports(switch, 3)
    a.submit(arp(1, mac(1), ip(1), ip(1)))  # a announces 10.0.0.1
    await switch.join()
    assert b.frames == [] and c.frames == []  # nobody else woken
    b.submit(arp(1, mac(2), ip(2), ip(1)))  # b: who has 10.0.0.1?
    await switch.join()
    assert a.frames == [] and c.frames == []
    [reply] = b.frames
    assert reply[:6] == mac(2) and reply[6:12] == mac(1) and len(reply) == 60
    op, sha, spa, tha, tpa = struct.unpack("!6xH6s4s6s4s", reply[14:42])
    assert (op, sha, spa, tha, tpa) == (2, mac(1), ip(1), mac(2), ip(2))
    st = switch.stats()
    assert (st.arp_bindings, st.arp_answered, st.arp_announcements, st.flooded) == (2, 1, 1, 0)


async def test_unknown_target_is_flooded(switch: Switch) -> None:
    a, b, c = vm_ports(switch, 3)
    a.submit(arp(1, mac(1), ip(1), ip(9)))
    await switch.join()
    assert len(b.frames) == len(c.frames) == 1
    assert switch.stats().arp_answered == 0


async def test_claim_of_a_bound_address_by_another_port_is_not_learned(switch: Switch) -> None:
    a, b, c = vm_ports(switch, 3)
    a.submit(arp(1, mac(1), ip(1), ip(1)))
    b.submit(arp(1, mac(2), ip(1), ip(1)))  # b claims a's address: forwarded, not learned
    await switch.join()
    assert len(c.frames) == 1 and len(a.frames) == 1
    c.frames.clear()
    c.submit(arp(1, mac(3), ip(3), ip(1)))
    await switch.join()
    assert c.frames[0][6:12] == mac(1)  # still a's MAC
    assert switch.stats().arp_conflicts == 1


async def test_sender_hardware_address_must_be_the_source(switch: Switch) -> None:
    a, _, _ = vm_ports(switch, 3)
    lying = Recorder("lying")
    switch.attach(lying)
    lying.submit(arp(1, mac(1), ip(7), ip(7), src=mac(50)))  # sha is not its source
    await switch.join()
    assert len(a.frames) == 1  # flooded like any broadcast, nothing learned
    assert switch.stats().arp_bindings == 0


async def test_departed_address_taken_over_floods_the_announcement(switch: Switch) -> None:
    a, b, c = vm_ports(switch, 3)
    a.submit(arp(1, mac(1), ip(1), ip(1)))
    await switch.join()
    switch.detach(a)
    b.submit(arp(1, mac(2), ip(4), ip(1)))  # the owner left: not answered, flooded
    await switch.join()
    assert len(c.frames) == 1
    d = Recorder("vm4", mac=mac(4))
    switch.attach(d)
    d.submit(arp(1, mac(4), ip(1), ip(1)))  # a new VM takes 10.0.0.1: caches must hear it
    await switch.join()
    assert len(b.frames) == 1 and len(c.frames) == 2
    c.submit(arp(1, mac(3), ip(3), ip(1)))
    await switch.join()
    assert c.frames[-1][6:12] == mac(4)


async def test_binding_from_a_port_without_fixed_mac_follows_the_fdb(switch: Switch) -> None:
    [a] = vm_ports(switch, 1)
    tap, other = Recorder("tap"), Recorder("tap2")
    switch.attach(tap)
    switch.attach(other)
    host = bytes.fromhex("0a0000000001")
    tap.submit(arp(1, host, ip(254), ip(254)))
    await switch.join()
    a.submit(arp(1, mac(1), ip(1), ip(254)))
    await switch.join()
    assert a.frames[-1][6:12] == host  # answered by the switch
    switch.detach(tap)
    a.submit(arp(1, mac(1), ip(1), ip(254)))
    await switch.join()
    assert len(other.frames) >= 1 and other.frames[-1][21] == 1  # host gone: flooded again


async def test_suppression_can_be_turned_off() -> None:
    async with Switch(SwitchConfig(arp_suppress=False)) as sw:
        a, b, c = vm_ports(sw, 3)
        a.submit(arp(1, mac(1), ip(1), ip(1)))
        b.submit(arp(1, mac(2), ip(2), ip(1)))
        await sw.join()
        assert len(c.frames) == 2 and len(a.frames) == 1
        assert sw.stats().arp_bindings == 0


async def test_unicast_reply_teaches_the_switch(switch: Switch) -> None:
    a, b, c = vm_ports(switch, 3)
    a.submit(arp(1, mac(1), ip(1), ip(1)))
    b.submit(arp(2, mac(2), ip(2), ip(1), dst=mac(1), tha=mac(1)))  # unicast reply to a
    await switch.join()
    assert len(a.frames) == 1 and c.frames == []  # forwarded as usual, to a only
    c.submit(arp(1, mac(3), ip(3), ip(2)))
    await switch.join()
    assert c.frames[-1][6:12] == mac(2) and b.frames == []


async def test_one_vm_cannot_fill_the_table() -> None:
    async with Switch(SwitchConfig(arp_per_vm=4)) as sw:
        hostile, other = vm_ports(sw, 2)
        for n in range(10, 30):  # claims 20 addresses
            hostile.submit(arp(1, mac(1), ip(n), ip(n)))
        other.submit(arp(1, mac(2), ip(2), ip(2)))
        await sw.join()
        st = sw.stats()
        assert st.arp_bindings == 5 and st.arp_conflicts == 16  # 4 for the hostile VM, 1 for the other
        other.submit(arp(1, mac(2), ip(2), ip(10)))  # a learned one is still answered
        await sw.join()
        assert other.frames[-1][6:12] == mac(1)


async def test_every_vm_is_learned_past_max_macs() -> None:
    """The bridged-host bound (max_macs) does not cap the VMs: 40 VMs with max_macs=8."""
    async with Switch(SwitchConfig(max_macs=8)) as sw:
        vms = vm_ports(sw, 40)
        for n, p in enumerate(vms, start=1):
            p.submit(arp(1, mac(n), ip(n), ip(n)))
        await sw.join()
        st = sw.stats()
        assert st.arp_bindings == 40 and st.arp_announcements == 40 and st.flooded == 0


async def test_announce_floods_past_suppression_and_learns(switch: Switch) -> None:
    """``Switch.announce`` (a migrated VM's gratuitous ARP): an announcement the switch
    would swallow goes to every other port at once; only from the port's own MAC."""
    import pytest

    from denali.errors import NetError

    a, b, c = vm_ports(switch, 3)
    a.submit(arp(1, mac(1), ip(1), ip(1)))
    await switch.join()
    assert b.frames == [] and c.frames == []  # the ordinary path swallows it
    assert switch.announce(a, arp(1, mac(1), ip(1), ip(1))) == 2
    assert len(b.frames) == len(c.frames) == 1 and a.frames == []
    assert switch.addresses(a) == (ip(1),)
    with pytest.raises(NetError, match="fixed MAC"):
        switch.announce(a, arp(1, mac(2), ip(2), ip(2)))
    assert len(b.frames) == 1
