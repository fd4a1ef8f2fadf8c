"""A small HTTP/1.1 keep-alive load generator (asyncio), run by bench_tap.py inside a
network namespace. Usage: python httpload.py SECONDS CONNS PATH HOST [HOST...]
Prints "requests=N seconds=S errors=E"."""

from __future__ import annotations

import asyncio
import sys
import time


async def client(host: str, path: str, until: float, counts: list[int]) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, 80), 5)
    except (TimeoutError, OSError):
        counts[1] += 1
        return
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        while time.monotonic() < until:
            writer.write(req)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), 5)
            counts[0] += 1
    except (TimeoutError, OSError, asyncio.IncompleteReadError, IndexError, ValueError):
        counts[1] += 1
    finally:
        writer.close()


async def main() -> None:
    seconds, conns, path, hosts = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    counts = [0, 0]
    t = time.monotonic()
    until = t + seconds
    await asyncio.gather(*(client(hosts[i % len(hosts)], path, until, counts) for i in range(conns)))
    print(f"requests={counts[0]} seconds={time.monotonic() - t:.3f} errors={counts[1]}")


if __name__ == "__main__":
    asyncio.run(main())
