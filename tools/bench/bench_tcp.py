"""The guest TCP/IP stack under load, side by side with the stack it replaced and with
native Linux, alternating contenders in every round; medians of per-round ratios.

Usage: python tools/bench/bench_tcp.py [--rounds 5] [--old-rev REV] [--quick] [--loss-only]
(root; ip, wrk, curl and nginx installed: tools/install-test-deps.sh, apt-get install nginx-light)

Contenders:
- ``old``: the guest images (httpd, httpget) built at bench time from git revision
  ``--old-rev`` (default: the last commit before the new stack), so the old path is
  measured on the same machine in the same run;
- ``new``: the images of this tree;
- ``native``: nginx on Linux (one worker), serving the same documents.

Measured, per round, each contender in turn:
1. VM to VM (old, new; one kernel): TCP Mb/s of one 20 MB document and HTTP requests/s
   (2,258-byte documents, 10 keep-alive connections), from the guest client's own clock;
2. from a Linux network namespace through a TAP device (old, new) and on the
   namespace's loopback (native): new connections/s (wrk, ``Connection: close``),
   keep-alive requests/s (wrk, 16 connections, 2,258 bytes), TCP Mb/s (curl, 20 MB);
3. the 1 MB transfer time through a link with 5% loss and 20 ms delay (each direction;
   seeded, the TAP port's impairment); native: nginx in a second namespace behind a
   second TAP port of the same switch, the client's port impaired the same way.
   ``--loss-only`` runs just this transfer, for the new stack (its default congestion
   control ``tcp_cc=auto``, the loss-based ``tcp_cc=loss`` and the model alone,
   ``tcp_cc=model``), native Linux with its
   default congestion control (``net.ipv4.tcp_congestion_control``, BBR on this machine)
   and native Linux with Reno set in the server's namespace (loss-based like the guest's;
   Linux's Reno still has SACK, RACK-TLP and PRR), alternating, ``--rounds`` rounds.
Then, once: guest instructions per payload byte of a bulk transfer (old, new), from a
native code hook counting every instruction of the sender and the receiver VM.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT, table

from denali import _uc
from denali.kernel import Kernel
from denali.net.impair import LinkSpec
from denali.net.tap import TapPort

OLD_REV_DEFAULT = "c5d2237"
LOSS_LINK = "loss=5%,delay=20ms"
DOC = 2258


def sh(*cmd: str, check: bool = True) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stdout}{r.stderr}")
    return r.stdout


def build_old(rev: str, into: Path) -> Path:
    """Builds the guest images of ``rev`` into ``into``/images; returns that directory."""
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "guestos"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    out = into / "images"
    subprocess.run(
        ["make", "-s", "-C", str(src / "guestos"), "-j2", f"OUT={out}"], check=True, capture_output=True
    )
    return out


# ---- VM to VM ----


async def vm_to_vm(images: Path, big: int, reqs: int) -> tuple[float, float]:
    """(TCP Mb/s, requests/s) between an httpd and an httpget of this image set."""
    async with Kernel() as k:
        await k.spawn(str(images / "httpd.elf"), cmdline="ip=10.0.0.1/24")
        vm = await k.spawn(
            str(images / "httpget.elf"),
            cmdline=f"ip=10.0.0.2/24 url=http://10.0.0.1/bytes/{big} count=1 conc=1",
        )
        await vm.wait()
        m = re.search(r"ok=1 fail=0 bytes=(\d+) ms=(\d+)", vm.console.text())
        if not m:
            raise RuntimeError(vm.console.text())
        mbps = int(m.group(1)) * 8 / (max(int(m.group(2)), 1) / 1000) / 1e6
        vm = await k.spawn(
            str(images / "httpget.elf"),
            cmdline=f"ip=10.0.0.3/24 url=http://10.0.0.1/bytes/{DOC} count={reqs} conc=10",
        )
        await vm.wait()
        m = re.search(rf"ok={reqs} fail=0 bytes=\d+ ms=(\d+)", vm.console.text())
        if not m:
            raise RuntimeError(vm.console.text())
        return mbps, reqs / (max(int(m.group(1)), 1) / 1000)


# ---- through TAP, and native ----

NGINX_CONF = """
daemon off; master_process off; worker_processes 1; pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; sendfile on; tcp_nopush on;
  server {{ listen {addr}:80 reuseport backlog=4096; root {dir}/www;
    location = / {{ try_files /index.txt =404; }} }} }}
