"""The native console: CONSOLE_WRITE answered in the CPU's C interrupt hook
(denali/_preempt.c 11., ``VCpu.set_native_console``), the bytes handed to the console
after the slice, in the guest's order, also across writes that take the Python path."""

from __future__ import annotations

from denali import abi
from denali.kernel import Kernel
from tests.conftest import need_image
from tests.test_native_timer import watching


async def test_a_flood_reads_the_same_on_both_paths() -> None:
    """test-print's 900 lines of 64 bytes (the console keeps the last 64 KiB), one write
    each: the console holds the same bytes on the native path (most writes answered in
    C; a write that does not fit what is left of the buffer takes the Python path, which
    hands the buffer over first) as on the pure-Python one."""
    need_image("test-print")
    texts, natives = [], []
    for native in (True, False):
        async with Kernel(native=native) as k:
            vm = await k.spawn("test-print", cmdline="lines=900")
            assert await vm.wait() == 0
            texts.append(vm.console.text())
            assert vm._cpu is None or vm._cpu.native_console is native
            natives.append(k.vm_stats(vm)["hypercalls_native"])
    with_c, pure = texts
    lines = with_c.splitlines()
    assert with_c == pure and len(lines) == 901 and lines[-1] == "printed 900 lines"
    assert all(lines[i - 1].startswith(f"line {i:10d} of") for i in range(1, 901))
    assert natives[1] == 0 and natives[0] >= 800  # one write at each full buffer: Python


async def test_hostile_writes_answered_alike() -> None:
    """test-hostile's console cases (too long, kernel addresses, past the end, wrapping,
    page 0, empty) get the Python path's answers on the native path too."""
    need_image("test-hostile")
    outs = []
    for native in (True, False):
        async with Kernel(native=native) as k:
            vm = await k.spawn("test-hostile", nic=False)
            assert await vm.wait() == 0, vm.console.text()
            outs.append([ln for ln in vm.console.text().splitlines() if "console" in ln or "FAIL" in ln])
    assert outs[0] == outs[1]


async def test_a_monitor_on_console_write_sees_every_write() -> None:
    """A monitor interposing on CONSOLE_WRITE turns the native console off for its VM:
    it sees each of test-print's writes, and the console still gets every line."""
    need_image("test-print")
    seen: list[int] = []
    async with Kernel(native=True) as k:
        vm = await k.spawn(
            "test-print", cmdline="lines=500", monitors=[watching(abi.Hc.CONSOLE_WRITE, seen)()]
        )
        assert await vm.wait() == 0
        assert len(seen) == 501
        assert vm.console.text().count("\n") == 501
