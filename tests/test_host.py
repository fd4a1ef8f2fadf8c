"""One host of several kernels (``denali boot --kernels N``, denali/host.py,
denali/host_api.py): real processes started from this tree (``python -m denali``), real
guests, HTTP between VMs on different kernels over the host's LAN (VXLAN on
127.0.0.1), ``denali ctl`` and ``denali top`` against the one API, a kernel killed with
SIGKILL, and every process checked gone at the end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from denali.host_api import _sum_into, label_samples
from denali.kernel import Kernel
from tests.conftest import need_image

DENALI = [sys.executable, "-m", "denali"]


def _exists(path: str | Path) -> bool:
    return os.path.exists(path)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


async def _gone(pids: list[int], within_s: float = 15) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if not any(_alive(p) for p in pids):
            return True
        await asyncio.sleep(0.1)
    return False


async def _ctl(sock: str, *args: str, check: bool = True) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *DENALI, "ctl", sock, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    rc = proc.returncode
    assert rc is not None
    if check:
        assert rc == 0, (args, out, err)
    return rc, out.decode(), err.decode()


async def _json(sock: str, *args: str) -> dict[str, Any]:
    _, out, _ = await _ctl(sock, "--json", *args)
    data: dict[str, Any] = json.loads(out)
    return data


class Boot:
    """A ``denali boot`` process whose stdout and stderr are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = ""
        self.err = ""
        assert proc.stdout is not None and proc.stderr is not None
        self._tasks = [
            asyncio.ensure_future(self._collect(proc.stdout, "out")),
            asyncio.ensure_future(self._collect(proc.stderr, "err")),
        ]

    async def _collect(self, stream: asyncio.StreamReader, name: str) -> None:
        while line := await stream.readline():
            setattr(self, name, getattr(self, name) + line.decode(errors="replace"))

    async def wait_for(self, text: str, where: str = "out", within_s: float = 60) -> None:
        end = time.monotonic() + within_s
        while text not in getattr(self, where):
            assert time.monotonic() < end, f"{text!r} not seen; stdout:\n{self.out}\nstderr:\n{self.err}"
            assert self.proc.returncode is None, f"boot ended ({self.proc.returncode}): {self.err}"
            await asyncio.sleep(0.1)

    async def finish(self, within_s: float = 60) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), within_s)
        await asyncio.gather(*self._tasks)
        return rc


