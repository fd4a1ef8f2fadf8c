"""TAP bridging: real Linux tools in a network namespace this test creates reach guests.

Every address used here (10.77.0.0/24) lives on the TAP device inside a namespace the
test made; nothing is sent anywhere else.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from denali.errors import NetError
from denali.kernel import Kernel
from denali.net.ethernet import format_mac
from denali.net.tap import TapPort
from tests.conftest import need_image
from tests.net.netns import need_tools, run

pytestmark = pytest.mark.net






@pytest.fixture
async def netns() -> AsyncIterator[str]:
    need_tools("ip", "ping", "curl")
    name = f"dnl{os.getpid()}"
    rc, out = await run("ip", "netns", "add", name)
    assert rc == 0, out
    try:
        yield name
    finally:
        await run("ip", "netns", "del", name)


async def test_ping_curl_and_arp_from_a_namespace(netns: str) -> None:
    need_image("httpd")
    dev = f"dtap{os.getpid() % 100000}"
    async with Kernel() as k:
        tap = TapPort(dev)
        tap.open()
        k.switch.attach(tap)
        try:
            for cmd in (("ip", "link", "set", dev, "netns", netns),
                        ("ip", "-n", netns, "addr", "add", "10.77.0.100/24", "dev", dev),
                        ("ip", "-n", netns, "link", "set", dev, "up")):
                rc, out = await run(*cmd)
                assert rc == 0, (cmd, out)
            srv = await k.spawn("httpd", cmdline="ip=10.77.0.1/24")
            while "listening" not in srv.console.text():  # noqa: ASYNC110 (console has no line event)
                await asyncio.sleep(0.01)
            rc, out = await run("ip", "netns", "exec", netns, "ping", "-c", "3", "-W", "2", "10.77.0.1")
            assert rc == 0, out
            assert b"3 received" in out
            rc, body = await run("ip", "netns", "exec", netns, "curl", "-s", "-m", "10",
                                  "http://10.77.0.1/bytes/2258")
            assert rc == 0
            assert body == bytes(ord("a") + i % 26 for i in range(2258))
            rc, neigh = await run("ip", "-n", netns, "neigh", "show", "10.77.0.1")
            assert srv.nic is not None
            assert format_mac(srv.nic.fixed_mac).encode() in neigh.lower()
            assert tap.stats.tx_frames > 0 and tap.stats.rx_frames > 0
        finally:
            tap.close()


async def test_missing_tun_device_is_one_clear_error() -> None:
    tap = TapPort("dtapnone", tun="/nonexistent/tun")
    with pytest.raises(NetError, match="does not exist"):
        tap.open()


def test_missing_cap_net_admin_is_one_clear_error() -> None:
    need_tools("setpriv")
    code = ("import asyncio\nfrom denali.net.tap import TapPort\n"
            "async def m():\n    TapPort('dtapcap').open()\nasyncio.run(m())\n")
    r = subprocess.run(["setpriv", "--bounding-set=-net_admin", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "permission denied (needs CAP_NET_ADMIN)" in r.stderr


def test_bad_names_refused() -> None:
    for bad in ("", "x" * 16, "a/b"):
        with pytest.raises(NetError):
            TapPort(bad)
