"""The Zipf HTTP benchmark on one host of 2 kernels against 1 kernel, side by side
(issue 16, item 2: "with 2 kernels on this 2-core machine, the Zipf HTTP benchmark
serves at least 1.7x what one kernel serves").

Usage (root; ip from iproute2):
  python tools/bench/bench_host.py [--vms 100] [--rounds 5] [--seconds 20] [--warmup 5]
                                   [--conc 64] [--kernels 2] [--client vxlan|tap]
                                   [--load c|python]

Each round boots ``denali boot httpd --kernels K --count N`` as a real process from
this tree, once with K = 1 and once with K = --kernels (alternating which goes first).
The load generator reaches the VMs one of two ways (``--client``):

- ``tap``: a TAP device as the LAN's uplink (on kernel 0, so frames for the VMs of the
  other kernels cross the host's VXLAN mesh once more), moved into a Linux namespace
  made here;
- ``vxlan`` (default): the host runs in one Linux namespace made here and the client in
  another, joined by a veth pair (10.99.0.1 and .2); the client is a Linux vxlan device
  (Linux does not send VXLAN to a local address it has no vxlan device of its own on,
  hence the pair) that is a peer of every kernel's VXLAN port
  (``--net vxlan:`` for one kernel, ``--host-lan`` for several) with a static forwarding
  entry for each VM's MAC, so each request goes straight to the kernel of its VM, as a
  client on another machine of a VXLAN cluster would.

The load generator runs in the namespace and sends GETs for 2,258-byte documents to VMs
drawn from a Zipf distribution (alpha 1), from --conc clients over keep-alive
connections, exactly as bench_zipf.py does. ``--load c`` (default) runs zipfload.c,
built here with gcc, which costs about a fifth of lanload.py's CPU per request;
``--load python`` runs lanload.py itself (the client of the earlier figures). The
client shares the machine's cores with the kernels, so its CPU is CPU the second
kernel does not get. Requests answered after
--warmup seconds are counted. Prints each round, the per-round ratio, the median of the
ratios, and the load average before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lan import HERE, HOST_IP, PREFIX, sh, vm_ip

from denali.cli.common import EXIT_INTERRUPTED

ROOT = HERE.parents[1]
MAC_TAG = 0x5A


def _mac(vm_id: int) -> str:
    return f"02:{MAC_TAG:02x}:" + ":".join(f"{b:02x}" for b in vm_id.to_bytes(4, "big"))


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


CLIENT_PORT = 4789
"""The Linux vxlan device's port inside the namespace; kernel j's is KERNEL_PORT + j."""
KERNEL_PORT = 4790
UNDER_HOST, UNDER_CLIENT = "10.99.0.1", "10.99.0.2"
"""The veth pair's addresses: the host's namespace, the client's."""


async def _underlay(ns_host: str, ns: str, tag: int) -> None:
    """A veth pair between the host's namespace and the client's."""
    a, b = f"dha{tag}", f"dhc{tag}"
    await sh("ip", "link", "add", a, "netns", ns_host, "type", "veth", "peer", "name", b, "netns", ns)
    await sh("ip", "-n", ns_host, "addr", "add", f"{UNDER_HOST}/30", "dev", a)
    await sh("ip", "-n", ns, "addr", "add", f"{UNDER_CLIENT}/30", "dev", b)
    await sh("ip", "-n", ns_host, "link", "set", a, "up")
    await sh("ip", "-n", ns, "link", "set", b, "up")
    await sh("ip", "netns", "exec", ns, "ethtool", "-K", b, "tx", "off")


async def _vxlan_client(ns: str, kernels: int, n: int) -> None:
    """The client's vxlan device: a peer of each kernel, and each VM's MAC pinned to
    the kernel that runs it (VM i on kernel (i - 1) mod K)."""
    await sh(
        "ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", UNDER_CLIENT,
        "dstport", str(CLIENT_PORT), "srcport", str(CLIENT_PORT), str(CLIENT_PORT + 1), "nolearning",
    )  # fmt: skip
    await sh("ip", "-n", ns, "link", "set", "vx0", "mtu", "1500")
    await sh("ip", "netns", "exec", ns, "ethtool", "-K", "vx0", "tx", "off")
    with tempfile.NamedTemporaryFile("w", suffix=".fdb") as f:
        for j in range(kernels):
            f.write(f"fdb append 00:00:00:00:00:00 dev vx0 dst {UNDER_HOST} port {KERNEL_PORT + j}\n")
        for i in range(1, n + 1):
            f.write(f"fdb add {_mac(i)} dev vx0 dst {UNDER_HOST} port {KERNEL_PORT + (i - 1) % kernels}\n")
        f.flush()
        await sh("ip", "netns", "exec", ns, "bridge", "-batch", f.name)


def build_zipfload(out_dir: str) -> Path:
    """zipfload.c compiled with the machine's gcc into ``out_dir``."""
    out = Path(out_dir) / "zipfload"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(HERE / "zipfload.c"), "-lm"], check=True)
    return out


