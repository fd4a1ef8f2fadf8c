"""TAP bridging: real Linux tools in a network namespace this test creates reach guests.

Every address used here (10.77.0.0/24) lives on the TAP device inside a namespace the
test made; nothing is sent anywhere else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from denali.errors import ConfigError, NetError
from denali.kernel import Kernel
from denali.net.ethernet import format_mac
from denali.net.tap import TapPort
from tests.conftest import need_image
from tests.net.netns import need_tools, run

pytestmark = pytest.mark.net
ROOT = Path(__file__).resolve().parents[2]


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
            for cmd in (
                ("ip", "link", "set", dev, "netns", netns),
                ("ip", "-n", netns, "addr", "add", "10.77.0.100/24", "dev", dev),
                ("ip", "-n", netns, "link", "set", dev, "up"),
            ):
                rc, out = await run(*cmd)
                assert rc == 0, (cmd, out)
            srv = await k.spawn("httpd", cmdline="ip=10.77.0.1/24")
            while "listening" not in srv.console.text():  # noqa: ASYNC110 (console has no line event)
                await asyncio.sleep(0.01)
            rc, out = await run("ip", "netns", "exec", netns, "ping", "-c", "3", "-W", "2", "10.77.0.1")
            assert rc == 0, out
            assert b"3 received" in out
            rc, body = await run(
                "ip", "netns", "exec", netns, "curl", "-s", "-m", "10", "http://10.77.0.1/bytes/2258"
            )
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
    code = (
        "import asyncio\nfrom denali.net.tap import TapPort\n"
        "async def m():\n    TapPort('dtapcap').open()\nasyncio.run(m())\n"
    )
    r = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert "permission denied (needs CAP_NET_ADMIN)" in r.stderr


def test_bad_names_refused() -> None:
    for bad in ("", "x" * 16, "a/b"):
        with pytest.raises(NetError):
            TapPort(bad)


def test_tap_spec_parses_host_address() -> None:
    tap = TapPort.parse("dtap0,host=10.77.0.2/24")
    assert tap.device == "dtap0" and str(tap.host) == "10.77.0.2/24"
    assert TapPort.parse("dtap0").host is None
    assert tap.host_commands(tap.host) == ["ip addr add 10.77.0.2/24 dev dtap0", "ip link set dtap0 up"]
    for bad, why in (
        ("dtap0,host=10.77.0.2", "needs a prefix length"),
        ("dtap0,host=nonsense/24", "not an IPv4 address"),
        ("dtap0,host=10.77.0.0/24", "not a host address"),
        ("dtap0,host=10.77.0.2/31", "prefix at most /30"),
        ("dtap0,mtu=9000", "unknown option"),
        (",host=10.77.0.2/24", "invalid TAP device name"),
    ):
        with pytest.raises(ConfigError, match=why):
            TapPort.parse(bad)


class Cli:
    """``denali boot`` run inside a network namespace (``ip netns exec``), read as it runs."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = ""
        self.err = ""

    @classmethod
    async def start(cls, netns: str, *args: str) -> Cli:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-m",
            "denali",
            "boot",
            *args,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self, stream: asyncio.StreamReader, attr: str, text: str) -> None:
        async with asyncio.timeout(30):
            while text not in getattr(self, attr):
                line = await stream.readline()
                if not line:
                    raise AssertionError(f"denali boot ended before {text!r}: {self.out}{self.err}")
                setattr(self, attr, getattr(self, attr) + line.decode())

    async def stdout_until(self, text: str) -> None:
        assert self.proc.stdout is not None
        await self._read(self.proc.stdout, "out", text)

    async def stderr_until(self, text: str) -> None:
        assert self.proc.stderr is not None
        await self._read(self.proc.stderr, "err", text)

    async def interrupt(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(self.proc.communicate(), 30)
        self.out += out.decode()
        self.err += err.decode()
        assert self.proc.returncode is not None
        return self.proc.returncode


async def test_cli_host_option_makes_every_vm_reachable_at_once(netns: str) -> None:
    """``--net tap:DEV,host=ADDR/PREFIX``: curl works right after boot, and the CLI says
    where the VMs are and how to reach them."""
    need_image("httpd")
    dev = f"dtap{os.getpid() % 100000}"
    cli = await Cli.start(
        netns,
        "httpd",
        "--count",
        "3",
        "--net",
        f"tap:{dev},host=10.77.0.254/24",
        "--cmdline",
        "ip=10.77.0.{i}/24",
    )
    try:
        await cli.stdout_until("[vm3] httpd: listening")
        await cli.stderr_until("reach them")
        for i in (1, 2, 3):
            rc, body = await run(
                "ip", "netns", "exec", netns, "curl", "-s", "-m", "10", f"http://10.77.0.{i}/bytes/100"
            )
            assert rc == 0 and body == bytes(ord("a") + j % 26 for j in range(100)), (i, body)
    finally:
        status = await cli.interrupt()
    assert status == 130, cli.err
    assert "denali: 3 VMs are at 10.77.0.1 to 10.77.0.3 (10.77.0.0/24)" in cli.err
    assert (
        f"denali: reach them from this host through {dev} (10.77.0.254/24), e.g. ping 10.77.0.1 "
        "or curl http://10.77.0.1/"
    ) in cli.err
    assert "Traceback" not in cli.err
    rc, _ = await run("ip", "-n", netns, "link", "show", dev)
    assert rc != 0  # the device denali created is gone, and its address with it


async def test_cli_without_host_prints_the_commands_that_work(netns: str) -> None:
    """Without ``host=`` the device is left down; the commands the CLI prints, run as
    printed, make the VM reachable."""
    need_image("httpd")
    dev = f"dtap{os.getpid() % 100000}"
    cli = await Cli.start(netns, "httpd", "--net", f"tap:{dev}", "--cmdline", "ip=10.77.0.1/24")
    try:
        await cli.stderr_until(f"or boot with --net tap:{dev},host=10.77.0.254/24\n")
        await cli.stdout_until("httpd: listening")
        lines = cli.err.splitlines()
        at = lines.index(f"denali: {dev} is down and has no address; to reach the VMs from this host run:")
        command = lines[at + 1].removeprefix("denali:   ")
        assert command == f"ip addr add 10.77.0.254/24 dev {dev} && ip link set {dev} up"
        rc, out = await run("ip", "netns", "exec", netns, "sh", "-c", command)
        assert rc == 0, out
        rc, body = await run(
            "ip", "netns", "exec", netns, "curl", "-s", "-m", "10", "http://10.77.0.1/bytes/5"
        )
        assert (rc, body) == (0, b"abcde")
    finally:
        status = await cli.interrupt()
    assert status == 130 and "Traceback" not in cli.err


async def test_cli_host_address_that_cannot_be_set_is_one_line(netns: str) -> None:
    """A persistent device the user may attach to but not configure (no CAP_NET_ADMIN):
    one line naming the device and the commands an administrator can run."""
    need_tools("setpriv")
    dev = f"dtap{os.getpid() % 100000}"
    rc, out = await run("ip", "-n", netns, "tuntap", "add", dev, "mode", "tap", "user", str(os.geteuid()))
    assert rc == 0, out
    rc, out = await run(
        "ip",
        "netns",
        "exec",
        netns,
        "setpriv",
        "--bounding-set=-net_admin",
        sys.executable,
        "-m",
        "denali",
        "boot",
        "hello",
        "--net",
        f"tap:{dev},host=10.77.0.2/24",
    )
    text = out.decode()
    assert rc == 2, text
    assert text.count("\n") == 1, text
    assert (
        f"cannot give TAP device {dev} the host address 10.77.0.2/24: permission denied (needs "
        f"CAP_NET_ADMIN); an administrator can run: ip addr add 10.77.0.2/24 dev {dev} && "
        f"ip link set {dev} up"
    ) in text
