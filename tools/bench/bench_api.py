"""Clones and scrapes: how fast VMs come from a snapshot, and what a scrape costs the loop.

Usage: python tools/bench/bench_api.py clones [--vms 2000] [--rounds 5]   (root, iproute2)
       python tools/bench/bench_api.py scrape [--vms 10000] [--budget 1G]
       python tools/bench/bench_api.py endpoint [--conns 1000] [--rounds 5] [--vms 100]

``clones``: a booted, listening httpd is paused and snapshotted; then, alternating, N
clones of it (A) and N httpd VMs booted from the image (B), each round in a fresh
kernel. A: the time until ``Kernel.clone`` has published all N, listening (clones of
a VM snapshotted in IDLE are lazy: no memory or engine until a frame or a deadline wakes
them), then a sweep from a Linux namespace behind a TAP device (lanload.py) that GETs
a 2,258-byte document from every clone at its new address (each clone woken by its
first frame takes Irq.CLONE, its address and MAC, then answers). B: the time until all
N listen and idle (the boot rate). Medians over the rounds and the median of the
per-round ratios.

``scrape``: N idle VMs under a memory budget (most swapped out); a ticker task on the
loop records the longest stretch of this thread's CPU time between two of its turns,
first with nothing else asked of the kernel, then while /metrics scrapes and top
queries run back to back; and the scrape and top latencies.

``endpoint``: ``denali boot test-idle -n VMS --metrics 127.0.0.1:PORT --api SOCK`` in a
process of its own; alternating, 20 scrapes with no other connection (A) and 20 scrapes
while CONNS connections are held on the metrics port, half idle and half slow loris
(a request head that never ends, a byte every half second), plus 200 half-sent API
requests on the Unix socket (B). Per round: scrape medians, the server's open
connections (its sockets in /proc), its RSS before, while held and after they close;
the median of the per-round latency ratios B/A. Last, Ctrl-C with the connections open:
the exit status and what the server wrote to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import rss_mib, table
from lan import PREFIX, LinuxHost, boot_httpd, vm_ip

from denali import metrics
from denali.config import parse_size
from denali.endpoint import Limits
from denali.kernel import Kernel


async def _snapshot(path: str) -> None:
    async with Kernel() as k:
        vm = await k.spawn("httpd", cmdline=f"ip={vm_ip(1)}/{PREFIX}")
        await vm.until_idle()
        await asyncio.sleep(0.2)
        await vm.pause()
        await k.snapshot(vm, path)


async def clone_round(path: str, n: int) -> dict[str, float]:
    async with Kernel(max_vms=max(n, 100_000)) as k, LinuxHost(k) as host:
        await host.announce()  # before the clones: an ARP broadcast now wakes nobody
        t = time.perf_counter()
        vms = await k.clone(path, n, cmdlines=[f"ip={vm_ip(i)}/{PREFIX}" for i in range(1, n + 1)])
        published = time.perf_counter() - t
        await host.neighbours(vms, ping=False)
        await asyncio.sleep(0.5)
        woken_early = sum(1 for vm in vms if vm.stats["slices"])
        t = time.perf_counter()
        res = await host.load("sweep", vm_ip(1), str(n), "--conc", "128")
        sweep = time.perf_counter() - t
        if res["http_ok"] != n:  # recorded, with why (lanload's reasons), not hidden
            print(
                f"only {res['http_ok']} of {n} clones answered HTTP (ping {res['ping_ok']}); "
                f"failed {res['http_failed']}; reasons {res['reasons']}; "
                f"ping p50/p99 {res['ping_ms']}",
                file=sys.stderr,
                flush=True,
            )
        identified = sum(1 for vm in vms if vm.stats["irq_bits_delivered"] and vm.generation == 1)
        return {
            "published": published,
            "woken_early": woken_early,
            "http_ok": res["http_ok"],
            "ping_p50": res["ping_ms"]["p50"],
            "sweep": sweep,
            "http_p50": res["http_ms"]["p50"],
            "identified": identified,
            "rss": rss_mib(),
        }


async def boot_round(n: int) -> float:
    async with Kernel(max_vms=max(n, 100_000)) as k:
        t = time.perf_counter()
        await boot_httpd(k, n, progress=False)
        return time.perf_counter() - t


async def clones(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="denali-bench-") as d:
        path = str(Path(d) / "httpd.snap")
        await _snapshot(path)
        a: list[dict[str, float]] = []
        b: list[float] = []
        for r in range(rounds):
            a.append(await clone_round(path, n))
            b.append(await boot_round(n))
            print(
                f"round {r + 1}: clones published {n / a[-1]['published']:,.0f}/s, "
                f"{a[-1]['http_ok']:,.0f} answered (sweep {a[-1]['sweep']:.1f} s); boot {n / b[-1]:,.0f}/s",
                file=sys.stderr,
                flush=True,
            )
    med = statistics.median
    table(
        f"{n:,} httpd VMs from a snapshot (A) vs booted (B), {rounds} rounds alternating",
        [
            (
                "A: clones published by Kernel.clone (listening, lazy)",
                f"{n / med(x['published'] for x in a):,.0f} VMs/s "
                f"(median {med(x['published'] for x in a):.2f} s)",
            ),
            ("A: clones woken before any traffic reached them", f"{max(x['woken_early'] for x in a):,.0f}"),
            (
                "A: clones answering GET /bytes/2258 at their new address",
                " / ".join(f"{x['http_ok']:,.0f}" for x in a) + f" of {n:,}, by round",
            ),
            (
                "A: sweep of all clones, each woken by its first frame (128 at a time)",
                f"{med(x['sweep'] for x in a):.1f} s ({n / med(x['sweep'] for x in a):,.0f} VMs/s), "
                f"ping p50 {med(x['ping_p50'] for x in a):,.0f} ms (the wait to be woken), "
                f"HTTP p50 {med(x['http_p50'] for x in a):,.0f} ms",
            ),
            (
                "A: clones that took Irq.CLONE and their new identity",
                f"{min(x['identified'] for x in a):,.0f}",
            ),
            (
                "B: booted from the image, listening and idle",
                f"{n / med(b):,.0f} VMs/s (median {med(b):.2f} s)",
            ),
            (
                "published clones / booted VMs per second, median of per-round ratios",
                f"{med(bb / x['published'] for x, bb in zip(a, b, strict=True)):.0f}x",
            ),
            ("process RSS after a clone round (max)", f"{max(x['rss'] for x in a):,.0f} MiB"),
        ],
    )


async def _longest_stretch(seconds: float, work: asyncio.Future[object] | None = None) -> float:
    longest = 0.0
    last = time.thread_time()
    end = time.perf_counter() + seconds
    while (work is not None and not work.done()) or (work is None and time.perf_counter() < end):
        await asyncio.sleep(0)
        now = time.thread_time()
        longest = max(longest, now - last)
        last = now
    return longest


async def scrape(n: int, budget: int) -> None:
    async with Kernel(memory_budget=budget, max_vms=max(n, 100_000)) as k:
        t = time.perf_counter()
        vms = [await k.spawn("test-idle", cmdline="ms=3600000", memory="1M") for _ in range(n)]
        for vm in vms:
            await vm.until_idle()
        boot = time.perf_counter() - t
        await asyncio.sleep(2)
        idle_gap = await _longest_stretch(3.0)
        sampler = metrics.CpuSampler(k)
        scrape_s: list[float] = []
        top_s: list[float] = []

        async def load() -> None:
            for _ in range(10):
                t0 = time.perf_counter()
                text = await metrics.prometheus(k)
                scrape_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await metrics.top(k, sampler, 50)
                top_s.append(time.perf_counter() - t0)
            assert f'denali_vms{{state="idle"}} {n}.0' in text, text[:400]

        gc_pauses: list[float] = []
        started: list[float] = []

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started.append(time.thread_time())
            elif started:
                gc_pauses.append(time.thread_time() - started.pop())

        gc.callbacks.append(on_gc)
        try:
            job = asyncio.ensure_future(load())
            busy_gap = await _longest_stretch(0, job)
            await job
            gc.disable()
            job = asyncio.ensure_future(load())
            nogc_gap = await _longest_stretch(0, job)
            await job
        finally:
            gc.enable()
            gc.callbacks.remove(on_gc)
        swapped = sum(1 for vm in vms if vm.swapped)
        series = len([ln for ln in text_lines(await metrics.prometheus(k)) if not ln.startswith("#")])
    med = statistics.median
    table(
        f"Scrapes at {n:,} idle VMs ({swapped:,} swapped out, budget {budget >> 20:,} MiB)",
        [
            ("VMs booted and idle", f"{n:,} in {boot:.0f} s"),
            ("longest stretch without a loop turn, idle kernel", f"{idle_gap * 1e3:.2f} ms (CPU time)"),
            (
                "longest stretch without a loop turn, 10 scrapes + 10 top",
                f"{busy_gap * 1e3:.2f} ms (CPU time)",
            ),
            ("longest garbage-collector pause meanwhile", f"{max(gc_pauses, default=0) * 1e3:.2f} ms"),
            ("the same, the collector held off", f"{nogc_gap * 1e3:.2f} ms (CPU time)"),
            ("slice length", "2.00 ms"),
            (
                "/metrics scrape latency median / max",
                f"{med(scrape_s) * 1e3:.0f} / {max(scrape_s) * 1e3:.0f} ms",
            ),
            ("top (50 busiest) latency median / max", f"{med(top_s) * 1e3:.0f} / {max(top_s) * 1e3:.0f} ms"),
            ("samples in a scrape", f"{series:,}"),
            ("process RSS", f"{rss_mib():,.0f} MiB"),
        ],
    )


async def _scrape_once(port: int) -> float:
    t = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"scrape answered {data[:80]!r}")
    return time.perf_counter() - t


def _server_sockets(pid: int, port: int) -> tuple[int, int]:
    """(TCP connections established on ``port``, Unix sockets) that process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    tcp = 0
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "01" and parts[9] in inodes and int(parts[1].split(":")[1], 16) == port:
                tcp += 1
    unix = 0
    with open(f"/proc/{pid}/net/unix") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[6] in inodes and parts[5] == "03":  # connected
                unix += 1
    return tcp, unix


