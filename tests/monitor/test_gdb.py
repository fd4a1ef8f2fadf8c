"""The gdb stub driven by the real gdb: breakpoints on guest symbols, registers, memory,
stepping, variables, Ctrl-C, detach, kill, faults, one VM stopped while others run,
and the CLI's --gdb/--gdb-wait. Plus the wire framing and a hostile client."""

from __future__ import annotations

import asyncio
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from denali.errors import GuestFault, VmKilledError
from denali.images import builtin_images
from denali.kernel import Kernel
from denali.monitor.gdb import GdbStub
from denali.monitor.rsp import checksum, escape, frame, unescape
from denali.vm import Vm
from tests.conftest import need_image

MARK = "@@denali-gdb-test@@"


def gdb_path() -> str:
    path = shutil.which("gdb")
    if path is None:
        pytest.fail("gdb is not installed; run tools/install-test-deps.sh")
    return path


def image(name: str) -> str:
    need_image(name)
    return str(builtin_images()[name])


class Gdb:
    """The real gdb, fed commands on stdin; ``run`` returns what they printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.buf = ""

    @classmethod
    async def start(cls, elf: str, port: int) -> Gdb:
        proc = await asyncio.create_subprocess_exec(
            gdb_path(),
            "-nx",
            "-q",
            elf,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        g = cls(proc)
        await g.run("set pagination off", "set confirm off", "set width 0", f"target remote 127.0.0.1:{port}")
        return g

    def send(self, *commands: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(c + "\n" for c in commands).encode())

    async def run(self, *commands: str) -> str:
        self.send(*commands, f"echo {MARK}\\n")
        return await self.until(MARK)

    async def until(self, text: str) -> str:
        """What gdb printed up to ``text`` (30 s at most for each read)."""
        assert self.proc.stdout is not None
        while text not in self.buf:
            chunk = await asyncio.wait_for(self.proc.stdout.read(4096), 30)
            if not chunk:
                raise AssertionError(f"gdb ended before {text!r}; it said:\n{self.buf}")
            self.buf += chunk.decode(errors="replace")
        out, _, self.buf = self.buf.partition(text)
        return out

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                self.send("quit")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), 10)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def stub_factory() -> AsyncIterator[list[GdbStub]]:
    stubs: list[GdbStub] = []
    yield stubs
    for s in stubs:
        await s.aclose()


async def debugged(
    k: Kernel, stubs: list[GdbStub], name: str, cmdline: str = "", wait: bool = True
) -> tuple[Vm, GdbStub]:
    stub = GdbStub(port=0, wait=wait)
    await stub.start()
    stubs.append(stub)
    vm = await k.spawn(name, cmdline=cmdline, monitors=[stub])
    return vm, stub


async def test_break_registers_memory_step_variable_exit(kernel: Kernel, stub_factory: list[GdbStub]) -> None:
    elf = image("test-gdb")
    vm, stub = await debugged(kernel, stub_factory, "test-gdb")
    other = await kernel.spawn("test-gdb", cmdline="spin=1")
    g = await Gdb.start(elf, stub.port)
    try:
        out = await g.run("info registers eip")
        assert re.search(r"eip\s+0x10000\s.*_start", out), out  # held at the entry point
        out = await g.run("break gdb_target", "continue")
        assert "Breakpoint 1, gdb_target" in out, out
        regs = await g.run("info registers")
        for name in ("eax", "ecx", "esp", "ebp", "eip", "eflags", "cs", "ss"):
            assert re.search(rf"(^|\(gdb\) ){name}\s+0x[0-9a-f]+", regs, re.M), regs
        assert "gdb_target" in regs.split("eip", 1)[1].splitlines()[0]
        out = await g.run("x/4x $esp")
        assert re.search(r"0x[0-9a-f]+:\s+(0x[0-9a-f]{8}\s*){4}", out), out
        before = await g.run("print/x $pc")
        out = await g.run("stepi", "print/x $pc")
        assert before.split("=")[-1].strip() != out.split("=")[-1].strip(), (before, out)

        # held at the breakpoint: this VM runs no slice, the other goes on
        slices, other_slices = vm.stats["slices"], other.stats["slices"]
        await asyncio.sleep(0.2)
        assert vm.stats["slices"] == slices
        assert other.stats["slices"] > other_slices

        out = await g.run("print gdb_calls", "set var gdb_value = 42", "print gdb_value")
        assert "$3 = 0" in out and "$4 = 42" in out, out  # at the breakpoint, before the first call
        out = await g.run("delete", "continue")
        assert "exited with code 052" in out, out
    finally:
        await g.close()
    assert await vm.wait() == 42
    assert "gdb_value=42 sum=132 calls=3" in vm.console.text()
    other.kill()


async def test_ctrl_c_stops_a_running_vm(kernel: Kernel, stub_factory: list[GdbStub]) -> None:
    elf = image("test-gdb")
    vm, stub = await debugged(kernel, stub_factory, "test-gdb", "spin=1", wait=False)
    await asyncio.sleep(0.05)
    g = await Gdb.start(elf, stub.port)  # attaching stops it
    try:
        g.send("continue")
        await g.until("Continuing.")
        await asyncio.sleep(0.2)
        turns = vm.stats["slices"]
        assert turns > 0 and not vm.done
        g.proc.send_signal(signal.SIGINT)
        out = await g.until("SIGINT")
        assert "Program received signal" in out + "SIGINT"
        out = await g.run("set var gdb_stop = 1", "continue")
        assert "exited with code 07" in out, out
    finally:
        await g.close()
    assert await vm.wait() == 7
    assert "stopped after" in vm.console.text()


async def test_detach_lets_the_vm_run_on_without_breakpoints(
    kernel: Kernel, stub_factory: list[GdbStub]
) -> None:
    elf = image("test-gdb")
    vm, stub = await debugged(kernel, stub_factory, "test-gdb")
    g = await Gdb.start(elf, stub.port)
    try:
        out = await g.run("break gdb_target", "continue")
        assert "Breakpoint 1" in out
        # gdb removes its breakpoints when it stops; put one in and leave: detach must remove it
        await g.run("set breakpoint always-inserted on", "break main")
        out = await g.run("detach")
        assert "Detaching" in out or "detached" in out.lower(), out
    finally:
        await g.close()
    assert await vm.wait() == 7  # no stray int3 left behind, no debugger holding it
    assert stub.sessions == 1


async def test_watchpoints_are_software_ones(kernel: Kernel, stub_factory: list[GdbStub]) -> None:
    """The stub offers no Z2-Z4: gdb says so when it tries a hardware watchpoint, and a
    software one (``set can-use-hw-watchpoints 0``, as docs/monitors.md says) works."""
    elf = image("test-gdb")
    vm, stub = await debugged(kernel, stub_factory, "test-gdb")
    g = await Gdb.start(elf, stub.port)
    try:
        out = await g.run("break gdb_target", "continue", "delete")
        assert "Breakpoint 1, gdb_target" in out, out
        out = await g.run("watch gdb_calls", "continue")
        assert "Could not insert hardware watchpoint" in out, out
        out = await g.run("delete", "set can-use-hw-watchpoints 0", "watch gdb_calls", "continue")
        assert re.search(r"Old value = 0\s+New value = 1", out), out
        out = await g.run("continue")
        assert re.search(r"Old value = 1\s+New value = 2", out), out
        out = await g.run("delete", "continue")
        assert "exited with code 07" in out, out
    finally:
        await g.close()
    assert await vm.wait() == 7
    assert "calls=3" in vm.console.text()


async def test_kill_stops_only_that_vm(kernel: Kernel, stub_factory: list[GdbStub]) -> None:
    elf = image("test-gdb")
    vm, stub = await debugged(kernel, stub_factory, "test-gdb")
    other = await kernel.spawn("test-gdb")
    g = await Gdb.start(elf, stub.port)
    try:
        await g.run("kill")
    finally:
        await g.close()
    with pytest.raises(VmKilledError, match="killed by the debugger"):
        await vm.wait()
    assert await other.wait() == 7


async def test_a_fault_is_a_signal(kernel: Kernel, stub_factory: list[GdbStub]) -> None:
    elf = image("test-fault")
    vm, stub = await debugged(kernel, stub_factory, "test-fault", "kind=null-write")
    g = await Gdb.start(elf, stub.port)
    try:
        out = await g.run("continue")
        assert "SIGSEGV" in out, out
        out = await g.run("x/4x 0xc0000000", "x/4x 0x0")
        assert out.count("Cannot access memory") == 2, out
        out = await g.run("set {int}0x2000 = 1")  # the kernel page is never writable
        assert "Cannot access memory" in out, out
        out = await g.run("continue")
        assert "terminated with signal SIGSEGV" in out, out
    finally:
        await g.close()
    with pytest.raises(GuestFault):
        await vm.wait()


def test_cli_gdb_wait_with_two_vms() -> None:
    elf = image("test-gdb")
    gdb_path()
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "denali",
            "boot",
            "test-gdb",
            "--count",
            "2",
            "--gdb",
            "127.0.0.1:0",
            "--gdb-wait",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:  # its pipes are closed however the test ends
        try:
            assert proc.stderr is not None
            ports: dict[int, int] = {}
            seen = b""
            deadline = time.monotonic() + 60
            while len(ports) < 2:  # read the fd itself: a hang fails in 60 s, with what came
                ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
                assert ready, f"no two gdb stubs listening within 60 s: {seen!r}"
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk, f"denali boot ended before listening: {seen!r}"
                seen += chunk
                for line in seen.decode(errors="replace").splitlines():
                    m = re.match(r"denali: gdb: VM (\d+) listening on 127\.0\.0\.1:(\d+)", line)
                    if m:
                        ports[int(m.group(1))] = int(m.group(2))
            for i in (2, 1):  # each VM waits for its own debugger
                r = subprocess.run(
                    [
                        gdb_path(),
                        "-nx",
                        "-batch",
                        "-ex",
                        f"target remote 127.0.0.1:{ports[i]}",
                        "-ex",
                        "continue",
                        elf,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert "exited with code 07" in r.stdout, r.stdout + r.stderr
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 1  # both exited 7: not all 0
            assert out.count("gdb_value=7") == 2
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_framing() -> None:
    assert checksum(b"OK") == 0x9A
    assert frame(b"OK") == b"$OK#9a"
    raw = b"a$b#c}d*e"
    assert unescape(escape(raw)) == raw
    assert b"$" not in escape(raw)[1:] and b"#" not in escape(raw)


async def test_a_hostile_client_gets_errors_and_the_vm_is_unharmed(
    kernel: Kernel, stub_factory: list[GdbStub]
) -> None:
    vm, stub = await debugged(kernel, stub_factory, "test-gdb")
    r, w = await asyncio.open_connection("127.0.0.1", stub.port)
    second_r, second_w = await asyncio.open_connection("127.0.0.1", stub.port)
    assert await asyncio.wait_for(second_r.read(), 5) == b""  # one debugger at a time
    second_w.close()

    async def ask(data: bytes) -> bytes:
        w.write(frame(data))
        await w.drain()
        buf = b""
        while b"#" not in buf.lstrip(b"+")[1:] or len(buf.split(b"#")[-1]) < 2:
            buf += await asyncio.wait_for(r.read(4096), 5)
        assert buf.startswith(b"+$")
        return buf[2 : buf.rindex(b"#")]

    w.write(b"$bad#00")  # a wrong checksum is refused
    await w.drain()
    assert await asyncio.wait_for(r.readexactly(1), 5) == b"-"
    assert await ask(b"mzz,4") == b"E16"
    assert await ask(b"m0,4") == b"E0e"  # page 0 is never readable
    assert await ask(b"m10000,4") != b"E0e"
    assert await ask(b"M2000,1:00") == b"E0e"  # the kernel page is never writable
    assert await ask(b"Z0,c0000000,1") == b"E0e"
    assert await ask(b"P0a=00000000") == b"E0e"  # segment registers are the kernel's
    assert await ask(b"Gzz") == b"E16"
    assert await ask(b"qNoSuchThing") == b""
    assert (await ask(b"qXfer:features:read:target.xml:0,40")).startswith(b"m<?xml")
    w.close()
    await asyncio.sleep(0.05)
    assert await vm.wait() == 7  # the client left: the VM runs to its end
