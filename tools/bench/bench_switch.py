"""Virtual LAN throughput: frames per second NIC -> switch -> NIC, single vs batched send.

Usage: python tools/bench/bench_switch.py [--quick] [--runs N] [--uvloop]

Each measurement pushes minimum-size (60-byte) frames from sender NICs to receiver NICs
through a running ``Switch``, end to end: the send calls, the switch's drain task, the
NIC receive queues and ``receive_nowait``. Senders work in guest-sized bursts of
``NET_MAX_BATCH`` (64) frames, as a guest's NET_SEND would: "single" calls
``send_nowait`` once per frame, "batched" calls ``send_batch_nowait`` once per burst.
Both modes run alternately in the same process and loop (medians of ``--runs``), and
the table gives both figures and their ratio. Scenarios: one pair of NICs; 100 pairs
with 1,000 NICs attached (unicast must not depend on the port count); and a broadcast
from one NIC to 100 (one frame, 99 deliveries).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import table  # noqa: E402

from denali.abi import NET_MAX_BATCH  # noqa: E402
from denali.devices.nic import NicConfig, NicPort  # noqa: E402
from denali.net import BROADCAST, Switch, build_frame, mac_for_vm  # noqa: E402

BURSTS_PER_DRAIN = 4
"""Bursts each sender queues before the senders wait for the switch (256 = queue size)."""


async def run(
    pairs: int, extra: int, frames_per_sender: int, batched: bool, broadcast: bool = False
) -> float:
    """Seconds to move ``frames_per_sender`` frames from each of ``pairs`` senders."""
    depth = NET_MAX_BATCH * BURSTS_PER_DRAIN
    cfg = NicConfig(rx_capacity=depth, tx_capacity=depth)
    async with Switch() as sw:
        senders = [NicPort(f"s{i}", mac_for_vm(1 + i), config=cfg) for i in range(pairs)]
        receivers = [NicPort(f"r{i}", mac_for_vm(100_001 + i), config=cfg) for i in range(pairs)]
        sinks = [*receivers, *(NicPort(f"x{i}", mac_for_vm(200_001 + i), config=cfg) for i in range(extra))]
        for n in (*senders, *sinks):
            sw.attach(n)
        bursts = []
        for s, r in zip(senders, receivers, strict=True):
            dst = BROADCAST if broadcast else r.fixed_mac
            f = build_frame(dst, s.fixed_mac, 0x88B5, b"bench")
            bursts.append([f] * NET_MAX_BATCH)
        drains = frames_per_sender // (NET_MAX_BATCH * BURSTS_PER_DRAIN)
        t = time.perf_counter()
        for _ in range(drains):
            for s, burst in zip(senders, bursts, strict=True):
                if batched:
                    for _ in range(BURSTS_PER_DRAIN):
                        s.send_batch_nowait(burst)
                else:
                    send = s.send_nowait
                    for _ in range(BURSTS_PER_DRAIN):
                        for f in burst:
                            send(f)
            await sw.join()
            for r in sinks:
                while r.receive_nowait(NET_MAX_BATCH):
                    pass
        dt = time.perf_counter() - t
        st = sw.stats()
        lost = sum(p.drops for p in st.port_stats.values())
        if lost:
            raise RuntimeError(f"benchmark lost {lost} frames: {st.as_dict()}")
        return dt


LoopRun = Callable[[Coroutine[Any, Any, float]], float]


def measure(
    label: str, loop_run: LoopRun, runs: int, pairs: int, extra: int, frames: int, broadcast: bool = False
) -> tuple[str, ...]:
    single: list[float] = []
    batch: list[float] = []
    total = frames * pairs
    for _ in range(runs):  # alternate, so drift in machine speed hits both modes alike
        single.append(total / loop_run(run(pairs, extra, frames, False, broadcast)))
        batch.append(total / loop_run(run(pairs, extra, frames, True, broadcast)))
    s, b = statistics.median(single), statistics.median(batch)
    deliveries = " (x99 deliveries)" if broadcast else ""
    return (
        label,
        f"{s / 1e3:,.0f} k/s{deliveries}",
        f"{b / 1e3:,.0f} k/s",
        f"{b / s:.2f}x",
        f"{1e9 / s:,.0f} / {1e9 / b:,.0f} ns",
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's loop")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop

        def loop_run(coro: Coroutine[Any, Any, float]) -> float:
            return uvloop.run(coro)

        loop_name = f"uvloop {importlib.metadata.version('uvloop')}"
    else:

        def loop_run(coro: Coroutine[Any, Any, float]) -> float:
            return asyncio.run(coro)

        loop_name = "asyncio"
    unit = NET_MAX_BATCH * BURSTS_PER_DRAIN
    n1 = unit * (100 if args.quick else 1000)
    n100 = unit * (2 if args.quick else 10)
    nb = unit * (4 if args.quick else 40)
    t0 = time.perf_counter()
    rows: list[tuple[str, ...]] = [
        (
            "scenario (60-byte frames, end to end)",
            "single send",
            "batched send",
            "batched/single",
            "per frame single / batched",
        )
    ]
    rows.append(measure("1 NIC -> 1 NIC, 2 ports", loop_run, args.runs, 1, 0, n1))
    rows.append(measure("100 NICs -> 100 NICs, 1,000 ports", loop_run, args.runs, 100, 800, n100))
    rows.append(measure("broadcast 1 NIC -> 99, 100 ports", loop_run, args.runs, 1, 98, nb, broadcast=True))
    table(f"Switch throughput ({loop_name}, Python {sys.version.split()[0]}, medians of {args.runs})", rows)
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
