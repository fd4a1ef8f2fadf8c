"""tools/bench/zipfload.c, the C load generator behind bench_host.py's figures: built
with the machine's gcc and run against HTTP servers on loopback addresses, it must count
what the servers answered, draw hosts by Zipf rank and count a wrong answer as an error,
or the benchmark's requests/s mean nothing."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[2] / "tools" / "bench" / "zipfload.c"
DOC = 2258
HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


@pytest.fixture(scope="module")
def zipfload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zipfload") / "zipfload"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(out), str(SRC), "-lm"], check=True)
    return out


def _port_free_on_all() -> int:
    """A port that every one of HOSTS can listen on."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind((HOSTS[0], 0))
            port: int = s.getsockname()[1]
        try:
            for h in HOSTS:
                with socket.socket() as t:
                    t.bind((h, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on all of " + ", ".join(HOSTS))


async def _serve(port: int, length: dict[str, int], served: dict[str, int]) -> list[asyncio.Server]:
    """Keep-alive servers on HOSTS answering each GET with ``length[host]`` body bytes
    (announced as such), counting what each served in ``served``."""

    def handler(host: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            body = b"d" * length[host]
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    await writer.drain()
                    served[host] += 1
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        return handle

    return [await asyncio.start_server(handler(h), h, port) for h in HOSTS]


async def _run(zipfload: Path, port: int, seconds: float) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        str(zipfload), "zipf", HOSTS[0], str(len(HOSTS)), "--seconds", str(seconds), "--conc", "8",
        "--report", "0.5", "--port", str(port), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return [json.loads(line) for line in out.splitlines()]


async def test_it_counts_what_was_served_and_draws_hosts_by_zipf_rank(zipfload: Path) -> None:
    port = _port_free_on_all()
    served = dict.fromkeys(HOSTS, 0)
    servers = await _serve(port, dict.fromkeys(HOSTS, DOC), served)
    try:
        lines = await _run(zipfload, port, 2.0)
    finally:
        for s in servers:
            s.close()
    summary = lines[-1]
    reports = lines[:-1]
    assert summary["summary"] is True and summary["errors"] == 0 and summary["reasons"] == {}
    assert summary["requests"] > 300
    assert summary["requests"] == sum(r["ok"] for r in reports)
    # the servers saw every counted answer (and at most the 8 in flight at the cut-off)
    assert 0 <= sum(served.values()) - summary["requests"] <= 8
    # weights 1 : 1/2 : 1/3 over the three ranks
    total = sum(served.values())
    for host, weight in zip(HOSTS, (6 / 11, 3 / 11, 2 / 11), strict=True):
        assert abs(served[host] / total - weight) < 0.06, served


async def test_a_wrong_document_is_an_error_not_a_request(zipfload: Path) -> None:
    port = _port_free_on_all()
    served = dict.fromkeys(HOSTS, 0)
    servers = await _serve(port, {HOSTS[0]: DOC, HOSTS[1]: DOC, HOSTS[2]: DOC - 1}, served)
    try:
        lines = await _run(zipfload, port, 1.5)
    finally:
        for s in servers:
            s.close()
    summary = lines[-1]
    assert summary["errors"] > 0
    assert summary["reasons"] == {"get:ValueError(head)": summary["errors"]}
    # the right answers were counted, the wrong ones were not
    assert summary["requests"] <= served[HOSTS[0]] + served[HOSTS[1]]
    assert summary["requests"] >= served[HOSTS[0]] + served[HOSTS[1]] - 8