"""


def make_site(d: Path) -> None:
    www = d / "www" / "bytes"
    www.mkdir(parents=True)
    for n in (DOC, 1_000_000, 20_000_000):
        (www / str(n)).write_bytes(bytes(97 + i % 26 for i in range(n)))
    (d / "www" / "index.txt").write_bytes(b"Hello from a denali VM.\n")
    os.chmod(d, 0o755)


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Namespace:
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        sh("ip", "netns", "del", self.name, check=False)

    async def run(self, *cmd: str, limit: float = 120) -> str:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            self.name,
            *cmd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
        return out.decode(errors="replace")


def wrk_rate(out: str) -> float:
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    if not m:
        raise RuntimeError(out)
    if errs or "Non-2xx" in out:
        print(f"  (wrk reported errors: {out.strip().splitlines()[-3:]})")
    return float(m.group(1))


async def client_load(ns: Namespace, host: str, seconds: float) -> dict[str, float]:
    """The three loads of part 2 against host; figures by name."""
    d = f"{max(1, round(seconds))}s"
    conn = wrk_rate(await ns.run("wrk", "-t1", "-c8", f"-d{d}", "-H", "Connection: close", f"http://{host}/"))
    keep = wrk_rate(await ns.run("wrk", "-t1", "-c16", f"-d{d}", f"http://{host}/bytes/{DOC}"))
    out = await ns.run(
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_total}",
        f"http://{host}/bytes/20000000",
    )
    size, took = out.split()
    if int(size) != 20_000_000:
        raise RuntimeError(f"curl fetched {size} bytes")
    return {"conn_s": conn, "req_s": keep, "mbps": 20_000_000 * 8 / float(took) / 1e6}


async def lossy_fetch(ns: Namespace, host: str) -> float:
    out = await ns.run(
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-m",
        "60",
        "-w",
        "%{size_download} %{time_total}",
        f"http://{host}/bytes/1000000",
    )
    size, took = out.split()
    if int(size) != 1_000_000:
        raise RuntimeError(f"curl fetched {size} bytes through the lossy link")
    return float(took)


def _attach_tap(k: Kernel, dev: str, ns: Namespace, addr: str) -> TapPort:
    tap = TapPort(dev)
    tap.open()
    k.switch.attach(tap)
    sh("ip", "link", "set", dev, "netns", ns.name)
    sh("ip", "-n", ns.name, "addr", "add", addr, "dev", dev)
    sh("ip", "-n", ns.name, "link", "set", dev, "up")
    return tap


async def tap_round(
    kind: str, images: Path, site: Path, seconds: float, seed: int, *, loss_only: bool = False
) -> dict[str, float]:
    """One contender's part-2 loads (unless ``loss_only``) and its lossy transfer. ``kind``:
    ``old``/``new`` (guest images), ``new-model``/``new-loss`` (``new`` with ``tcp_cc=model``
    or ``tcp_cc=loss``),
    ``native`` (nginx, Linux's default congestion
    control) or ``native-reno`` (nginx, Reno set in its namespace)."""
    pid = os.getpid() % 10000
    with Namespace(f"btc{pid}") as cli, Namespace(f"bts{pid}") as srvns:
        async with Kernel() as k:
            tap = _attach_tap(k, f"btc{pid}", cli, "10.79.0.100/24")
            taps = [tap]
            nginx: asyncio.subprocess.Process | None = None
            try:
                if kind.startswith("native"):
                    if kind == "native-reno":
                        sh(
                            "ip",
                            "netns",
                            "exec",
                            srvns.name,
                            "sysctl",
                            "-qw",
                            "net.ipv4.tcp_congestion_control=reno",
                        )
                    taps.append(_attach_tap(k, f"bts{pid}", srvns, "10.79.0.1/24"))
                    for ns_, addr in ((cli, "127.0.0.1"), (srvns, "10.79.0.1")):
                        conf = site / f"nginx-{ns_.name}.conf"
                        conf.write_text(NGINX_CONF.format(dir=site, addr=addr))
                        p = await asyncio.create_subprocess_exec(
                            "ip", "netns", "exec", ns_.name, "nginx", "-c", str(conf), "-p", str(site)
                        )
                        if ns_ is srvns:
                            nginx = p
                        else:
                            nginx_lo = p
                    await asyncio.sleep(0.5)
                    # native: on the namespace's loopback
                    res = {} if loss_only else await client_load(cli, "127.0.0.1", seconds)
                    nginx_lo.terminate()
                    await nginx_lo.wait()
                else:
                    cc = {"new-model": " tcp_cc=model", "new-loss": " tcp_cc=loss"}.get(kind, "")
                    srv = await k.spawn(str(images / "httpd.elf"), cmdline=f"ip=10.79.0.1/24{cc}")
                    while "listening" not in srv.console.text():  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    res = {} if loss_only else await client_load(cli, "10.79.0.1", seconds)
                tap.set_link(LinkSpec.parse(f"{LOSS_LINK},seed={seed}"))
                res["loss_s"] = await lossy_fetch(cli, "10.79.0.1")
                return res
            finally:
                if nginx is not None:
                    nginx.terminate()
                    await nginx.wait()
                for t in taps:
                    t.close()


# ---- instructions per byte ----

HOOK_C = """
#include <stdint.h>
void denali_count(void *uc, uint64_t addr, uint32_t size, void *user) { (void)uc; (void)addr; (void)size;
    ++*(uint64_t *)user; }
