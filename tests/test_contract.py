"""The kernel keeps the contract of docs/virtual-architecture.md (each test failed before its fix).

Virtual registers are rewritten before every slice; deadlines never pass early, under
uvloop and the default loop; fault reports give the byte, not its page; x87/SSE state
survives a swap-out; device completions with worker threads land between slices.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from denali import lowlevel
from denali.errors import GuestFault, SwapError
from denali.fault import FaultKind
from denali.kernel import Kernel
from denali.vm import VmState
from tests.conftest import boot, need_image


async def test_guest_writes_to_kernel_fields_are_overwritten(kernel: Kernel) -> None:
    need_image("test-contract")
    out = await boot(kernel, "test-contract", "mode=vregs")
    assert out.status == 0, out.console
    assert "SUCCESS" in out.console


async def _deadlines(mode: str, vms: int, n: int, ms: int) -> list[str]:
    async with Kernel() as k:
        spawned = [
            await k.spawn("test-contract", cmdline=f"mode={mode} n={n} ms={ms}", memory="1M")
            for _ in range(vms)
        ]
        outs = []
        for vm in spawned:
            status = await vm.wait()
            outs.append(vm.console.text())
            assert status == 0, vm.console.text()
        assert k.stats()["timers"]["armed"] == 0
        return outs


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("mode", ["timer", "idle"])
def test_no_deadline_is_reported_passed_early(loop: str, mode: str) -> None:
    """200 waits of 50 ms (4 VMs x 50, side by side): zero early wake-ups."""
    need_image("test-contract")
    run = uvloop.run if loop == "uvloop" else asyncio.run
    outs = run(_deadlines(mode, 4, 50, 50))
    assert all("early=0 of 50" in o and "SUCCESS" in o for o in outs), outs


@pytest.mark.parametrize(
    ("kind", "address", "access"),
    [
        ("unmapped-write", 0x3ABC, "write"),
        ("unmapped-string", 0x5123, "read"),
        ("unmapped-push", 0x7FF0, "write"),
    ],
)
async def test_fault_report_gives_the_faulting_byte(
    kernel: Kernel, kind: str, address: int, access: str
) -> None:
    need_image("test-fault")
    vm = await kernel.spawn("test-fault", cmdline=f"kind={kind}", memory="1M")
    with pytest.raises(GuestFault) as info:
        await vm.wait()
    report = info.value.report
    assert report.kind is FaultKind.UNMAPPED
    assert report.address == address, hex(report.address or 0)
    assert report.access == access
    assert f"0x{address:08x}" in report.summary()


@pytest.mark.parametrize("workers", [0, 2])
async def test_fpu_and_sse_state_survive_a_swap_out(workers: int) -> None:
    need_image("test-contract")
    async with Kernel(memory_budget=64 << 20, workers=workers) as k:
        vm = await k.spawn("test-contract", cmdline="mode=fpu", memory="1M")
        await vm.until_idle()
        await lowlevel.swap_out(vm)
        assert vm.swapped
        vm.interrupt()
        assert await vm.wait() == 0, vm.console.text()
        assert k.stats()["swap"]["swap_ins"] == 1


async def test_corrupted_swap_file_fails_that_vm_only(tmp_path: Path) -> None:
    need_image("test-idle")
    async with Kernel(memory_budget=64 << 20, swap_dir=str(tmp_path)) as k:
        victim = await k.spawn("test-idle", cmdline="ms=100000 wait=host", memory="1M")
        other = await k.spawn("test-idle", cmdline="ms=100000 wait=host", memory="1M")
        for vm in (victim, other):
            await vm.until_idle()
            await lowlevel.swap_out(vm)
            assert vm.swapped
        path = lowlevel.swap_path(k, victim)
        _flip_byte(path, 0x10000)  # a byte of a stored page (the image's code)
        victim.interrupt()
        other.interrupt()
        with pytest.raises(SwapError, match="checksum"):
            await victim.wait()
        assert victim.state is VmState.FAILED
        assert await other.wait() == 0


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def full_dir(tmp_path: Path) -> object:
    """A directory on a 1 MiB tmpfs (root: the suite's network tests need it too)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("this test mounts a tmpfs: run the suite as root")
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


async def test_full_swap_directory_keeps_vms_resident(
    full_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Swap-outs that hit ENOSPC leave each VM resident and running; one log line, counted."""
    need_image("test-swapsum")
    budget = 8 << 20
    async with Kernel(memory_budget=budget, swap_dir=str(full_dir)) as k:
        vms = [await k.spawn("test-swapsum", cmdline="kib=1024 rounds=3", memory="4M") for _ in range(8)]
        results = await asyncio.gather(*(vm.wait() for vm in vms))
        swap = k.stats()["swap"]
    assert results == [0] * 8
    assert swap["eviction_failures"] >= 1 and swap["write_errors"] >= 1
    warnings = [r for r in caplog.records if "swap-out failed" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("bad", ["/nonexistent/swap", "/proc"])
def test_bad_swap_dir_is_one_line_and_exit_2(bad: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "denali", "boot", "hello", "--memory-budget", "64M", "--swap-dir", bad],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("denali: swap directory"), p.stderr
