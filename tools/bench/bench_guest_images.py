"""Two sets of guest images side by side: VM-to-VM transfer time with the httpd and
httpget of each, alternating (A, B / B, A) in one process; medians of per-round ratios.

Usage: python tools/bench/bench_guest_images.py --before DIR --after DIR [--rounds 5]

Build the "before" images from another revision with
``git worktree add /tmp/old REV && make -C /tmp/old/guestos OUT=/tmp/old/denali/images``.
Cases: a 20 MB document on a clean LAN, and 2 MB through 20 Mb/s, 10 ms each way and a
50-frame queue (the server's port; seeded). Times are httpget's own clock.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics

from denali.kernel import Kernel
from denali.net.impair import LinkSpec

CASES = {
    "20 MB VM to VM, clean LAN": (20_000_000, None),
    "2 MB, 20 Mb/s + 10 ms, 50-frame queue": (
        2_000_000,
        LinkSpec(rate_bps=20e6, delay_s=0.01, limit=50, seed=2),
    ),
}


async def fetch(images: str, size: int, link: LinkSpec | None) -> int:
    """Milliseconds httpget took for one document of ``size`` bytes."""
    async with Kernel() as k:
        srv = await k.spawn(f"{images}/httpd.elf", cmdline="ip=10.0.0.1/24", link=link)
        while "listening" not in srv.console.text():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        url = f"http://10.0.0.1/bytes/{size}"
        cli = await k.spawn(f"{images}/httpget.elf", cmdline=f"ip=10.0.0.2/24 url={url} timeout=200")
        await asyncio.wait_for(cli.wait(), 300)
        out = cli.console.text()
        m = re.search(r"ok=1 fail=0 bytes=\d+ ms=(\d+)", out)
        if m is None:
            raise RuntimeError(out)
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    images = {"before": args.before, "after": args.after}
    res: dict[tuple[str, str], list[int]] = {(c, w): [] for c in CASES for w in images}
    for r in range(args.rounds):
        for case, (size, link) in CASES.items():
            for w in ("before", "after") if r % 2 == 0 else ("after", "before"):
                res[(case, w)].append(asyncio.run(fetch(images[w], size, link)))
        print(f"round {r + 1}: " + ", ".join(f"{c} {w} {v[-1]} ms" for (c, w), v in res.items()), flush=True)
    for case, (size, _) in CASES.items():
        b, a = res[(case, "before")], res[(case, "after")]
        ratio = statistics.median([y / x for x, y in zip(b, a, strict=True)])
        mbps = size * 8 / statistics.median(a) / 1000
        print(
            f"{case}: before {statistics.median(b)} ms, after {statistics.median(a)} ms (medians); "
            f"after/before {ratio:.2f} (median of per-round ratios); after {mbps:.0f} Mb/s"
        )


if __name__ == "__main__":
    main()