"""


def native_counter(tmp: Path) -> ctypes.CDLL:
    c = tmp / "count.c"
    c.write_text(HOOK_C)
    so = tmp / "count.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(so), str(c)], check=True)
    return ctypes.CDLL(str(so))


async def instructions_per_byte(images: Path, lib: ctypes.CDLL) -> tuple[float, float]:
    """(sender, receiver) guest instructions per payload byte: the difference of two
    transfer sizes, so boot and per-request costs cancel."""
    sizes = (100_000, 400_000)
    counts: dict[str, list[int]] = {"srv": [], "cli": []}
    keep: list[object] = []

    def hook(vm: object) -> ctypes.c_uint64:
        n = ctypes.c_uint64(0)
        hh = ctypes.c_size_t()
        engine = vm.cpu.engine  # type: ignore[attr-defined]
        err = _uc._lib.uc_hook_add(
            engine._h,
            ctypes.byref(hh),
            ctypes.c_int(1 << 2),
            ctypes.cast(lib.denali_count, ctypes.c_void_p),
            ctypes.byref(n),
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),
        )
        if err:
            raise RuntimeError(f"uc_hook_add: {err}")
        keep.append(n)
        return n

    async with Kernel() as k:
        srv = await k.spawn(str(images / "httpd.elf"), cmdline="ip=10.0.0.1/24")
        while "listening" not in srv.console.text():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        sn = hook(srv)
        for i, size in enumerate(sizes):
            url = f"http://10.0.0.1/bytes/{size}"
            cli = await k.spawn(
                str(images / "httpget.elf"), cmdline=f"ip=10.0.0.{2 + i}/24 url={url} count=1 conc=1"
            )
            while not hasattr(cli, "cpu"):  # noqa: ASYNC110 (materialized: hook it before its first request)
                await asyncio.sleep(0)
            cn = hook(cli)
            before = sn.value
            await cli.wait()
            if "ok=1 fail=0" not in cli.console.text():
                raise RuntimeError(cli.console.text())
            counts["srv"].append(sn.value - before)
            counts["cli"].append(cn.value)
    d = sizes[1] - sizes[0]
    return ((counts["srv"][1] - counts["srv"][0]) / d, (counts["cli"][1] - counts["cli"][0]) / d)


# ---- the run ----


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def loss_only(rounds: int) -> None:
    cc = sh("sysctl", "-n", "net.ipv4.tcp_congestion_control").strip()
    who = ["new", "new-loss", "new-model", "native", "native-reno"]
    times: dict[str, list[float]] = {w: [] for w in who}
    with tempfile.TemporaryDirectory(prefix="bench-tcp-") as tmpd:
        site = Path(tmpd)
        os.chmod(site, 0o755)
        make_site(site)
        for r in range(rounds):
            order = who if r % 2 == 0 else who[::-1]
            for w in order:
                times[w].append(
                    asyncio.run(
                        tap_round(w, ROOT / "denali" / "images", site, 0, seed=r + 1, loss_only=True)
                    )["loss_s"]
                )
            print(f"round {r + 1}: " + ", ".join(f"{w} {times[w][-1]:.2f} s" for w in who), flush=True)

    def ratio(a: list[float], b: list[float]) -> float:
        return med([x / y for x, y in zip(a, b, strict=True)])

    rows = [
        (
            f"1 MB through {LOSS_LINK} each way (median of rounds)",
            "seconds",
            "new / this (median of ratios)",
            "new-model / this",
        )
    ]
    rows.append(("new stack (guest httpd), tcp_cc=auto (the default)", f"{med(times['new']):.2f}", "", ""))
    for key, name in (("new-loss", "tcp_cc=loss"), ("new-model", "tcp_cc=model")):
        rows.append(
            (
                f"new stack (guest httpd), {name}",
                f"{med(times[key]):.2f}",
                f"{ratio(times['new'], times[key]):.2f}x",
                f"{ratio(times['new-model'], times[key]):.2f}x",
            )
        )
    for key, name in (
        ("native", f"native Linux nginx, {cc} (the host's default)"),
        ("native-reno", "native Linux nginx, reno"),
    ):
        rows.append(
            (
                name,
                f"{med(times[key]):.2f}",
                f"{ratio(times['new'], times[key]):.2f}x",
                f"{ratio(times['new-model'], times[key]):.2f}x",
            )
        )
    table(f"Lossy transfer: {rounds} alternating rounds, {time.strftime('%Y-%m-%d')}", rows)
    print("per round: " + "; ".join(f"{w} " + " ".join(f"{x:.2f}" for x in times[w]) for w in who))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--old-rev", default=OLD_REV_DEFAULT)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--quick", action="store_true", help="2 rounds, smaller VM-to-VM loads")
    ap.add_argument(
        "--loss-only",
        action="store_true",
        help="only the lossy 1 MB transfer: new (3 controls), native, native-reno",
    )
    args = ap.parse_args()
    if args.loss_only:
        loss_only(args.rounds)
        return
    for tool in ("ip", "wrk", "curl", "nginx", "git", "make", "cc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_tcp: {tool} is not installed")
    rounds = 2 if args.quick else args.rounds
    big, reqs = (4_000_000, 500) if args.quick else (20_000_000, 2000)
    new_images = ROOT / "denali" / "images"
    with tempfile.TemporaryDirectory(prefix="bench-tcp-") as tmpd:
        tmp = Path(tmpd)
        os.chmod(tmp, 0o755)
        old_images = build_old(args.old_rev, tmp / "old")
        site = tmp / "site"
        site.mkdir()
        make_site(site)
        images = {"old": old_images, "new": new_images}
        vm: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
        failures = {"old": 0, "new": 0}
        tap: dict[str, list[dict[str, float]]] = {"old": [], "new": [], "native": []}
        for r in range(rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for who in order:
                for _attempt in range(3):  # the old stack can hang on a lost last segment
                    try:
                        vm[who].append(asyncio.run(vm_to_vm(images[who], big, reqs)))
                        break
                    except RuntimeError as exc:
                        failures[who] += 1
                        print(f"  {who} VM-to-VM run failed ({str(exc).strip()[:80]}); again", flush=True)
                else:
                    raise SystemExit(f"bench_tcp: the {who} stack failed three VM-to-VM runs in a row")
            for who in [*order, "native"] if r % 2 == 0 else ["native", *order]:
                tap[who].append(
                    asyncio.run(tap_round(who, images.get(who, new_images), site, args.seconds, seed=r + 1))
                )
            print(
                f"round {r + 1}: vm {vm['new'][-1]} / {vm['old'][-1]}; tap new {tap['new'][-1]}; "
                f"old {tap['old'][-1]}; native {tap['native'][-1]}",
                flush=True,
            )
        lib = native_counter(tmp)
        ipb_old = asyncio.run(instructions_per_byte(old_images, lib))
        ipb_new = asyncio.run(instructions_per_byte(new_images, lib))

    def ratio(a: list[float], b: list[float]) -> float:
        return med([x / y for x, y in zip(a, b, strict=True)])

    rows = [
        (
            "what (median of rounds)",
            "old stack",
            "new stack",
            "new/old (median of ratios)",
            "native Linux",
            "new/native",
        )
    ]
    for i, name in enumerate(
        (
            "TCP Mb/s VM to VM, 20 MB" if not args.quick else "TCP Mb/s VM to VM, 4 MB",
            f"HTTP req/s VM to VM, {DOC:,} B, 10 keep-alive conns",
        )
    ):
        o = [x[i] for x in vm["old"]]
        n = [x[i] for x in vm["new"]]
        rows.append((name, f"{med(o):.0f}", f"{med(n):.0f}", f"{ratio(n, o):.2f}x", "", ""))
    for key, name, fmt in (
        ("conn_s", "new connections/s through TAP (wrk, Connection: close)", "{:.0f}"),
        ("req_s", f"keep-alive req/s through TAP (wrk, 16 conns, {DOC:,} B)", "{:.0f}"),
        ("mbps", "TCP Mb/s through TAP (curl, 20 MB)", "{:.0f}"),
        ("loss_s", f"1 MB through {LOSS_LINK} each way, seconds", "{:.2f}"),
    ):
        o = [x[key] for x in tap["old"]]
        n = [x[key] for x in tap["new"]]
        v = [x[key] for x in tap["native"]]
        rows.append(
            (
                name,
                fmt.format(med(o)),
                fmt.format(med(n)),
                f"{ratio(n, o):.2f}x",
                fmt.format(med(v)),
                f"{ratio(n, v):.2f}x",
            )
        )
    rows.append(
        (
            "guest instructions per payload byte, sender (httpd)",
            f"{ipb_old[0]:.1f}",
            f"{ipb_new[0]:.1f}",
            f"{ipb_new[0] / ipb_old[0]:.2f}x",
            "",
            "",
        )
    )
    rows.append(
        (
            "guest instructions per payload byte, receiver (httpget)",
            f"{ipb_old[1]:.1f}",
            f"{ipb_new[1]:.1f}",
            f"{ipb_new[1] / ipb_old[1]:.2f}x",
            "",
            "",
        )
    )
    table(f"Guest TCP/IP: {rounds} alternating rounds, {time.strftime('%Y-%m-%d')}", rows)
    print(f"\nVM-to-VM runs that failed and were repeated: old {failures['old']}, new {failures['new']}")


if __name__ == "__main__":
    main()