def _rss_of(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _hold(port: int, sock: str, conns: int) -> tuple[list[asyncio.StreamWriter], asyncio.Task[None]]:
    held: list[asyncio.StreamWriter] = []
    slow: list[asyncio.StreamWriter] = []
    for i in range(conns):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        if i % 2:
            w.write(b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
            slow.append(w)
        held.append(w)
    for _ in range(200):
        _, w = await asyncio.open_unix_connection(sock)
        w.write(b"POST /v1/vms HTTP/1.1\r\nHost: slow\r\n")
        held.append(w)

    async def dribble() -> None:
        while True:
            await asyncio.sleep(0.5)
            for w in slow:
                if not w.is_closing():
                    w.write(b"a")

    return held, asyncio.ensure_future(dribble())


_ROOT = Path(__file__).resolve().parents[2]


async def endpoint(conns: int, rounds: int, n_vms: int) -> None:
    root = _ROOT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="denali-bench-") as d:
        sock = str(Path(d) / "api.sock")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "denali",
            "boot",
            "test-idle",
            "-n",
            str(n_vms),
            "-c",
            "ms=3600000",
            "--metrics",
            f"127.0.0.1:{port}",
            "--api",
            sock,
            cwd=root,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            for _ in range(600):
                if os.path.exists(sock):  # noqa: ASYNC240 (a benchmark's start-up poll)
                    break
                await asyncio.sleep(0.05)
            for _ in range(20):
                await _scrape_once(port)
            rss0 = _rss_of(proc.pid)
            rows = []
            for r in range(rounds):
                quiet = [await _scrape_once(port) for _ in range(20)]
                rss_before = _rss_of(proc.pid)
                unix_base = _server_sockets(proc.pid, port)[1]  # its own socket pairs
                held, dribbler = await _hold(port, sock, conns)
                await asyncio.sleep(0.2)
                tcp, unix = _server_sockets(proc.pid, port)
                unix -= unix_base
                rss_held = _rss_of(proc.pid)
                loaded = [await _scrape_once(port) for _ in range(20)]
                tcp_after = _server_sockets(proc.pid, port)[0]
                last = r == rounds - 1
                if not last:
                    dribbler.cancel()
                    for w in held:
                        w.close()
                    await asyncio.sleep(1.0)
                rows.append(
                    {
                        "quiet": statistics.median(quiet),
                        "loaded": statistics.median(loaded),
                        "loaded_max": max(loaded),
                        "tcp": min(tcp, tcp_after),
                        "unix": unix,
                        "rss_before": rss_before,
                        "rss_held": rss_held,
                        "rss_after": _rss_of(proc.pid),
                    }
                )
                print(
                    f"round {r + 1}: scrape {rows[-1]['quiet'] * 1e3:.1f} ms quiet, "
                    f"{rows[-1]['loaded'] * 1e3:.1f} ms with {tcp} TCP + {unix} Unix connections held; "
                    f"RSS {rss_before:.0f} -> {rss_held:.0f} -> {rows[-1]['rss_after']:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            # Ctrl-C with the last round's connections still open
            open_tcp, open_unix = _server_sockets(proc.pid, port)
            open_unix -= unix_base
            proc.send_signal(signal.SIGINT)
            _, err_b = await asyncio.wait_for(proc.communicate(), 60)
            dribbler.cancel()
            for w in held:
                w.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    err = err_b.decode(errors="replace")
    bad = [ln for ln in err.splitlines() if "Traceback" in ln or "Task was destroyed" in ln or "Error" in ln]
    med = statistics.median
    table(
        f"Scrapes while {conns:,} idle/slow-loris TCP + 200 Unix connections are held, {n_vms} VMs, "
        f"{rounds} rounds alternating",
        [
            ("what", "figure"),
            (
                "A: scrape latency, no other connection (median of round medians)",
                f"{med(x['quiet'] for x in rows) * 1e3:.1f} ms",
            ),
            (
                "B: scrape latency while held (median of round medians; worst scrape)",
                f"{med(x['loaded'] for x in rows) * 1e3:.1f} ms; "
                f"{max(x['loaded_max'] for x in rows) * 1e3:.0f} ms",
            ),
            ("B / A, median of per-round ratios", f"{med(x['loaded'] / x['quiet'] for x in rows):.2f}x"),
            (
                "connections the server held open (TCP on the metrics port, min over rounds)",
                f"{min(x['tcp'] for x in rows):,} of {conns:,} (the limit: {Limits().max_connections:,})",
            ),
            (
                "Unix connections the server held open (API socket, min over rounds)",
                f"{min(x['unix'] for x in rows):,} of 200",
            ),
            (
                "server RSS: at start / before holding / while held / after release (medians)",
                f"{rss0:.0f} / {med(x['rss_before'] for x in rows):.0f} / "
                f"{med(x['rss_held'] for x in rows):.0f} / "
                f"{med(x['rss_after'] for x in rows[:-1]) if len(rows) > 1 else float('nan'):.0f} MiB",
            ),
            (
                "Ctrl-C with connections open: exit status, stderr lines, bad lines",
                f"{proc.returncode}, {len(err.splitlines())} lines, "
                f"{len(bad)} with Traceback/Task was destroyed/Error "
                f"({open_tcp} TCP + {open_unix} Unix open)",
            ),
        ],
    )
    if bad:
        print("\n".join(bad[:20]), file=sys.stderr)


def text_lines(text: str) -> list[str]:
    return text.splitlines()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("clones")
    c.add_argument("--vms", type=int, default=2000)
    c.add_argument("--rounds", type=int, default=5)
    s = sub.add_parser("scrape")
    s.add_argument("--vms", type=int, default=10_000)
    s.add_argument("--budget", default="1G")
    e = sub.add_parser("endpoint")
    e.add_argument("--conns", type=int, default=1000)
    e.add_argument("--rounds", type=int, default=5)
    e.add_argument("--vms", type=int, default=100)
    args = p.parse_args()
    import uvloop

    if args.what == "clones":
        uvloop.run(clones(args.vms, args.rounds))
    elif args.what == "endpoint":
        uvloop.run(endpoint(args.conns, args.rounds, args.vms))
    else:
        uvloop.run(scrape(args.vms, parse_size(args.budget)))


if __name__ == "__main__":
    main()
