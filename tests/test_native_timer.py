"""The native timer and IDLE exit: TIMER_SET answered in the CPU's C interrupt hook
(denali/_preempt.c, ``VCpu.set_native_timer``), the VM's timer armed right after the
slice, never early, seen by the clock device's state and by monitors; IDLE's exit taken
there (``VCpu.set_native_idle``) unless a monitor interposes on it."""

from __future__ import annotations

import asyncio
import sys

import pytest

from denali import abi
from denali.abi import Irq
from denali.kernel import Kernel
from denali.monitor import HypercallEvent, Monitor
from denali.vm import VmState
from tests.conftest import need_image
from tests.test_native_clock import until


def watching(nr: int, seen: list[int]) -> type[Monitor]:
    """A monitor class that interposes on hypercall ``nr`` only and notes each call."""

    class Watch(Monitor):
        hypercalls = frozenset({int(nr)})

        def hypercall(self, call: HypercallEvent) -> None:
            seen.append(call.nr)

    return Watch


async def test_timers_armed_in_c_fire_on_time() -> None:
    """test-contract's one-shot timers (each armed 2 ms ahead, then IDLE until it fires)
    never wake the VM early; the same calls as the pure-Python path, most in C."""
    need_image("test-contract")
    counts = []
    for native in (True, False):
        async with Kernel(native=native) as k:
            vm = await k.spawn("test-contract", cmdline="mode=timer n=200 ms=2", memory="1M")
            assert await vm.wait() == 0, vm.console.text()
            assert "early=0 of 200" in vm.console.text()
            cpu_timers = k.vm_stats(vm)["hypercalls_native"]
            counts.append((vm.stats["irqs_raised"], cpu_timers))
    (irqs_c, native_c), (irqs_py, native_py) = counts
    assert native_py == 0 and native_c >= 190 + 190  # its CLOCKs and its TIMER_SETs
    assert irqs_c == irqs_py == 200


async def test_the_armed_deadline_is_the_clock_devices_state() -> None:
    """A timer armed in C is the clock device's deadline as soon as the slice ended (what
    a snapshot saves), and a monitor on TIMER_SET sees every one instead."""
    need_image("test-contract")
    seen: list[int] = []
    Timers = watching(abi.Hc.TIMER_SET, seen)

    async with Kernel(native=True) as k:
        vm = await k.spawn("test-contract", cmdline="mode=timer n=1 ms=60000", memory="1M")
        await vm.until_idle()
        assert vm._cpu is not None and vm._cpu.engine.native_timers == 1
        assert 59e9 < vm.clock.deadline - vm.now_ns() <= 60e9
        assert vm.clock.save() == {"deadline": vm.clock.deadline}
        vm.kill()
        watched = await k.spawn(
            "test-contract", cmdline="mode=timer n=20 ms=1", memory="1M", monitors=[Timers()]
        )
        assert await watched.wait() == 0
        await until(lambda: len(seen) == 20)
        assert watched.native_hypercalls == k.vm_stats(watched)["hypercalls_native"]


async def test_idle_exits_in_c_unless_a_monitor_interposes() -> None:
    """Two VMs yielding to each other (IDLE with a past deadline) take every exit in C,
    and a monitor on IDLE sees each one; a bad IDLE pointer still gets FAULT (from
    Python: test-hostile's checks)."""
    need_image("bench-yield")
    seen: list[int] = []
    Idles = watching(abi.Hc.IDLE, seen)

    async with Kernel(native=True) as k:
        vms = [await k.spawn("bench-yield", cmdline="n=3000", nic=False) for _ in range(2)]
        for vm in vms:
            assert await vm.wait() == 0
            assert vm.hypercalls == 3001 and vm.native_hypercalls >= 2990
        watched = await k.spawn("bench-yield", cmdline="n=500", nic=False, monitors=[Idles()])
        assert await watched.wait() == 0
        assert len(seen) == 500 and watched.native_hypercalls == 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


async def test_a_yield_gets_its_out_fields_in_c() -> None:
    """An IDLE whose deadline has passed (a yield) gets its out fields from the hook (the
    clock, nothing pending) and only its result from Python, unless an interrupt is
    pending, when Python answers it whole: test-idle's 100,000 yields each read a clock
    between the ones before and after the call, and the host bit raised meanwhile comes
    back from exactly one of them, on both paths."""
    need_image("test-idle")
    for native in (True, False):
        async with Kernel(native=native) as k:
            vm = await k.spawn("test-idle", cmdline="yields=100000", memory="1M")
            await asyncio.sleep(0.05)
            assert vm.state is not VmState.EXITED
            vm.interrupt(Irq.HOST)
            assert await asyncio.wait_for(vm.wait(), 60) == 0
            assert "yields=100000 bad=0 host=1" in vm.console.text(), vm.console.text()
            assert vm.stats["idles"] == 0  # not one of them waited
