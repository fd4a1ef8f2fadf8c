"""The native clock: CLOCK answered in the CPU's C interrupt hook (denali/_preempt.c,
``VCpu.set_native_clock``), only where the pure-Python path would have written, seen by
dirty tracking and by monitors, and selectable off."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from denali import _uc, abi
from denali.config import KernelConfig
from denali.kernel import Kernel
from denali.memory import PROT_R, PROT_RW
from denali.monitor import HypercallEvent, Monitor
from tests.conftest import need_image

SRC = Path(_uc.__file__).with_name("_preempt.c")


def test_the_c_structure_and_its_ctypes_mirror_agree(tmp_path: Path) -> None:
    """Every field of ``struct denali_route`` at the offset ``RouteCell`` writes it."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("no C compiler")
    src = SRC.read_text()
    start = src.index("struct denali_route {")
    body = src[start : src.index("};", start) + 2]
    names = [name for name, _ in _uc.RouteCell._fields_]
    probe = "\n".join(
        [
            "#include <stdio.h>",
            "#include <stddef.h>",
            "#include <stdint.h>",
            f"#define CLOCK_PAGES {_uc.CLOCK_PAGES}",
            body,
            "int main(void) {",
            'printf("%zu\\n", sizeof(struct denali_route));',
            *(f'printf("%zu\\n", offsetof(struct denali_route, {n}));' for n in names),
            "return 0; }",
        ]
    )
    (tmp_path / "probe.c").write_text(probe)
    subprocess.run([cc, "-o", str(tmp_path / "probe"), str(tmp_path / "probe.c")], check=True)
    out = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == ctypes.sizeof(_uc.RouteCell)
    assert [int(x) for x in out[1:]] == [getattr(_uc.RouteCell, n).offset for n in names]


async def until(cond: Callable[[], bool]) -> None:
    """Wait (polling the VM's counters) until ``cond()``; fail after 10 s."""
    for _ in range(10_000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("timed out")


async def test_clock_is_answered_in_c_and_counted(kernel: Kernel) -> None:
    need_image("bench-hcall")
    vm = await kernel.spawn("bench-hcall", cmdline="n=5000")
    assert await vm.wait() == 0
    assert vm.hypercalls == 5001  # 5,000 CLOCKs and TERMINATE, whichever path took them
    assert vm.native_hypercalls >= 4990  # all but the first on each page
    assert kernel.vm_stats(vm)["hypercalls_native"] == vm.native_hypercalls


async def test_pure_python_when_asked_or_when_a_monitor_interposes(monkeypatch: pytest.MonkeyPatch) -> None:
    need_image("bench-hcall")

    class Counts(Monitor):
        calls = 0

        def hypercall(self, call: HypercallEvent) -> None:
            Counts.calls += 1

    for kernel, monitors in ((Kernel(native=False), []), (Kernel(), [Counts()])):
        async with kernel as k:
            vm = await k.spawn("bench-hcall", cmdline="n=3000", monitors=monitors)
            assert await vm.wait() == 0
            assert vm.hypercalls == 3001 and vm.native_hypercalls == 0
    assert Counts.calls == 3001  # the monitor saw every CLOCK

    class Exits(Monitor):  # interposes on TERMINATE only: CLOCK stays in C
        hypercalls = frozenset({int(abi.Hc.TERMINATE)})
        calls = 0

        def hypercall(self, call: HypercallEvent) -> None:
            Exits.calls += 1

    async with Kernel() as k:
        vm = await k.spawn("bench-hcall", cmdline="n=3000", monitors=[Exits()])
        assert await vm.wait() == 0
        assert Exits.calls == 1 and vm.native_hypercalls >= 2990
    monkeypatch.setenv("DENALI_NATIVE", "0")
    assert KernelConfig().native is False
    monkeypatch.setenv("DENALI_NATIVE", "1")
    assert KernelConfig().native is True


async def test_a_monitor_pushed_on_a_running_vm_sees_every_clock_after() -> None:
    need_image("bench-hcall")
    from denali.monitor import MonitorStack

    seen: list[int] = []

    class Clocks(Monitor):
        def hypercall(self, call: HypercallEvent) -> None:
            seen.append(call.nr)

    async with Kernel() as k:
        vm = await k.spawn("bench-hcall", cmdline="n=100000000")
        await until(lambda: vm.native_hypercalls > 1000)
        stack = MonitorStack.of(vm)
        stack.push(Clocks())
        before = vm.native_hypercalls
        await asyncio.sleep(0.05)
        assert vm.native_hypercalls == before and len(seen) > 100
        stack.pop()
        await asyncio.sleep(0.05)
        assert vm.native_hypercalls > before  # back in C once nothing interposes
        vm.kill()


async def test_the_clock_pages_are_dirty_while_tracked_and_forgotten_when_lowered() -> None:
    """While pages are tracked every CLOCK goes to Python, which marks its page dirty; a
    permission lowered anywhere makes the hook forget every page it may write."""
    need_image("bench-hcall")
    async with Kernel() as k:
        vm = await k.spawn("bench-hcall", cmdline="n=100000000")
        await until(lambda: vm.native_hypercalls > 1000)
        cpu, mem = vm._cpu, vm._memory
        assert cpu is not None and mem is not None
        pages = [p - 1 for p in cpu.engine._route.clock_pages if p]
        assert pages and all(mem.check(p * abi.PAGE_SIZE, abi.PAGE_SIZE, PROT_RW) for p in pages)
        mem.start_tracking()
        await asyncio.sleep(0.02)
        mem.take_dirty()  # a round begins at the next slice
        before = cpu.engine.native_clocks
        await asyncio.sleep(0.05)
        dirty = mem.take_dirty()
        assert cpu.engine.native_clocks == before
        assert any(dirty[p] for p in pages)
        mem.stop_tracking()
        await until(lambda: cpu.engine.native_clocks > before)  # back in C after tracking
        assert any(cpu.engine._route.clock_pages)
        heap = next(r for r in mem.regions if r.prot == PROT_RW and r.start not in pages)
        assert mem.protect(heap.start, heap.start + abi.PAGE_SIZE, PROT_R)  # any page, lowered
        assert not any(cpu.engine._route.clock_pages)
        vm.kill()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