async def point(
    kernels: int, n: int, seconds: float, warmup: float, conc: int, client: str, load_cmd: list[str]
) -> dict[str, Any]:
    """One measurement: a fresh host of ``kernels`` kernels serving ``n`` httpd VMs."""
    tag = os.getpid() % 100000
    ns, dev = f"dhb{tag}", f"dhb{tag}"
    ns_host = f"dhh{tag}"
    await sh("ip", "netns", "add", ns)
    await sh("ip", "-n", ns, "link", "set", "lo", "up")
    where: list[str] = []
    if client == "tap":
        lan = ["--net", f"tap:{dev}"]
    else:
        await sh("ip", "netns", "add", ns_host)
        await sh("ip", "-n", ns_host, "link", "set", "lo", "up")
        await _underlay(ns_host, ns, tag)
        where = ["ip", "netns", "exec", ns_host]
        dev = "vx0"
        peer = f"42@{UNDER_CLIENT}:{CLIENT_PORT},local={UNDER_HOST}:{KERNEL_PORT}"
        lan = ["--net", f"vxlan:{peer}"] if kernels == 1 else ["--host-lan", peer]
    boot = await asyncio.create_subprocess_exec(
        *where, sys.executable, "-m", "denali", "boot", "httpd", "--kernels", str(kernels), "--count", str(n),
        "-c", f"ip={{ip:10.64.0.0}}/{PREFIX}", "--mac-tag", str(MAC_TAG), *lan, "-q",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert boot.stdout is not None
        listening = 0
        async with asyncio.timeout(300):
            while listening < n:
                line = await boot.stdout.readline()
                if not line:
                    raise RuntimeError(f"denali boot --kernels {kernels} ended while booting")
                listening += b"httpd: listening" in line
        drain = asyncio.ensure_future(_drain(boot.stdout))
        if client == "tap":
            await sh("ip", "link", "set", dev, "netns", ns)
        else:
            await _vxlan_client(ns, kernels, n)
        await sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1")
        await sh("ip", "-n", ns, "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", dev)
        await sh("ip", "-n", ns, "link", "set", dev, "up")
        await sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "5", vm_ip(1))
        with tempfile.NamedTemporaryFile("w", suffix=".neigh") as f:
            for i in range(1, n + 1):
                f.write(f"neigh replace {vm_ip(i)} lladdr {_mac(i)} dev {dev} nud permanent\n")
            f.flush()
            await sh("ip", "-n", ns, "-batch", f.name)
        load = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, *load_cmd, "zipf", vm_ip(1), str(n),
            "--seconds", str(warmup + seconds), "--conc", str(conc), "--pool", "1024", "--report", "1",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        lines = []
        assert load.stdout is not None
        async for raw in load.stdout:
            lines.append(json.loads(raw))
        if await load.wait() != 0:
            raise RuntimeError("lanload failed")
        measured = [ln for ln in lines if "t" in ln and ln["t"] > warmup]
        ok = sum(ln["ok"] for ln in measured)
        span = measured[-1]["t"] - warmup if measured else 1.0
        drain.cancel()
        return {"kernels": kernels, "req_s": ok / span, "errors": lines[-1].get("errors", 0)}
    finally:
        if boot.returncode is None:
            boot.send_signal(signal.SIGTERM)
        rc = await boot.wait()
        if rc not in (0, EXIT_INTERRUPTED):
            print(f"  (denali boot --kernels {kernels} ended with status {rc})", file=sys.stderr)
        await sh("ip", "netns", "del", ns, check=False)
        await sh("ip", "netns", "del", ns_host, check=False)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--kernels", type=int, default=2)
    ap.add_argument("--client", choices=("vxlan", "tap"), default="vxlan")
    ap.add_argument("--load", choices=("c", "python"), default="c")
    args = ap.parse_args()
    build_dir = tempfile.TemporaryDirectory(prefix="bench_host.")
    if args.load == "c":
        load_cmd = [str(build_zipfload(build_dir.name))]
    else:
        load_cmd = [sys.executable, str(HERE / "lanload.py")]
    print(
        f"client: {args.client}, load generator: {args.load}; load average before: {loadavg()}  "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
    )
    ratios = []
    one: list[float] = []
    many: list[float] = []
    for r in range(args.rounds):
        order = (1, args.kernels) if r % 2 == 0 else (args.kernels, 1)
        got: dict[int, dict[str, Any]] = {}
        for k in order:
            got[k] = asyncio.run(
                point(k, args.vms, args.seconds, args.warmup, args.conc, args.client, load_cmd)
            )
        a, b = got[1]["req_s"], got[args.kernels]["req_s"]
        one.append(a)
        many.append(b)
        ratios.append(b / a)
        print(
            f"round {r + 1}: 1 kernel {a:,.0f} req/s ({got[1]['errors']} errors), {args.kernels} kernels "
            f"{b:,.0f} req/s ({got[args.kernels]['errors']} errors): {b / a:.2f}x   load {loadavg()}",
            flush=True,
        )
    print(
        f"median: 1 kernel {statistics.median(one):,.0f} req/s, {args.kernels} kernels "
        f"{statistics.median(many):,.0f} req/s; median of the per-round ratios "
        f"{statistics.median(ratios):.2f}x "
        f"(goal >= 1.7x); load average after: {loadavg()}"
    )


if __name__ == "__main__":
    main()
