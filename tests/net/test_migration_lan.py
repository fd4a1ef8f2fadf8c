"""Live migration with a real Linux client: two ``denali boot`` processes (kernels A and
B) in a network namespace made here, their LANs joined by VXLAN over the namespace's
loopback; the client reaches the LAN through A's TAP device. curl keeps one HTTP/1.1
keep-alive connection busy and ping sends every millisecond while ``denali ctl A migrate
1 --to B`` moves the 16 MiB httpd: every request is answered on the same connection and
the VM runs on at B with its MAC and address."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import need_image
from tests.net.netns import need_tools, run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def netns() -> AsyncIterator[str]:
    need_tools("ip", "ping", "curl")
    name = f"dmig{os.getpid()}"
    rc, out = await run("ip", "netns", "add", name)
    assert rc == 0, out
    try:
        rc, out = await run("ip", "-n", name, "link", "set", "lo", "up")
        assert rc == 0, out
        yield name
    finally:
        await run("ip", "netns", "del", name)


async def _boot(netns: str, log: Path, *args: str) -> asyncio.subprocess.Process:
    with log.open("wb") as f:
        return await asyncio.create_subprocess_exec(
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
            stdout=f,
            stderr=asyncio.subprocess.STDOUT,
        )


async def _until(log: Path, text: str) -> None:
    async with asyncio.timeout(60):
        while text not in log.read_text(errors="replace"):  # noqa: ASYNC110, ASYNC240 (a child's log)
            await asyncio.sleep(0.05)


async def _ctl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "denali",
        "ctl",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_httpd_moves_under_keepalive_load_and_ping(netns: str, tmp_path: Path) -> None:
    need_image("httpd")
    pid = os.getpid()
    a_sock, b_sock = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    # below the ephemeral range (32768..): a kernel's own free-port picks never take them
    pa, pb = 10000 + pid % 10000, 20000 + pid % 10000
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = await _boot(
        netns,
        a_log,
        "httpd",
        "-c",
        "ip=10.78.0.1/24",
        "--api",
        a_sock,
        "--net",
        f"tap:dmg{pid % 100000},host=10.78.0.254/24",
        "--net",
        f"vxlan:42@127.0.0.1:{pb},local=127.0.0.1:{pa}",
    )
    b = await _boot(
        netns,
        b_log,
        "httpd",
        "--count",
        "0",
        "--api",
        b_sock,
        "--net",
        f"vxlan:42@127.0.0.1:{pa},local=127.0.0.1:{pb}",
    )
    try:
        await _until(a_log, "listening on 10.78.0.1:80")
        async with asyncio.timeout(60):
            while not os.path.exists(b_sock):  # noqa: ASYNC110, ASYNC240 (made by a child)
                await asyncio.sleep(0.05)
        n = 10000  # enough to outlast the move (asserted below): it is tested under load
        curl = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "-m",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total} %{num_connects}\\n",
            f"http://10.78.0.1/bytes/[1000-{999 + n}]",
            stdout=asyncio.subprocess.PIPE,
        )
        ping = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            netns,
            "ping",
            "-D",
            "-i",
            "0.001",
            "-c",
            "6000",
            "10.78.0.1",
            stdout=asyncio.subprocess.PIPE,
        )
        # read both from the start: a pipe left unread stalls its writer (ping stops sending)
        outputs = asyncio.gather(curl.communicate(), ping.communicate())
        await asyncio.sleep(0.8)
        t0 = time.time()
        rc, out = await _ctl("--json", a_sock, "migrate", "1", "--to", b_sock)
        t1 = time.time()
        curl_ran_on = curl.returncode is None
        assert rc == 0, out
        assert curl_ran_on, "curl ended before the move: the load did not span it"
        info = json.loads(out)["migration"]
        assert info["live"] and info["rounds"] >= 1
        (curl_out, _), (ping_out, _) = await asyncio.wait_for(outputs, 90)
        rows = [line.split() for line in curl_out.decode().splitlines()]
        codes = [r[0] for r in rows]
        assert len(rows) == n and codes.count("200") == n, f"failed requests: {n - codes.count('200')}"
        assert sum(int(r[2]) for r in rows) == 1  # one connection, kept across the move
        slowest = max(float(r[1]) for r in rows[1:])
        times = [float(r[1]) for r in rows]
        worst = sorted(range(1, n), key=lambda i: -times[i])[:4]
        print(
            "slowest requests (index: ms, next ones):",
            [
                (i, round(times[i] * 1000, 1), [round(t * 1000, 1) for t in times[i + 1 : i + 4]])
                for i in worst
            ],
        )
        m = re.search(rb"(\d+) packets transmitted, (\d+) received", ping_out)
        assert m is not None, ping_out
        stamps = [float(t) for t in re.findall(rb"^\[(\d+\.\d+)\] \d+ bytes from", ping_out, re.M)]
        assert len(stamps) > 100  # ping reached the VM before and after
        gap, gap_at = max((b - a, a) for a, b in itertools.pairwise(stamps))
        near = [b - a for a, b in itertools.pairwise(stamps) if t0 - 0.2 <= a <= t1 + 0.2]
        print(
            f"ping: first {stamps[0] - t0:+.3f}s last {stamps[-1] - t0:+.3f}s; longest gap at "
            f"{gap_at - t0:+.3f}s; migration took {t1 - t0:.3f}s (ctl); longest gap during it "
            f"{max(near, default=0) * 1000:.1f} ms"
        )
        paused = float(info["paused_unix"])
        after = [b - a for a, b in itertools.pairwise(stamps) if b >= paused and a <= paused + 0.3]
        assert after, "no ping reply after the pause"  # the VM answered at B
        print(
            f"client: longest ping silence from the pause on {max(after) * 1000:.1f} ms "
            f"(kernel downtime {info['downtime_ms']:.1f} ms)"
        )
        print(
            f"downtime (kernel) {info['downtime_ms']:.1f} ms, phases {info['phases_ms']}; slowest "
            f"request {slowest * 1000:.1f} ms; ping {m.group(2).decode()}/{m.group(1).decode()}, "
            f"longest gap between replies {gap * 1000:.1f} ms"
        )
        rc, out = await _ctl(b_sock, "ls")
        assert rc == 0 and "ip=10.78.0.1/24" in out, out
        rc, out = await _ctl(a_sock, "ls")
        assert rc == 0 and out.strip() == "", out
        rc, out = await run(
            "ip", "netns", "exec", netns, "curl", "-s", "-m", "10", "http://10.78.0.1/bytes/5"
        )
        assert rc == 0 and len(out) == 5
    finally:
        for p in (a, b):
            if p.returncode is None:
                p.send_signal(2)
        for p in (a, b):
            try:
                await asyncio.wait_for(p.wait(), 30)
            except TimeoutError:
                p.kill()
