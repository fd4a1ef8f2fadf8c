"""Two guest TCP senders racing through one bottleneck: how the default congestion
control (``tcp_cc=auto``) shares a queue with a loss-based flow (``tcp_cc=loss``), beside
two loss-based flows and the model alone (``tcp_cc=model``) against a loss-based flow.

Usage: python tools/bench/bench_tcp_share.py [--rounds 5] [--size 4000000]
(root; ip and curl installed: tools/install-test-deps.sh)

Per round, each pair in turn (the order reversed every other round): two httpd VMs,
A with the first control and B with the second, send ``--size`` bytes each at once to
curl in a network namespace through the TAP port's link (20 Mb/s, a 100-frame queue,
10 ms delay toward Linux, seeded). Both transfers overlap the whole time, so A's
completion time over B's is the share B got over A's (1.0: equal shares). Medians of the
per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from common import table

from denali.kernel import Kernel
from denali.net.impair import LinkSpec
from denali.net.tap import TapPort

LINK = "rate=20mbit,delay=10ms,limit=100,dir=in"
PAIRS = (("auto", "loss"), ("loss", "loss"), ("model", "loss"))


async def _run(*cmd: str) -> str:
    p = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(p.communicate(), 300)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {out.decode(errors='replace')}")
    return out.decode()


async def race(a_cc: str, b_cc: str, size: int, seed: int) -> tuple[float, float]:
    """Seconds until A's and B's transfers end, from one start."""
    pid = os.getpid() % 100000
    ns, dev = f"bts{pid}", f"btstap{pid % 1000}"
    await _run("ip", "netns", "add", ns)
    try:
        async with Kernel() as k:
            tap = TapPort(dev)
            tap.open()
            k.switch.attach(tap)
            try:
                await _run("ip", "link", "set", dev, "netns", ns)
                await _run("ip", "-n", ns, "addr", "add", "10.81.0.100/24", "dev", dev)
                await _run("ip", "-n", ns, "link", "set", dev, "up")
                for i, cc in enumerate((a_cc, b_cc)):
                    vm = await k.spawn("httpd", cmdline=f"ip=10.81.0.{i + 1}/24 tcp_cc={cc}", memory="16M")
                    while "listening" not in vm.console.text():  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    url = f"http://10.81.0.{i + 1}/"
                    await _run("ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", url)
                tap.set_link(LinkSpec.parse(f"{LINK},seed={seed}"))
                began = time.monotonic()

                async def fetch(ip: str) -> float:
                    out = await _run(
                        "ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{size_download}",
                        f"http://{ip}/bytes/{size}",
                    )  # fmt: skip
                    if out != str(size):
                        raise RuntimeError(f"{ip}: {out}")
                    return time.monotonic() - began

                a, b = await asyncio.gather(fetch("10.81.0.1"), fetch("10.81.0.2"))
                return a, b
            finally:
                tap.close()
    finally:
        await _run("ip", "netns", "del", ns)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=4_000_000)
    args = ap.parse_args()
    ratios: dict[tuple[str, str], list[float]] = {p: [] for p in PAIRS}
    for r in range(args.rounds):
        for pair in PAIRS if r % 2 == 0 else PAIRS[::-1]:
            a, b = asyncio.run(race(*pair, args.size, seed=r + 1))
            ratios[pair].append(a / b)
            print(f"round {r + 1}: {pair[0]} vs {pair[1]}: {a:.2f} s / {b:.2f} s", flush=True)
    rows = [("A vs B (20 Mb/s, 100-frame queue)", "A's time / B's (median of rounds)", "per round")]
    for pair, xs in ratios.items():
        rows.append(
            (f"{pair[0]} vs {pair[1]}", f"{statistics.median(xs):.2f}", " ".join(f"{x:.2f}" for x in xs))
        )
    table(f"Sharing a bottleneck: {args.rounds} rounds, {time.strftime('%Y-%m-%d')}", rows)


if __name__ == "__main__":
    main()
