"""Sleeping in C (denali/sleep.py, ``_preempt.c`` 12.): an idle VM's timer wake-ups run
without Python, never early, with the TIMER bit; anything the host does to a sleeping
VM (an interrupt, a pause, a kill, a monitor, reading its stats or its clock) first
takes its wait back to Python, as if it had never left."""

from __future__ import annotations

import asyncio

from denali.abi import Irq
from denali.kernel import Kernel
from denali.monitor import Monitor
from denali.vm import Vm, VmState
from tests.conftest import need_image
from tests.test_native_clock import until


class Faults(Monitor):
    """Interposes on faults only: the VM is no longer plain, so it never sleeps in C."""

    async def fault(self, event: object) -> None:
        return None


async def _asleep(vm: Vm) -> None:
    await until(lambda: vm._asleep)


async def test_timer_wake_ups_run_in_c_never_early() -> None:
    """test-contract's one-shot timers (each 3 ms ahead, then IDLE until the TIMER bit):
    all but a few wake-ups are run by C, none early, every bit counted once."""
    need_image("test-contract")
    async with Kernel(native=True) as k:
        sleep = k._runtime().sleep
        assert sleep is not None
        vm = await k.spawn("test-contract", cmdline="mode=timer n=100 ms=3", memory="1M")
        assert await vm.wait() == 0, vm.console.text()
        assert "early=0 of 100" in vm.console.text()
        st = vm.stats
        assert st["irqs_raised"] == st["irq_bits_delivered"] == 100
        assert st["fast_wakes"] >= 90  # (the rest by Python: the first, or a busy loop)
        assert sleep.handed_back <= 10
        assert len(sleep) == 0


async def test_idle_deadlines_run_in_c_never_early() -> None:
    """IDLE's own deadline (no timer) is kept in C too: the guest sees no bit pending and
    a clock past its deadline every time."""
    need_image("test-contract")
    async with Kernel(native=True) as k:
        vm = await k.spawn("test-contract", cmdline="mode=idle n=60 ms=3", memory="1M")
        assert await vm.wait() == 0, vm.console.text()
        assert "early=0 of 60" in vm.console.text()
        assert vm.stats["fast_wakes"] >= 50


async def test_the_pure_python_path_never_sleeps_in_c() -> None:
    need_image("test-contract")
    async with Kernel(native=False) as k:
        assert k._runtime().sleep is None
        vm = await k.spawn("test-contract", cmdline="mode=timer n=10 ms=2", memory="1M")
        assert await vm.wait() == 0


async def test_stats_and_clock_of_a_sleeping_vm_are_current() -> None:
    """While the VM stays asleep in C and C runs its wake-ups, its stats count them and
    its clock device says the deadline C holds."""
    need_image("test-contract")
    async with Kernel(native=True) as k:
        vm = await k.spawn("test-contract", cmdline="mode=timer n=1000 ms=2", memory="1M")
        await _asleep(vm)
        before = vm.stats["slices"]
        assert vm._asleep  # reading stats does not take it out of C
        await asyncio.sleep(0.1)
        assert vm.stats["slices"] >= before + 20
        deadline = vm.clock.deadline
        assert vm._asleep and 0 < deadline - vm.now_ns() <= 2_000_000
        vm.kill()
        assert len(k._runtime().sleep or ()) == 0


async def test_an_interrupt_takes_a_sleeping_vm_back_to_python() -> None:
    """A host interrupt on a VM asleep in C wakes it with that bit (test-contract keeps
    waiting for its TIMER, so it goes back to sleep), and its timers stay on time."""
    need_image("test-contract")
    async with Kernel(native=True) as k:
        vm = await k.spawn("test-contract", cmdline="mode=timer n=20 ms=20", memory="1M")
        for _ in range(5):
            await _asleep(vm)
            raised = vm.stats["irqs_raised"]
            vm.interrupt(Irq.HOST)
            assert not vm._asleep
            assert vm.stats["irqs_raised"] == raised + 1
        assert await vm.wait() == 0, vm.console.text()
        assert "early=0 of 20" in vm.console.text()
        assert vm.stats["irq_bits_delivered"] >= 25  # 20 TIMER bits and the 5 HOST bits


async def test_a_paused_sleeping_vm_runs_nothing_until_resumed() -> None:
    need_image("test-contract")
    async with Kernel(native=True) as k:
        vm = await k.spawn("test-contract", cmdline="mode=timer n=30 ms=2", memory="1M")
        await _asleep(vm)
        await vm.pause()
        assert vm.state is VmState.PAUSED and not vm._asleep
        slices = vm.stats["slices"]
        await asyncio.sleep(0.05)  # 25 of its timers' worth
        assert vm.stats["slices"] == slices
        vm.resume()
        assert await vm.wait() == 0, vm.console.text()
        assert "early=0 of 30" in vm.console.text()


async def test_a_sleeping_vm_can_be_killed() -> None:
    need_image("test-contract")
    async with Kernel(native=True) as k:
        vms = [
            await k.spawn("test-contract", cmdline="mode=timer n=100000 ms=1", memory="1M") for _ in range(5)
        ]
        for vm in vms:
            await _asleep(vm)
        for vm in vms:
            vm.kill()
        for vm in vms:
            assert await asyncio.gather(vm.wait(), return_exceptions=True)
            assert vm.state is VmState.KILLED
        assert len(k._runtime().sleep or ()) == 0


async def test_a_monitor_keeps_a_vm_out_of_c() -> None:
    """A monitor pushed on a sleeping VM takes it out of C, and it never sleeps there
    again (nor once the monitor is popped: a VM that had a monitor stack keeps it, and
    with it the Python path's wake-ups)."""
    need_image("test-contract")
    async with Kernel(native=True) as k:
        vm = await k.spawn("test-contract", cmdline="mode=timer n=200 ms=2", memory="1M")
        await _asleep(vm)
        mon = Faults()
        k.monitors_of(vm).push(mon)
        assert not vm._asleep
        for _ in range(30):
            await asyncio.sleep(0.002)
            assert not vm._asleep
        k.monitors_of(vm).remove(mon)
        assert await vm.wait() == 0, vm.console.text()
        assert "early=0 of 200" in vm.console.text()