async def _boot(*args: str) -> Boot:
    proc = await asyncio.create_subprocess_exec(
        *DENALI, "boot", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    return Boot(proc)


@pytest.fixture
async def tmp() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dhost") as d:
        yield Path(d)


async def _wait_api(sock: Path) -> None:
    end = time.monotonic() + 60
    while not _exists(sock):
        assert time.monotonic() < end, "the API socket never appeared"
        await asyncio.sleep(0.1)


async def _kernels(sock: str) -> list[dict[str, Any]]:
    kernels: list[dict[str, Any]] = (await _json(sock, "host"))["host"]["kernels"]
    return kernels


async def _vm_rows(sock: str) -> dict[int, dict[str, Any]]:
    return {int(r["id"]): r for r in (await _json(sock, "ls"))["vms"]}


# ---------------------------------------------------------------- without an API


async def test_vms_spread_over_kernels_and_the_exit_status_is_the_boots() -> None:
    need_image("hello")
    b = await _boot("hello", "--kernels", "2", "--count", "3")
    assert await b.finish() == 0, b.err
    for i in (1, 2, 3):  # VM i has id i wherever it ran
        assert f"[vm{i}] Hello from denali! I am VM {i}," in b.out, b.out
    need_image("test-fault")
    b = await _boot("test-fault", "--kernels", "2", "--count", "3", "-c", "kind=ud2 at=2 vm={i}")
    assert await b.finish() == 125, b.err
    assert "VM 2 (test-fault) faulted: invalid instruction" in b.err
    assert "Traceback" not in b.err


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: the default is one kernel")
async def test_the_default_is_a_kernel_per_core_but_not_more_than_vms() -> None:
    """Without ``--kernels``: several VMs make a host of one kernel per core (one boot,
    one exit status, each VM's console), one VM or ``--trace`` one kernel."""
    need_image("hello")
    cores = min(len(os.sched_getaffinity(0)), 64)
    b = await _boot("hello", "-v", "--count", "3")
    assert await b.finish() == 0, b.err
    assert f"host of {min(cores, 3)} kernels running" in b.err, b.err
    assert all(f"[vm{i}] Hello from denali! I am VM {i}," in b.out for i in (1, 2, 3)), b.out
    for args in (["--count", "1"], ["--count", "2", "--trace", os.devnull]):
        b = await _boot("hello", "-v", *args)
        assert await b.finish() == 0, b.err
        assert "host of" not in b.err and "Hello from denali!" in b.out, b.err


@pytest.fixture
async def lo_down() -> AsyncIterator[list[str]]:
    """A network namespace made here whose loopback is down (as a new one is): the
    command prefix that runs in it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (ip netns)")
    name = f"dlo{os.getpid() % 100000}"
    made = await asyncio.create_subprocess_exec("ip", "netns", "add", name)
    assert await made.wait() == 0
    try:
        yield ["ip", "netns", "exec", name]
    finally:
        gone = await asyncio.create_subprocess_exec("ip", "netns", "del", name)
        await gone.wait()


async def test_where_the_kernels_lan_cannot_run_the_default_is_one_kernel(lo_down: list[str]) -> None:
    """127.0.0.1 carries nothing in a namespace whose loopback is down: without
    ``--kernels`` the boot runs as one kernel; ``--kernels 2`` is one clear line."""
    need_image("hello")

    async def boot(*args: str) -> Boot:
        proc = await asyncio.create_subprocess_exec(
            *lo_down,
            *DENALI,
            "boot",
            "hello",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return Boot(proc)

    b = await boot("--count", "2")
    assert await b.finish() == 0, b.err
    assert "[vm1] Hello" in b.out and "[vm2] Hello" in b.out and not b.err, b.err
    b = await boot("--count", "2", "--kernels", "2")
    assert await b.finish() != 0
    assert b.err.count("\n") == 1 and "ip link set lo up" in b.err and "Traceback" not in b.err, b.err


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["hello", "--kernels", "2", "--trace", "/tmp/never"], "--trace is not supported with --kernels 2"),
        (
            ["hello", "--restart-lost"],
            "--restart-lost, --checkpoint, --balance and --host-lan need --kernels 2 or more",
        ),
        (["nosuch", "--kernels", "2"], "unknown image 'nosuch'"),
        (["hello", "--kernels", "0"], "is not a number of kernels from 1 to 64"),
        # a kernel that cannot start: its message once, its status, the other kernel stopped
        (["hello", "--kernels", "2", "--disk", "/nonexistent/d.img"], "cannot open disk image"),
    ],
)
async def test_bad_input_is_one_line_and_status_2(args: list[str], line: str) -> None:
    b = await _boot(*args)
    assert await b.finish() == 2
    assert b.err.count(line) == 1 and b.err.count("\n") == 1, b.err
    assert "Traceback" not in b.err


# ---------------------------------------------------------------- one API over the kernels


async def test_one_api_one_lan_migration_and_a_kernel_killed(tmp: Path) -> None:
    for image in ("httpd", "httpget"):
        need_image(image)
    sock = str(tmp / "api.sock")
    b = await _boot(
        "httpd", "--kernels", "2", "--count", "2", "-c", "ip={ip:10.79.0.0}/24", "--api", sock,
        "--metrics", f"127.0.0.1:{30000 + os.getpid() % 20000}",
    )  # fmt: skip
    pids: list[int] = []
    try:
        await _wait_api(Path(sock))
        kernels = await _kernels(sock)
        pids = [k["pid"] for k in kernels]
        assert [k["state"] for k in kernels] == ["running", "running"]
        rows = await _vm_rows(sock)
        assert {i: rows[i]["kernel"] for i in rows} == {1: 0, 2: 1}  # round-robin
        await b.wait_for("[vm2] httpd: listening")
        # HTTP from kernel 0 to a VM on kernel 1, over the host's LAN
        await _ctl(
            sock,
            "spawn",
            "httpget",
            "--kernel",
            "0",
            "-c",
            "ip=10.79.0.9/24 url=http://10.79.0.2/bytes/20000 count=3",
        )
        await b.wait_for("httpget: ok=3 fail=0 bytes=60000")
        # a live migration between the kernels through the one API; it still answers
        _, out, _ = await _ctl(sock, "migrate", "1", "--to", "kernel:1")
        assert "VM 1 migrated to" in out and "(live)" in out
        assert (await _vm_rows(sock))[1]["kernel"] == 1
        await _ctl(
            sock,
            "spawn",
            "httpget",
            "--kernel",
            "0",
            "-c",
            "ip=10.79.0.10/24 url=http://10.79.0.1/bytes/7000 count=2",
        )
        await b.wait_for("httpget: ok=2 fail=0 bytes=14000")
        # counters, top and metrics over both kernels
        k = (await _json(sock, "kernel"))["kernel"]
        assert [m["state"] for m in k["kernels"]] == ["running", "running"] and k["vms"] >= 2
        top = await asyncio.create_subprocess_exec(
            *DENALI, "top", sock, "--once", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        tout, terr = await top.communicate()
        assert top.returncode == 0, terr
        assert "kernels 2/2" in tout.decode() and "httpd" in tout.decode(), tout
        metrics = await _metrics(30000 + os.getpid() % 20000)
        assert (
            'denali_host_kernel_up{kernel="0"} 1' in metrics
            and 'denali_host_kernel_up{kernel="1"} 1' in metrics
        )
        assert (
            'kernel="0"' in metrics.split("denali_host_")[0]
            and 'kernel="1"' in metrics.split("denali_host_")[0]
        )

        # kernel 1 dies: one line, its VMs lost, kernel 0 serves on
        os.kill(pids[1], signal.SIGKILL)
        await b.wait_for(f"kernel 1 (pid {pids[1]}) died (killed by SIGKILL)", "err")
        assert b.err.count("died") == 1
        assert [k["state"] for k in await _kernels(sock)] == ["running", "lost"]
        rows = await _vm_rows(sock)
        assert rows[1]["state"] == "lost" and rows[2]["state"] == "lost", rows
        rc, _, err = await _ctl(sock, "pause", "2", check=False)
        assert rc == 1 and "was lost with its kernel" in err
        metrics = await _metrics(30000 + os.getpid() % 20000)
        assert 'denali_host_kernel_up{kernel="1"} 0' in metrics and "denali_host_lost_vms 2" in metrics
        await _ctl(sock, "spawn", "httpd", "-c", "ip=10.79.0.20/24")
        await _ctl(
            sock, "spawn", "httpget", "-c", "ip=10.79.0.21/24 url=http://10.79.0.20/bytes/3000 count=2"
        )
        await b.wait_for("httpget: ok=2 fail=0 bytes=6000")
        assert all(r["kernel"] == 0 for r in (await _vm_rows(sock)).values() if r["state"] != "lost")
    finally:
        if b.proc.returncode is None:
            b.proc.send_signal(signal.SIGTERM)
        rc = await b.finish()
    assert rc == 130, b.err
    assert await _gone(pids), "a kernel process outlived its host"
    assert not _exists(sock)
    assert "Traceback" not in b.err


async def _metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


async def test_a_lost_vm_restarts_from_its_snapshot(tmp: Path) -> None:
    for image in ("httpd", "httpget"):
        need_image(image)
    sock = str(tmp / "api.sock")
    b = await _boot("httpd", "--kernels", "2", "--count", "0", "--api", sock, "--restart-lost")
    pids: list[int] = []
    try:
        await _wait_api(Path(sock))
        pids = [k["pid"] for k in await _kernels(sock)]
        _, out, _ = await _ctl(sock, "spawn", "httpd", "--kernel", "1", "-c", "ip=10.79.1.1/24")
        vm = out.split()[0]
        await b.wait_for(f"[vm{vm}] httpd: listening")
        await _ctl(sock, "pause", vm)
        await _ctl(sock, "snapshot", vm, str(tmp / "v.snap"))
        await _ctl(sock, "resume", vm)
        os.kill(pids[1], signal.SIGKILL)
        await b.wait_for(f"VM {vm} restarted on kernel 0 from its snapshot", "err")
        row = (await _vm_rows(sock))[int(vm)]
        assert row["kernel"] == 0 and row["state"] in ("idle", "runnable", "running"), row
        # the same VM (id, address) answers from its new kernel
        await _ctl(sock, "spawn", "httpget", "-c", "ip=10.79.1.9/24 url=http://10.79.1.1/bytes/4000 count=2")
        await b.wait_for("httpget: ok=2 fail=0 bytes=8000")
        assert (await _json(sock, "host"))["host"]["restarts"] == 1
    finally:
        if b.proc.returncode is None:
            b.proc.send_signal(signal.SIGTERM)
        rc = await b.finish()
    assert rc == 130, b.err
    assert await _gone(pids)


async def test_the_balancer_moves_a_vm_off_a_busy_kernel(tmp: Path) -> None:
    need_image("test-spin")
    sock = str(tmp / "api.sock")
    b = await _boot("test-spin", "--kernels", "2", "--count", "0", "--api", sock, "--balance")
    pids: list[int] = []
    try:
        await _wait_api(Path(sock))
        pids = [k["pid"] for k in await _kernels(sock)]
        await _ctl(sock, "spawn", "test-spin", "-n", "2", "--kernel", "0")
        end = time.monotonic() + 90
        while (await _json(sock, "host"))["host"]["moves"] < 1:
            assert time.monotonic() < end, f"no VM moved; {await _kernels(sock)}"
            await asyncio.sleep(0.5)
        rows = await _vm_rows(sock)
        assert sorted(r["kernel"] for r in rows.values()) == [0, 1], rows
    finally:
        if b.proc.returncode is None:
            b.proc.send_signal(signal.SIGTERM)
        rc = await b.finish()
    assert rc == 130, b.err
    assert await _gone(pids)


async def test_a_kernel_elsewhere_joins_the_hosts_lan_directly(tmp: Path) -> None:
    """--host-lan: a separate denali process (another machine, here on 127.0.0.1) is a
    peer of both kernels of a host and fetches from a VM on each, with no gateway."""
    for image in ("httpd", "httpget"):
        need_image(image)
    base = 21000 + os.getpid() % 20000
    sock = str(tmp / "api.sock")
    host = await _boot(
        "httpd", "--kernels", "2", "--count", "2", "-c", "ip={ip:10.79.2.0}/24", "--mac-tag", "3",
        "--host-lan", f"43@127.0.0.1:{base + 9},local=127.0.0.1:{base}", "--api", sock,
    )  # fmt: skip
    pids: list[int] = []
    try:
        await host.wait_for("[vm2] httpd: listening")
        kernels = await _kernels(sock)
        pids = [k["pid"] for k in kernels]
        assert [k["lan"] for k in kernels] == [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]
        for vm in (1, 2):  # VM 1 on kernel 0, VM 2 on kernel 1
            fetch = f"ip=10.79.2.{100 + vm}/24 url=http://10.79.2.{vm}/bytes/9000 count=2"
            other = await _boot(
                "httpget", "--mac-tag", "4", "-c", fetch,
                "--net", f"vxlan:43@127.0.0.1:{base}+127.0.0.1:{base + 1},local=127.0.0.1:{base + 9}",
            )  # fmt: skip
            assert await other.finish() == 0, other.err
            assert "httpget: ok=2 fail=0 bytes=18000" in other.out
    finally:
        if host.proc.returncode is None:
            host.proc.send_signal(signal.SIGTERM)
        rc = await host.finish()
    assert rc == 130, host.err
    assert await _gone(pids)


async def test_a_vm_migrates_in_from_another_kernel_through_the_hosts_api(tmp: Path) -> None:
    need_image("httpd")
    other_sock, sock = str(tmp / "other.sock"), str(tmp / "api.sock")
    other = await _boot("httpd", "-c", "ip=10.79.3.1/24", "--mac-tag", "5", "--api", other_sock)
    host = await _boot("httpd", "--kernels", "2", "--count", "0", "--api", sock, "--mac-tag", "6")
    pids: list[int] = []
    try:
        await other.wait_for("httpd: listening")
        await _wait_api(Path(sock))
        pids = [k["pid"] for k in await _kernels(sock)]
        _, out, _ = await _ctl(other_sock, "migrate", "1", "--to", sock)
        assert "VM 1 migrated to" in out
        rows = await _vm_rows(sock)
        assert rows[1]["kernel"] == 0 and rows[1]["mac"] == "02:05:00:00:00:01", rows
        await _ctl(sock, "pause", "1")  # and it is the host's now: its API reaches it
    finally:
        for b in (other, host):
            if b.proc.returncode is None:
                b.proc.send_signal(signal.SIGTERM)
        await other.finish()
        rc = await host.finish()
    assert rc == 130, host.err
    assert await _gone(pids)


async def test_the_kernels_end_with_a_host_killed_by_sigkill(tmp: Path) -> None:
    need_image("test-spin")
    sock = str(tmp / "api.sock")
    b = await _boot("test-spin", "--kernels", "2", "--count", "2", "--api", sock)
    await _wait_api(Path(sock))
    pids = [k["pid"] for k in await _kernels(sock)]
    assert all(_alive(p) for p in pids)
    b.proc.kill()
    await b.finish()
    assert await _gone(pids), "kernels outlived their host (PR_SET_PDEATHSIG, the link)"


# ---------------------------------------------------------------- the pieces


async def test_kernel_id_sequence_and_watchers() -> None:
    need_image("hello")
    seen: list[int] = []
    async with Kernel(id_start=2, id_step=3) as k:
        k.watch(lambda vm: seen.append(vm.id))
        vms = [await k.spawn("hello") for _ in range(3)]
        assert [vm.id for vm in vms] == [2, 5, 8] == seen
        assert [vm.mac[-1] for vm in vms] == [2, 5, 8]
        for vm in vms:
            assert await vm.wait() == 0


def test_prometheus_text_is_labelled_by_kernel_and_counters_summed() -> None:
    text = (
        "# HELP denali_vms VMs by state\n# TYPE denali_vms gauge\n"
        'denali_vms{state="idle"} 2.0\ndenali_up 1\n'
        "# HELP denali_switches_total CPU switches\n# TYPE denali_switches_total counter\n"
        "denali_switches_total 7.0\n"
    )
    fams = label_samples(text, 3)
    assert fams["denali_vms"][1] == ['denali_vms{kernel="3",state="idle"} 2.0', 'denali_up{kernel="3"} 1']
    assert fams["denali_switches_total"][1] == ['denali_switches_total{kernel="3"} 7.0']
    total: dict[str, Any] = {}
    _sum_into(total, {"vms": 2, "state": "running", "vm_states": {"idle": 2}, "swap": {"budget": None}})
    _sum_into(total, {"vms": 3, "state": "running", "vm_states": {"idle": 1, "running": 2}})
    assert total == {
        "vms": 5,
        "state": "running",
        "vm_states": {"idle": 3, "running": 2},
        "swap": {"budget": None},
    }
