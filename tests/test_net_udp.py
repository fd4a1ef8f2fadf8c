"""The guest network stack on the virtual LAN: ARP, ping, UDP echo, isolation, pcap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dpkt
import pytest

from denali.kernel import Kernel
from tests.conftest import need_image

pytestmark = pytest.mark.parametrize("workers", [0, 2], ids=["loop", "workers2"])


async def test_ping_and_udp_echo_between_vms(tmp_path: Path, workers: int) -> None:
    need_image("udpecho")
    need_image("test-netudp")
    pcap = tmp_path / "lan.pcap"
    async with Kernel(workers=workers) as k:
        await k.switch.capture(pcap)
        srv = await k.spawn("udpecho", cmdline="ip=10.0.0.1/24")
        cli = await k.spawn("test-netudp", cmdline="ip=10.0.0.2/24 dst=10.0.0.1 count=8 ping=1")
        assert await asyncio.wait_for(cli.wait(), 30) == 0, cli.console.text()
        assert "ping: 8/8 replies" in cli.console.text()
        assert "udp: 8/8 echoed" in cli.console.text()
        assert "listening on 10.0.0.1:7" in srv.console.text()
        await k.switch.stop_capture()
        assert srv.nic is not None and cli.nic is not None
        srv_mac, cli_mac = srv.nic.fixed_mac, cli.nic.fixed_mac
    kinds = set()
    with pcap.open("rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            if isinstance(eth.data, dpkt.arp.ARP):
                kinds.add(("arp", eth.data.op))
            elif isinstance(eth.data, dpkt.ip.IP):
                ip = eth.data
                assert dpkt.ip.IP(bytes(ip)).sum == ip.sum
                if isinstance(ip.data, dpkt.icmp.ICMP):
                    kinds.add(("icmp", ip.data.type))
                elif isinstance(ip.data, dpkt.udp.UDP):
                    kinds.add(("udp", ip.data.dport))
                assert eth.src in (srv_mac, cli_mac)
    assert {("arp", 1), ("arp", 2), ("icmp", 8), ("icmp", 0), ("udp", 7), ("udp", 5000)} <= kinds


async def test_unicast_is_not_seen_by_a_third_vm(workers: int) -> None:
    need_image("udpecho")
    async with Kernel(workers=workers) as k:
        srv = await k.spawn("udpecho", cmdline="ip=10.0.0.1/24")
        third = await k.spawn("udpecho", cmdline="ip=10.0.0.3/24")
        cli = await k.spawn("test-netudp", cmdline="ip=10.0.0.2/24 dst=10.0.0.1 count=4")
        assert await asyncio.wait_for(cli.wait(), 30) == 0, cli.console.text()
        assert third.nic is not None and srv.nic is not None
        assert srv.nic.stats.tx_frames >= 4
        # the third VM saw the ARP broadcast, never the unicast echo traffic
        assert third.nic.stats.rx_frames <= 2
        assert third.nic.stats.drop_filtered == 0


async def test_vm_without_address_config_says_so(workers: int) -> None:
    need_image("udpecho")
    async with Kernel(workers=workers) as k:
        vm = await k.spawn("udpecho", cmdline="")
        assert await vm.wait() == 1
        assert "need a NIC" in vm.console.text()
        nonic = await k.spawn("udpecho", cmdline="ip=10.0.0.9/24", nic=False)
        assert await nonic.wait() == 1


async def test_given_mac_is_used_and_duplicate_refused(workers: int) -> None:
    import pytest

    from denali.errors import DenaliError

    async with Kernel(workers=workers) as k:
        vm = await k.spawn("test-vregs", mac="02:aa:bb:cc:dd:ee")
        assert await vm.wait() == 0
        assert "mac=02:aa:bb:cc:dd:ee" in vm.console.text()
        await k.spawn("udpecho", cmdline="ip=10.0.0.1/24", mac="02:00:00:00:00:01")
        with pytest.raises(DenaliError):
            await k.spawn("udpecho", cmdline="ip=10.0.0.2/24", mac="02:00:00:00:00:01")
