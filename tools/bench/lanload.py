"""Load from a Linux host onto the VMs' LAN: run inside the network namespace that
holds the TAP device (bench_lan.py and bench_zipf.py start it). Prints JSON lines.

    python lanload.py sweep FIRST COUNT [--conc 256] [--sample K]
        every host FIRST..FIRST+COUNT-1 (or K of them drawn at random) must answer
        an ICMP echo and serve GET /bytes/2258 (byte count checked); one summary line.
    python lanload.py zipf FIRST COUNT --seconds S [--conc 64] [--pool 512] [--alpha 1.0]
        requests for 2,258-byte documents, each to a host drawn from a Zipf
        distribution over the hosts (host FIRST is the most popular), keep-alive
        connections kept in an LRU pool of at most --pool; a line per --report
        seconds (requests, errors, latency percentiles) and a summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import ipaddress
import json
import os
import random
import socket
import struct
import time
from collections import OrderedDict

DOC = 2258
PER_HOST = 16
"""Idle keep-alive connections kept per host at most."""
TIMEOUT = 20.0


def hosts(first: str, count: int) -> list[str]:
    base = int(ipaddress.IPv4Address(first))
    return [str(ipaddress.IPv4Address(base + i)) for i in range(count)]


def _checksum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class Pinger:
    """ICMP echo over one raw socket; replies matched by (address, sequence)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        self.ident = os.getpid() & 0xFFFF
        self.waiting: dict[tuple[str, int], asyncio.Future[None]] = {}
        self.seq = 0
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                pkt, (src, _) = self.sock.recvfrom(2048)
            except BlockingIOError:
                return
            ihl = (pkt[0] & 15) * 4
            if len(pkt) < ihl + 8:
                continue
            kind, _, _, ident, seq = struct.unpack_from("!BBHHH", pkt, ihl)
            fut = self.waiting.pop((src, seq), None)
            if kind == 0 and ident == self.ident and fut is not None and not fut.done():
                fut.set_result(None)

    async def ping(self, host: str, tries: int = 3, wait_s: float = 10.0) -> bool:
        """An echo answered within ``wait_s`` (a swapped-out VM waits its turn to come
        back in: seconds, when hundreds are asked at once), ``tries`` times at most."""
        loop = asyncio.get_running_loop()
        for _ in range(tries):
            self.seq = (self.seq + 1) & 0xFFFF
            seq = self.seq
            body = b"denali" * 8
            head = struct.pack("!BBHHH", 8, 0, 0, self.ident, seq)
            pkt = struct.pack("!BBHHH", 8, 0, _checksum(head + body), self.ident, seq) + body
            fut: asyncio.Future[None] = loop.create_future()
            self.waiting[(host, seq)] = fut
            try:
                await loop.sock_sendto(self.sock, pkt, (host, 0))
                await asyncio.wait_for(fut, wait_s)
                return True
            except (TimeoutError, OSError):
                self.waiting.pop((host, seq), None)
        return False


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
    writer.write(f"GET /bytes/{DOC} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head[:40])
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    if len(body) != DOC:
        raise ValueError(f"{len(body)} bytes")


REASONS: dict[str, int] = {}
"""Why requests failed: 'connect:' or 'get:' and the exception's type, counted."""


def failed(stage: str, exc: BaseException) -> None:
    key = f"{stage}:{type(exc).__name__}"
    if isinstance(exc, ValueError):
        key += f"({str(exc)[:60]})"
    REASONS[key] = REASONS.get(key, 0) + 1


async def http_once(host: str) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, 80), TIMEOUT)
    except (TimeoutError, OSError) as exc:
        failed("connect", exc)
        return False
    try:
        await asyncio.wait_for(get(reader, writer, host), TIMEOUT)
        return True
    except (
        TimeoutError,
        OSError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        IndexError,
        ValueError,
    ) as exc:
        failed("get", exc)
        return False
    finally:
        writer.close()


async def sweep(addrs: list[str], conc: int) -> dict[str, object]:
    pinger = Pinger()
    sem = asyncio.Semaphore(conc)
    ping_failed: list[str] = []
    http_failed: list[str] = []
    ping_ms: list[float] = []
    http_ms: list[float] = []

    async def one(h: str) -> None:
        async with sem:
            t = time.monotonic()
            if not await pinger.ping(h):
                ping_failed.append(h)
            ping_ms.append((time.monotonic() - t) * 1000)
            t = time.monotonic()
            if not await http_once(h):
                http_failed.append(h)
            http_ms.append((time.monotonic() - t) * 1000)

    t = time.monotonic()
    await asyncio.gather(*(one(h) for h in addrs))
    return {
        "hosts": len(addrs),
        "ping_ok": len(addrs) - len(ping_failed),
        "http_ok": len(addrs) - len(http_failed),
        "ping_failed": ping_failed[:20],
        "http_failed": http_failed[:20],
        "seconds": round(time.monotonic() - t, 3),
        "ping_ms": percentiles(ping_ms),
        "http_ms": percentiles(http_ms),
        "reasons": REASONS,
    }


def percentiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms) or [0.0]
    return {f"p{p}": round(ms[min(len(ms) - 1, len(ms) * p // 100)], 2) for p in (50, 90, 99, 100)}


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pool:
    """Idle keep-alive connections by host (at most PER_HOST each); beyond ``size`` in
    all, the least recently used host's oldest connection is closed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: OrderedDict[str, list[Conn]] = OrderedDict()
        self.total = 0
        self.opened = 0

    def take(self, host: str) -> Conn | None:
        conns = self.idle.get(host)
        if not conns:
            return None
        self.total -= 1
        conn = conns.pop()
        if not conns:
            del self.idle[host]
        return conn

    def give(self, host: str, conn: Conn) -> None:
        conns = self.idle.setdefault(host, [])
        self.idle.move_to_end(host)
        if len(conns) >= PER_HOST:  # a guest serves at most 72 connections: keep well below
            conn[1].close()
            return
        conns.append(conn)
        self.total += 1
        while self.total > self.size:
            oldest_host, oldest = next(iter(self.idle.items()))
            oldest.pop(0)[1].close()
            self.total -= 1
            if not oldest:
                del self.idle[oldest_host]


async def zipf(
    addrs: list[str], seconds: float, conc: int, pool_size: int, alpha: float, report: float
) -> dict[str, object]:
    weights = [1 / (r + 1) ** alpha for r in range(len(addrs))]
    cdf: list[float] = []
    acc = 0.0
    for w in weights:
        acc += w
        cdf.append(acc)
    rng = random.Random(1)
    pool = Pool(pool_size)
    t0 = time.monotonic()
    until = t0 + seconds
    window = {"ok": 0, "err": 0}
    lat: list[float] = []
    total = {"ok": 0, "err": 0}

    async def worker() -> None:
        while time.monotonic() < until:
            host = addrs[min(bisect.bisect_left(cdf, rng.random() * acc), len(addrs) - 1)]
            conn = pool.take(host)
            t = time.monotonic()
            stage = "connect"
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, 80), TIMEOUT)
                    pool.opened += 1
                stage = "get"
                await asyncio.wait_for(get(*conn, host), TIMEOUT)
                pool.give(host, conn)
                window["ok"] += 1
                lat.append(time.monotonic() - t)
            except (
                TimeoutError,
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                IndexError,
                ValueError,
            ) as exc:
                if time.monotonic() >= until:
                    break  # cut off by the end of the run, not failed
                failed(stage, exc)
                window["err"] += 1
                if conn is not None:
                    conn[1].close()

    async def reporter() -> None:
        last = t0
        while True:
            await asyncio.sleep(report)
            now = time.monotonic()
            lat.sort()
            pct = {
                f"p{p}_ms": round(lat[int(len(lat) * p / 100)] * 1000, 2) if lat else None for p in (50, 99)
            }
            print(
                json.dumps(
                    {
                        "t": round(now - t0, 2),
                        "req_s": round(window["ok"] / (now - last), 1),
                        "ok": window["ok"],
                        "err": window["err"],
                        **pct,
                        "open": pool.total,
                    }
                ),
                flush=True,
            )
            total["ok"] += window["ok"]
            total["err"] += window["err"]
            window["ok"] = window["err"] = 0
            lat.clear()
            last = now

    rep = asyncio.get_running_loop().create_task(reporter())
    await asyncio.gather(*(worker() for _ in range(conc)))
    rep.cancel()
    total["ok"] += window["ok"]
    total["err"] += window["err"]
    wall = time.monotonic() - t0
    return {
        "summary": True,
        "requests": total["ok"],
        "errors": total["err"],
        "seconds": round(wall, 3),
        "req_s": round(total["ok"] / wall, 1),
        "connections_opened": pool.opened,
        "reasons": REASONS,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("sweep", "zipf"))
    ap.add_argument("first")
    ap.add_argument("count", type=int)
    ap.add_argument("--conc", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--pool", type=int, default=512)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--report", type=float, default=5.0)
    ap.add_argument("--sample", type=int, default=0, help="sweep: only this many hosts, drawn at random")
    args = ap.parse_args()
    addrs = hosts(args.first, args.count)
    if args.sample:
        addrs = sorted(
            random.Random(7).sample(addrs, min(args.sample, len(addrs))),
            key=lambda a: int(ipaddress.IPv4Address(a)),
        )
    if args.mode == "sweep":
        out = asyncio.run(sweep(addrs, args.conc or 256))
    else:
        out = asyncio.run(zipf(addrs, args.seconds, args.conc or 64, args.pool, args.alpha, args.report))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
