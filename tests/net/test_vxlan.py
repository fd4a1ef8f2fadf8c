"""VXLAN: two denali processes joined into one LAN, and a Linux vxlan device reaching a
guest. Underlay traffic stays on 127.0.0.1 or on a veth pair between two namespaces the
test creates; overlay addresses (10.88.0.0/24) exist only on those LANs."""

from __future__ import annotations

import asyncio
import os
import struct
import sys

import pytest

from denali.errors import ConfigError
from denali.kernel import Kernel
from denali.net.vxlan import VxlanPort
from tests.conftest import need_image
from tests.net.netns import need_tools, run

pytestmark = pytest.mark.net


async def _wait_line(stream: asyncio.StreamReader, text: bytes) -> None:
    async def find() -> None:
        while text not in await stream.readline():
            pass

    await asyncio.wait_for(find(), 30)


def test_parse_syntax() -> None:
    p = VxlanPort.parse("42@127.0.0.1:5000+127.0.0.2,local=127.0.0.1:6000")
    assert p.vni == 42 and p.remotes == [("127.0.0.1", 5000), ("127.0.0.2", 4789)]
    assert p.local == ("127.0.0.1", 6000)
    for bad in ("42", "x@1.2.3.4", "42@nohost", "42@1.2.3.4:99999", "16777216@1.2.3.4", "1@1.2.3.4,foo=1"):
        with pytest.raises(ConfigError):
            VxlanPort.parse(bad)


def test_datagrams_from_strangers_are_dropped_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = VxlanPort(42, [("127.0.0.2", 4789)])
    good = struct.pack("!II", 0x08000000, 42 << 8) + bytes(60)
    for _ in range(3):
        p.datagram_received(good, ("127.0.0.9", 4789))  # not a remote: spoofed
        p.error_received(ConnectionRefusedError(111, "Connection refused"))
    assert p.stats.drop_spoofed == 3 and p.stats.drop_link_down == 3
    warned = [r.getMessage() for r in caplog.records if r.name == "denali.net.vxlan"]
    assert warned == [
        "vxlan:42: a datagram from 127.0.0.9:4789, which is not a remote, dropped "
        "(later ones are only counted)",
        "vxlan:42: the underlay reports an error: [Errno 111] Connection refused "
        "(later ones are only counted)",
    ], warned


async def test_two_denali_processes_one_lan() -> None:
    need_image("httpd")
    need_image("httpget")
    base = 20000 + os.getpid() % 12000  # below the ephemeral range (32768..), free-port picks' own
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "denali",
        "boot",
        "httpd",
        "--cmdline",
        "ip=10.88.0.1/24",
        "--mac-tag",
        "1",
        "--net",
        f"vxlan:77@127.0.0.1:{base + 1},local=127.0.0.1:{base}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        await _wait_line(server.stdout, b"listening")
        async with Kernel(mac_tag=2) as k:
            vx = VxlanPort.parse(f"77@127.0.0.1:{base},local=127.0.0.1:{base + 1}")
            await vx.open()
            k.switch.attach(vx)
            cli = await k.spawn(
                "httpget", cmdline="ip=10.88.0.2/24 url=http://10.88.0.1/bytes/134007 count=3"
            )
            assert await asyncio.wait_for(cli.wait(), 60) == 0, cli.console.text()
            assert "ok=3 fail=0 bytes=402021" in cli.console.text()
            assert vx.stats.tx_frames > 0 and vx.stats.rx_frames > 0
            vx.close()
    finally:
        server.terminate()
        await server.wait()


