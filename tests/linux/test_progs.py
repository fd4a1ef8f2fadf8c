"""Static glibc programs of our own (tests/linux/progs/, gcc -m32 -static) in VMs:
process start, files, time, TLS and x87/SSE state (across swap), sockets on the LAN
and through TAP, stdin, stderr, signals, and the count of unimplemented calls."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from denali import lowlevel
from denali.devices.disk import DiskSpec, create_image
from denali.kernel import Kernel
from denali.linux import STREAM, run_linux, spawn_linux, syscalls_of
from denali.net.tap import TapPort
from tests.linux.helpers import ENV, build_prog, need_busybox, need_qemu, qemu_run
from tests.net.netns import need_tools, run


@pytest.fixture(scope="module")
def progs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("progs")
    for name in ("files", "timeprog", "tls", "net", "misc"):
        build_prog(name, out)
    return out


@pytest.fixture
async def kernel() -> AsyncIterator[Kernel]:
    async with Kernel() as k:
        yield k


async def test_process_start_argv_envp_auxv(kernel: Kernel, progs: Path) -> None:
    r = await run_linux(
        progs / "misc", ["misc", "args", "one", "two words"], kernel=kernel, env={"A": "1", "B": "x=y"}
    )
    assert r.status == 0
    assert r.stdout.decode().splitlines() == [
        "argc=4",
        "argv[0]=misc",
        "argv[1]=args",
        "argv[2]=one",
        "argv[3]=two words",
        "env A=1",
        "env B=x=y",
        "pagesz=4096 uid=0 euid=0 gid=0 secure=0",
        "phnum>0=1 entry>0=1 random=1 hwcap=1 sysinfo=0",
        "uname Linux i686",
    ]


async def test_files_match_qemu(kernel: Kernel, progs: Path, tmp_path: Path) -> None:
    qemu = need_qemu()
    host = tmp_path / "host"
    host.mkdir()
    ref = qemu_run(qemu, progs / "files", ["files"], host)
    image = tmp_path / "blank.img"
    await create_image(str(image), 16 << 20)
    got = await run_linux(
        progs / "files",
        ["files"],
        kernel=kernel,
        env=ENV,
        disks=[DiskSpec(str(image), name="root", mode="rw")],
        cwd="/",
    )
    assert (got.status, got.stdout.decode()) == (ref.status, ref.stdout.decode())
    assert got.status == 3
    # what it wrote is on the disk (the image itself, mode rw): a second VM reads it back
    busybox = need_busybox()
    for name in ("b.txt", "stdio.txt"):
        cat = await run_linux(
            busybox,
            ["busybox", "cat", f"/work/{name}"],
            kernel=kernel,
            disks=[DiskSpec(str(image), name="root", mode="ro")],
        )
        assert (cat.status, cat.stdout) == (0, (host / "work" / name).read_bytes()), cat.stderr


async def test_files_persist_on_a_kept_overlay(kernel: Kernel, progs: Path, tmp_path: Path) -> None:
    image = tmp_path / "blank.img"
    await create_image(str(image), 8 << 20)
    spec = DiskSpec(str(image), name="root", mode="overlay-keep", overlay=str(tmp_path / "o.ovl"))
    r1 = await run_linux(progs / "files", ["files"], kernel=kernel, disks=[spec], cwd="/")
    assert r1.status == 3
    r2 = await run_linux(progs / "files", ["files"], kernel=kernel, disks=[spec], cwd="/")
    assert 'mkdir("work", 0755)                      -> -1 File exists' in r2.stdout.decode()
    assert image.read_bytes().count(0) == image.stat().st_size  # the base image stayed blank


async def test_time_sleep_and_alarm(kernel: Kernel, progs: Path) -> None:
    r = await run_linux(progs / "timeprog", ["timeprog", str(int(time.time()))], kernel=kernel)
    assert r.status == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert all(line.endswith((": yes", " ok")) or "alarms=4" in line for line in lines), lines
    assert len(lines) == 10


async def test_tls_and_fpu_survive_swapping(progs: Path) -> None:
    qemu = need_qemu()
    ref = qemu_run(qemu, progs / "tls", ["tls", "12", "15"], Path("/"))
    async with Kernel(memory_budget=64 << 20) as k:
        vms = []
        outs: list[bytearray] = []
        for _ in range(4):
            out = bytearray()
            outs.append(out)
            vms.append(await spawn_linux(k, progs / "tls", ["tls", "12", "15"], stdout=out.extend))
        swapped: set[int] = set()
        while not all(vm.done for vm in vms):
            await asyncio.sleep(0.001)
            for vm in vms:  # every sleeping VM leaves RAM: its TLS and x87/SSE state must come back
                if vm.evictable() and await lowlevel.swap_out(vm):
                    swapped.add(vm.id)
        statuses = await asyncio.wait_for(asyncio.gather(*(vm.wait() for vm in vms)), 120)
        swaps = k.stats()["swap"]["swap_outs"]
    assert statuses == [0] * 4
    assert len(swapped) == 4 and swaps >= 4, "the VMs were not swapped out while they slept"
    for out in outs:
        assert bytes(out) == ref.stdout


async def test_stdin_stdout_stderr_and_exit_status(kernel: Kernel, progs: Path) -> None:
    data = os.urandom(200_000)
    r = await run_linux(progs / "misc", ["misc", "stdin"], kernel=kernel, stdin=data)
    assert (r.status, r.stdout, r.stderr) == (0, data, b"read 200000 bytes\n")
    r = await run_linux(progs / "misc", ["misc", "stdin"], kernel=kernel)  # no input: end of file
    assert (r.status, r.stdout, r.stderr) == (0, b"", b"read 0 bytes\n")
    r = await run_linux(progs / "misc", ["misc", "exit", "42"], kernel=kernel)
    assert r.status == 42


async def test_stdin_streamed_while_the_program_waits(kernel: Kernel, progs: Path) -> None:
    out = bytearray()
    err = bytearray()
    vm = await spawn_linux(
        kernel, progs / "misc", ["misc", "stdin"], stdin=STREAM, stdout=out.extend, stderr=err.extend
    )
    await vm.until_idle()  # blocked in read(0) with nothing to read: the VM idles
    await vm.console.write_input(b"first\n")
    await vm.console.write_input(b"second\n")
    vm.console.close_input()
    assert await vm.wait() == 0
    assert (bytes(out), bytes(err)) == (b"first\nsecond\n", b"read 13 bytes\n")


async def test_signal_default_action_is_128_plus_signal(kernel: Kernel, progs: Path) -> None:
    r = await run_linux(progs / "misc", ["misc", "kill", "15"], kernel=kernel)
    assert (r.status, r.stdout) == (143, b"before\n")
    r = await run_linux(progs / "misc", ["misc", "kill", "17"], kernel=kernel)  # SIGCHLD: ignored
    assert (r.status, r.stdout) == (0, b"before\nafter\n")


async def test_unimplemented_calls_are_enosys_and_reported(kernel: Kernel, progs: Path) -> None:
    r = await run_linux(progs / "misc", ["misc", "fork"], kernel=kernel, report=True)
    assert r.status == 0
    assert r.stdout == b"fork=-1 errno=Function not implemented\nexecve=-1 errno=Function not implemented\n"
    assert b"denali-linux: enosys execve (11) x1" in r.stderr
    assert b"denali-linux: enosys clone (120) x1" in r.stderr or b"(2) x1" in r.stderr
    assert r.syscalls > 5


async def test_trace_shows_every_call(kernel: Kernel, progs: Path) -> None:
    r = await run_linux(progs / "misc", ["misc", "exit", "3"], kernel=kernel, trace=True)
    assert r.status == 3
    assert b"[lx] exit_group(252)(0x3" in r.stderr or b"[lx] brk(45)" in r.stderr


async def _wait_for(buf: bytearray, text: bytes, vm_done: asyncio.Future[object] | None = None) -> None:
    for _ in range(1000):
        if text in buf:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {text!r} in {bytes(buf)!r}")


async def test_linux_server_and_client_on_the_lan(kernel: Kernel, progs: Path) -> None:
    out = bytearray()
    srv = await spawn_linux(
        kernel, progs / "net", ["net", "server", "7000", "2"], stdout=out.extend, net="ip=10.0.0.1/24"
    )
    await _wait_for(out, b"listening on 7000")
    tcp = await run_linux(
        progs / "net", ["net", "tcp", "10.0.0.1", "7000", "hello lan"], kernel=kernel, net="ip=10.0.0.2/24"
    )
    assert (tcp.status, tcp.stdout) == (0, b"reply: HELLO LAN\n"), tcp.stderr
    tcp2 = await run_linux(
        progs / "net", ["net", "tcp", "10.0.0.1", "7000", "again"], kernel=kernel, net="ip=10.0.0.3/24"
    )
    assert tcp2.stdout == b"reply: AGAIN\n"
    for i, ip in enumerate(("10.0.0.4", "10.0.0.5")):
        udp = await run_linux(
            progs / "net",
            ["net", "udp", "10.0.0.1", "7000", f"datagram {i}"],
            kernel=kernel,
            net=f"ip={ip}/24",
        )
        assert udp.stdout == f"reply: DATAGRAM {i}\n".encode()
    assert await asyncio.wait_for(srv.wait(), 30) == 0
    assert b"tcp from 10.0.0.2: 9 bytes" in out and b"tcp from 10.0.0.3: 5 bytes" in out
    assert b"udp from 10.0.0.4: 10 bytes" in out


async def test_connect_refused_and_unreachable(kernel: Kernel, progs: Path) -> None:
    await spawn_linux(kernel, progs / "misc", ["misc", "stdin"], stdin=STREAM, net="ip=10.0.0.1/24")
    r = await run_linux(
        progs / "net", ["net", "tcp", "10.0.0.1", "9", "x"], kernel=kernel, net="ip=10.0.0.2/24"
    )
    assert r.stdout == b"connect: Connection refused\n"
    r = await run_linux(progs / "net", ["net", "tcp", "10.0.0.1", "9", "x"], kernel=kernel)
    assert r.stdout == b"connect: Network is unreachable\n"


@pytest.mark.net
async def test_linux_server_serves_a_linux_client_through_tap(kernel: Kernel, progs: Path) -> None:
    need_tools("ip")
    ns = f"dlx{os.getpid()}"
    dev = f"dlxt{os.getpid() % 100000}"
    rc, out = await run("ip", "netns", "add", ns)
    assert rc == 0, out
    tap = TapPort(dev)
    try:
        tap.open()
        kernel.switch.attach(tap)
        for cmd in (
            ("ip", "link", "set", dev, "netns", ns),
            ("ip", "-n", ns, "addr", "add", "10.78.0.100/24", "dev", dev),
            ("ip", "-n", ns, "link", "set", dev, "up"),
        ):
            rc, out = await run(*cmd)
            assert rc == 0, (cmd, out)
        srv_out = bytearray()
        srv = await spawn_linux(
            kernel,
            progs / "net",
            ["net", "server", "7001", "1"],
            stdout=srv_out.extend,
            net="ip=10.78.0.1/24",
        )
        await _wait_for(srv_out, b"listening")
        client = (
            "import socket,sys\n"
            "s=socket.create_connection(('10.78.0.1',7001),timeout=10)\n"
            "s.sendall(b'from linux'); print(s.recv(100).decode())\n"
            "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.settimeout(10)\n"
            "u.sendto(b'udp from linux',('10.78.0.1',7001)); print(u.recv(100).decode())\n"
        )
        rc, out = await run("ip", "netns", "exec", ns, shutil.which("python3") or "python3", "-c", client)
        assert rc == 0, out
        assert out.decode().splitlines() == ["FROM LINUX", "UDP FROM LINUX"]
        assert await asyncio.wait_for(srv.wait(), 30) == 0
        assert b"tcp from 10.78.0.100: 10 bytes" in srv_out
    finally:
        tap.close()
        await run("ip", "netns", "del", ns)


async def test_many_linux_vms_at_once(progs: Path) -> None:
    """The short version of bench_linux's 1,000 VMs: 40 programs alive together, each
    idle in read(0), then each given its input."""
    async with Kernel() as k:
        outs = [bytearray() for _ in range(40)]
        vms = [
            await spawn_linux(
                k,
                progs / "misc",
                ["misc", "stdin"],
                stdin=STREAM,
                nic=False,
                stdout=out.extend,
                stderr=lambda _d: None,
            )
            for out in outs
        ]
        for vm in vms:
            await vm.until_idle()
        assert all(syscalls_of(vm) > 0 for vm in vms)
        for i, vm in enumerate(vms):
            await vm.console.write_input(b"vm %d\n" % i)
            vm.console.close_input()
        assert await asyncio.wait_for(asyncio.gather(*(vm.wait() for vm in vms)), 60) == [0] * 40
    assert [bytes(o) for o in outs] == [b"vm %d\n" % i for i in range(40)]


async def test_runs_on_worker_threads(progs: Path) -> None:
    async with Kernel(workers=2) as k:
        results = await asyncio.gather(
            *(run_linux(progs / "tls", ["tls", "3", "5"], kernel=k) for _ in range(3))
        )
    assert {r.status for r in results} == {0}
    assert len({r.stdout for r in results}) == 1 and b"counter=44" in results[0].stdout
