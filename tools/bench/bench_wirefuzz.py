"""The guest TCP/IP stack under a long hostile flood through TAP: 1,000,000 seeded
malformed and adversarial frames (``tests/net/wirefuzz.py``, every class it has) from a
Linux network namespace at an httpd VM and a udpecho VM.

Usage: python tools/bench/bench_wirefuzz.py [--count 1000000] [--seed 1] [--drain 60]
(root; ip and curl installed: tools/install-test-deps.sh)

Reports: frames sent (per class), probes answered/lost, guest faults, both VMs' heap in
use before, at its highest while the flood runs (sampled every ``--every`` seconds) and
after, then again after ``--drain`` seconds of quiet (what the flood left behind is
gone when the timers ran out), and whether httpd serves curl a normal request at the end.
Exit status 1 when a VM faulted or curl failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from common import ROOT, table

from denali.kernel import Kernel
from tests.net.wirefuzz import CLASSES, Bed

DOC = bytes(ord("a") + i % 26 for i in range(2258))


async def flood(count: int, seed: int, every: float, drain: float) -> dict[str, Any]:
    async with Kernel() as k, Bed(k, os.getpid()) as bed:
        http0, udp0 = await bed.figures()
        peak = {
            "httpd": http0.get("heap_used", 0),
            "udpecho": udp0.get("heap_used", 0),
            "tcp_conns": http0.get("tcp_conns", 0),
            "threads": http0.get("threads", 0),
        }
        unanswered = 0
        t0 = time.monotonic()
        task = asyncio.create_task(bed.fuzz(count, seed, limit=count / 100 + 600))
        while not task.done():
            await asyncio.wait([task], timeout=every)
            http, udp = await bed.figures()
            unanswered += not http or not udp
            peak["httpd"] = max(peak["httpd"], http.get("heap_used", 0))
            peak["udpecho"] = max(peak["udpecho"], udp.get("heap_used", 0))
            peak["tcp_conns"] = max(peak["tcp_conns"], http.get("tcp_conns", 0))
            peak["threads"] = max(peak["threads"], http.get("threads", 0))
            print(
                f"  {time.monotonic() - t0:6.0f} s: httpd rx_frames {http.get('rx_frames', '-')}, "
                f"heap {http.get('heap_used', '-')}, "
                f"tcp_conns {http.get('tcp_conns', '-')}, threads {http.get('threads', '-')}; "
                f"udpecho heap {udp.get('heap_used', '-')}",
                flush=True,
            )
        res = task.result()
        took = time.monotonic() - t0
        http1, udp1 = await bed.figures()
        rc, body = await bed.curl("/bytes/2258")
        await asyncio.sleep(drain)
        http2, udp2 = await bed.figures()
        faults = [vm.fault for vm in (bed.httpd, bed.udpecho) if vm.fault is not None]
        return {
            "res": res,
            "seconds": took,
            "before": (http0, udp0),
            "after": (http1, udp1),
            "drained": (http2, udp2),
            "peak": peak,
            "curl_ok": rc == 0 and body == DOC,
            "faults": faults,
            "states": (bed.httpd.state.value, bed.udpecho.state.value),
            "unanswered_samples": unanswered,
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between heap samples")
    ap.add_argument("--drain", type=float, default=60.0, help="quiet seconds before the last figures")
    args = ap.parse_args()
    r = asyncio.run(flood(args.count, args.seed, args.every, args.drain))
    res = r["res"]
    (h0, u0), (h1, u1), (h2, u2) = r["before"], r["after"], r["drained"]
    rows = [("what", "figure")]
    rows.append(
        (
            "frames sent (send errors: too long or short for Linux to send)",
            f"{res['sent']:,} ({res['send_errors']:,})",
        )
    )
    rows.append(("per class", ", ".join(f"{c} {res['per_class'][c]:,}" for c in CLASSES)))
    rows.append(
        (
            "TCP flag combinations (of 4,096), ICMP types (of 256) sent",
            f"{res['tcp_flag_combinations']:,}, {res['icmp_types']}",
        )
    )
    rows.append(("seconds, frames/s", f"{r['seconds']:.0f}, {res['sent'] / r['seconds']:,.0f}"))
    rows.append(
        ("pacing probes (pings) answered / lost", f"{res['probes_answered']:,} / {res['probes_lost']:,}")
    )
    rows.append(
        (
            "connections the generator established / SYN-ACKs / RSTs seen",
            f"{res['established']:,} / {res['synacks']:,} / {res['rsts_seen']:,}",
        )
    )
    rows.append(("guest faults; VM states after", f"{len(r['faults'])}; {', '.join(r['states'])}"))
    rows.append(("httpd serves curl /bytes/2258 after the flood", "yes" if r["curl_ok"] else "NO"))
    rows.append(
        (
            "httpd heap in use: before / peak / after / after drain, bytes",
            f"{h0.get('heap_used', 0):,} / {r['peak']['httpd']:,} / {h1.get('heap_used', 0):,} / "
            f"{h2.get('heap_used', 0):,}",
        )
    )
    rows.append(
        (
            "httpd tcp_conns peak (table size), threads peak",
            f"{r['peak']['tcp_conns']:,} ({h0.get('tcp_max_conns', 0):,}), {r['peak']['threads']}",
        )
    )
    rows.append(
        (
            "httpd half-open connections evicted for new SYNs, thread failures",
            f"{h1.get('tcp_syn_evicted', 0):,}, {h1.get('thread_failures', 0)}",
        )
    )
    rows.append(
        (
            "udpecho heap in use: before / peak / after / after drain, bytes",
            f"{u0.get('heap_used', 0):,} / {r['peak']['udpecho']:,} / {u1.get('heap_used', 0):,} / "
            f"{u2.get('heap_used', 0):,}",
        )
    )
    rows.append(
        (
            "udpecho frames received, bad, reassembly drops",
            f"{u1.get('rx_frames', 0):,}, {u1.get('rx_bad', 0):,}, {u1.get('ip_reasm_dropped', 0):,}",
        )
    )
    rows.append(("heap samples during the flood that got no answer", str(r["unanswered_samples"])))
    table(f"wirefuzz: {args.count:,} frames, seed {args.seed}, {time.strftime('%Y-%m-%d')}", rows)
    if r["faults"] or not r["curl_ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