async def test_linux_vxlan_device_reaches_a_guest() -> None:
    need_tools("ip", "ping", "curl", "ethtool")
    need_image("httpd")
    tag = os.getpid() % 100000
    ns_host, ns_linux = f"dvh{tag}", f"dvl{tag}"
    cleanup = [("ip", "netns", "del", ns_host), ("ip", "netns", "del", ns_linux)]
    server = None
    try:
        for cmd in (
            ("ip", "netns", "add", ns_host),
            ("ip", "netns", "add", ns_linux),
            (
                "ip",
                "link",
                "add",
                f"dva{tag}",
                "netns",
                ns_host,
                "type",
                "veth",
                "peer",
                "name",
                f"dvb{tag}",
                "netns",
                ns_linux,
            ),
            ("ip", "-n", ns_host, "addr", "add", "10.99.0.1/30", "dev", f"dva{tag}"),
            ("ip", "-n", ns_linux, "addr", "add", "10.99.0.2/30", "dev", f"dvb{tag}"),
            ("ip", "-n", ns_host, "link", "set", f"dva{tag}", "up"),
            ("ip", "-n", ns_linux, "link", "set", f"dvb{tag}", "up"),
            (
                "ip",
                "-n",
                ns_linux,
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "77",
                "remote",
                "10.99.0.1",
                "local",
                "10.99.0.2",
                "dstport",
                "4789",
            ),
            ("ip", "-n", ns_linux, "addr", "add", "10.88.0.100/24", "dev", "vx0"),
            ("ip", "-n", ns_linux, "link", "set", "vx0", "up"),
            # Linux leaves inner checksums to offload hardware a veth does not have
            ("ip", "netns", "exec", ns_linux, "ethtool", "-K", "vx0", "tx", "off"),
            ("ip", "netns", "exec", ns_linux, "ethtool", "-K", f"dvb{tag}", "tx", "off"),
        ):
            rc, out = await run(*cmd)
            assert rc == 0, (cmd, out)
        # the denali kernel runs inside the other namespace, as a real process
        server = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            ns_host,
            sys.executable,
            "-m",
            "denali",
            "boot",
            "httpd",
            "--cmdline",
            "ip=10.88.0.1/24",
            "--net",
            "vxlan:77@10.99.0.2,local=10.99.0.1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert server.stdout is not None
        await _wait_line(server.stdout, b"listening")
        rc, out = await run("ip", "netns", "exec", ns_linux, "ping", "-c", "3", "-W", "2", "10.88.0.1")
        assert rc == 0 and b"3 received" in out, out
        rc, body = await run(
            "ip", "netns", "exec", ns_linux, "curl", "-s", "-m", "10", "http://10.88.0.1/bytes/100"
        )
        assert rc == 0 and body == bytes(ord("a") + i % 26 for i in range(100)), (rc, body[:80])
        rc, body = await run(
            "ip", "netns", "exec", ns_linux, "curl", "-s", "-m", "10", "http://10.88.0.1/bytes/2258"
        )
        assert rc == 0 and body == bytes(ord("a") + i % 26 for i in range(2258))
    finally:
        if server is not None and server.returncode is None:
            server.terminate()
            await server.wait()
        for cmd in cleanup:
            await run(*cmd)


def test_unicast_goes_to_the_remote_its_mac_was_learned_behind() -> None:
    class Sent:
        def __init__(self) -> None:
            self.to: list[tuple[str, int]] = []

        def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
            self.to.append(addr)

        def is_closing(self) -> bool:
            return False

    a, b, linux = ("127.0.0.1", 5001), ("127.0.0.1", 5002), ("127.0.0.9", 4789)
    p = VxlanPort(42, [a, b, linux])
    sent = Sent()
    p._transport = sent  # type: ignore[assignment]
    got: list[bytes] = []
    p.submit = got.append  # type: ignore[method-assign]
    hdr = struct.pack("!II", 0x08000000, 42 << 8)
    mac_a, mac_l = bytes.fromhex("02aa00000001"), bytes.fromhex("02aa00000002")
    frame = b"\xff" * 6 + mac_a + b"\x08\x00" + bytes(46)
    p.datagram_received(hdr + frame, a)  # from a's own port: learned under a
    p.datagram_received(hdr + b"\xff" * 6 + mac_l + b"\x08\x00" + bytes(46), ("127.0.0.9", 40000))
    p.datagram_received(hdr + b"\xff" * 6 + bytes.fromhex("02aa00000003") + bytes(48), ("127.0.0.1", 6000))
    assert len(got) == 3 and p.fdb == {mac_a: a, mac_l: linux}  # 127.0.0.1:6000: which remote?
    p.deliver(mac_a + bytes(6) + b"\x08\x00" + bytes(46))
    assert sent.to == [a]
    sent.to.clear()
    p.deliver(mac_l + bytes(6) + b"\x08\x00" + bytes(46))
    assert sent.to == [linux]
    sent.to.clear()
    p.deliver(b"\xff" * 6 + bytes(6) + b"\x08\x00" + bytes(46))  # broadcast: everyone
    p.deliver(bytes.fromhex("02aa000000ff") + bytes(6) + b"\x08\x00" + bytes(46))  # unknown: everyone
    assert sent.to == [a, b, linux, a, b, linux]
    p.datagram_received(hdr + frame, b)  # the MAC moved (a migrated VM announced itself)
    assert p.fdb[mac_a] == b
