"""VM runtime with real guests from guestos/: boot, exit, faults, preemption, idle, irqs."""

from __future__ import annotations

import asyncio
import re
import struct
import time

import pytest

from denali import abi
from denali.abi import Irq, Result
from denali.cpu import SyscallRoute
from denali.errors import ConfigError, GuestFault, ImageError, KernelClosedError, VmKilledError
from denali.fault import FaultKind
from denali.kernel import Kernel
from denali.memory import PROT_RW, PROT_RX, GuestMemory, Region
from denali.vm import Vm, VmState
from tests.conftest import boot, need_image


async def test_hello(kernel: Kernel) -> None:
    out = await boot(kernel, "hello")
    assert out.status == 0
    assert re.search(r"Hello from denali! I am VM \d+, with 16384 KiB of memory\.", out.console)


@pytest.mark.parametrize("status", [0, 1, 42, 255])
async def test_terminate_status(kernel: Kernel, status: int) -> None:
    out = await boot(kernel, "test-exit", f"status={status}")
    assert out.status == status
    assert f"exiting with {status}" in out.console


async def test_return_from_main_is_exit_status(kernel: Kernel) -> None:
    assert (await boot(kernel, "test-exit", "status=9 via=return")).status == 9


FAULTS = {
    "null-read": (FaultKind.NULL_POINTER, "read"),
    "null-write": (FaultKind.NULL_POINTER, "write"),
    "kernel-read": (FaultKind.KERNEL_SPACE, "read"),
    "kernel-write": (FaultKind.KERNEL_SPACE, "write"),
    "outside-write": (FaultKind.OUTSIDE_MEMORY, "write"),
    "code-write": (FaultKind.PROTECTION, "write"),
    "kernel-page-write": (FaultKind.PROTECTION, "write"),
    "exec-data": (FaultKind.PROTECTION, "execute"),
    "exec-stack": (FaultKind.PROTECTION, "execute"),
    "stack-overflow": (FaultKind.STACK_OVERFLOW, "write"),
    "ud2": (FaultKind.INVALID_INSN, None),
    "priv-cli": (FaultKind.PRIVILEGED, None),
    "priv-hlt": (FaultKind.PRIVILEGED, None),
    "priv-out": (FaultKind.PRIVILEGED, None),
    "div0": (FaultKind.DIVIDE, None),
    "int3": (FaultKind.BREAKPOINT, None),
    "int-other": (FaultKind.BAD_INTERRUPT, None),
}


@pytest.mark.parametrize("kind", sorted(FAULTS))
async def test_fault_stops_only_that_vm(kernel: Kernel, kind: str) -> None:
    need_image("test-fault")
    need_image("test-idle")
    survivor = await kernel.spawn("test-idle", cmdline="ms=100")
    vm = await kernel.spawn("test-fault", cmdline=f"kind={kind}")
    with pytest.raises(GuestFault) as info:
        await vm.wait()
    report = info.value.report
    want_kind, want_access = FAULTS[kind]
    assert report.kind is want_kind, report.details()
    if want_access is not None:
        assert report.access == want_access, report.details()
    assert report.vm_id == vm.id and report.image == "test-fault"
    if report.kind in (FaultKind.BREAKPOINT, FaultKind.BAD_INTERRUPT):
        # traps leave EIP after the instruction; the report points at the instruction
        assert report.registers["eip"] - report.eip == (1 if kind == "int3" else 2)
    else:
        assert report.registers["eip"] == report.eip
    assert report.disassembly, "the faulting instruction is disassembled"
    assert vm.state is VmState.FAULTED
    assert f"about to fault: {kind}" in vm.console.text()
    assert "FAIL" not in vm.console.text()
    assert await survivor.wait() == 0
    assert "slept_us=" in survivor.console.text()


async def test_fault_addresses(kernel: Kernel) -> None:
    need_image("test-fault")
    vm = await kernel.spawn("test-fault", cmdline="kind=kernel-write")
    with pytest.raises(GuestFault) as info:
        await vm.wait()
    assert info.value.report.address == abi.Layout.KERNEL_SPACE
    assert "0xc0000000" in str(info.value)


async def test_spinning_guest_is_preempted(kernel: Kernel) -> None:
    need_image("test-spin")
    spinner = await kernel.spawn("test-spin")
    out = await boot(kernel, "hello")
    assert out.status == 0
    assert spinner.state in (VmState.RUNNABLE, VmState.RUNNING)
    assert spinner.stats["preemptions"] >= 1
    spinner.kill()
    with pytest.raises(VmKilledError):
        await spinner.wait()
    assert spinner.state is VmState.KILLED


async def test_two_spinners_share_the_cpu(kernel: Kernel) -> None:
    need_image("test-spin")
    a = await kernel.spawn("test-spin")
    b = await kernel.spawn("test-spin")
    await asyncio.sleep(0.3)
    assert a.stats["slices"] >= 10 and b.stats["slices"] >= 10
    assert 0.5 < a.stats["slices"] / b.stats["slices"] < 2.0
    a.kill()
    b.kill()


async def test_idle_wakes_on_deadline(kernel: Kernel) -> None:
    t0 = time.monotonic()
    out = await boot(kernel, "test-idle", "ms=60")
    elapsed = time.monotonic() - t0
    m = re.search(r"idle: slept_us=(\d+) pending=0x([0-9a-f]+)", out.console)
    assert m, out.console
    assert int(m.group(1)) >= 60_000
    assert int(m.group(2), 16) == 0
    assert elapsed >= 0.06


async def test_idle_wakes_early_on_interrupt(kernel: Kernel) -> None:
    need_image("test-idle")
    vm = await kernel.spawn("test-idle", cmdline="ms=10000 wait=host")
    await asyncio.sleep(0.05)
    assert vm.state is VmState.IDLE
    t0 = time.monotonic()
    vm.interrupt(Irq.HOST)
    assert await vm.wait() == 0
    assert time.monotonic() - t0 < 2.0
    m = re.search(r"slept_us=(\d+) pending=0x([0-9a-f]+)", vm.console.text())
    assert m and int(m.group(1)) < 5_000_000 and int(m.group(2), 16) & Irq.HOST


async def test_idle_vm_uses_no_slices(kernel: Kernel) -> None:
    need_image("test-idle")
    vm = await kernel.spawn("test-idle", cmdline="ms=10000 wait=host")
    await asyncio.sleep(0.05)
    before = vm.stats["slices"]
    await asyncio.sleep(0.3)
    assert vm.stats["slices"] == before
    vm.interrupt(Irq.HOST)
    assert await vm.wait() == 0


async def test_hostile_hypercalls(kernel: Kernel) -> None:
    out = await boot(kernel, "test-hostile", nic=False)
    assert "FAIL" not in out.console, out.console
    assert "SUCCESS" in out.console
    assert out.status == 0


async def test_threads_locks_condvars(kernel: Kernel) -> None:
    out = await boot(kernel, "test-threads")
    assert "SUCCESS" in out.console and "FAIL" not in out.console, out.console
    assert out.status == 0


async def test_libc(kernel: Kernel) -> None:
    out = await boot(kernel, "test-libc")
    assert "SUCCESS" in out.console and "FAIL" not in out.console, out.console
    assert out.status == 0


async def test_cmdline(kernel: Kernel) -> None:
    out = await boot(kernel, "test-cmdline", "one two key=v4lue")
    assert "argc=3" in out.console
    assert "argv[1]=two" in out.console
    assert "key=v4lue" in out.console


@pytest.mark.parametrize("mode", ["timer", "masked"])
async def test_interrupt_handler(kernel: Kernel, mode: str) -> None:
    out = await boot(kernel, "test-irq", f"mode={mode}")
    assert "SUCCESS" in out.console and "FAIL" not in out.console, out.console
    assert out.status == 0


async def test_interrupt_handler_host_bit(kernel: Kernel) -> None:
    need_image("test-irq")
    vm = await kernel.spawn("test-irq", cmdline="mode=host")
    for _ in range(200):
        if "ready" in vm.console.text():
            break
        await asyncio.sleep(0.01)
    vm.interrupt(Irq.HOST)
    assert await vm.wait() == 0
    assert "SUCCESS got=0x10" in vm.console.text()
    assert vm.stats["irq_batches"] >= 1


async def test_memory_sizes(kernel: Kernel) -> None:
    out = await boot(kernel, "hello", memory="1M")
    assert "with 1024 KiB of memory" in out.console
    with pytest.raises(ConfigError):
        await kernel.spawn("hello", memory="100K")
    with pytest.raises(ConfigError):
        await kernel.spawn("hello", memory="2G")
    with pytest.raises(ConfigError):
        await kernel.spawn("hello", memory="lots")
    with pytest.raises(ConfigError):
        await kernel.spawn("hello", cmdline="x" * 5000)


async def test_unknown_image(kernel: Kernel) -> None:
    with pytest.raises(ImageError, match="unknown image"):
        await kernel.spawn("no-such-image")


async def test_console_stream(kernel: Kernel) -> None:
    need_image("hello")
    vm = await kernel.spawn("hello")
    data = await vm.console.read_all()
    assert b"Hello from denali!" in data
    assert await vm.wait() == 0


async def test_close_kills_running_vms() -> None:
    need_image("test-spin")
    k = Kernel()
    async with k:
        vm = await k.spawn("test-spin")
        idle = await k.spawn("test-idle", cmdline="ms=100000 wait=host")
        await asyncio.sleep(0.05)
    for v in (vm, idle):
        assert v.state is VmState.KILLED
        with pytest.raises(VmKilledError):
            await v.wait()
    assert not k.vms
    with pytest.raises(KernelClosedError):
        await k.spawn("hello")


async def test_many_vms_with_a_faulting_one(kernel: Kernel) -> None:
    need_image("test-fault")
    vms = [await kernel.spawn("test-exit", cmdline=f"status={i}") for i in range(20)]
    bad = await kernel.spawn("test-fault", cmdline="kind=null-write")
    results = await asyncio.gather(*(v.wait() for v in vms))
    assert results == list(range(20))
    with pytest.raises(GuestFault):
        await bad.wait()


async def test_virtual_registers(kernel: Kernel) -> None:
    need_image("test-vregs")
    vm = await kernel.spawn("test-vregs", memory="4M", cmdline="abc def")
    assert await vm.wait() == 0, vm.console.text()
    assert f"SUCCESS vm={vm.id} mem={4 << 20}" in vm.console.text()
    assert vm.nic is not None and vm.nic.fixed_mac[:2] == bytes((2, kernel.mac_tag))
    assert "mac=" + vm.nic.fixed_mac.hex(":") in vm.console.text()


async def test_engine_limit_refuses_instead_of_dying() -> None:
    from denali.errors import ResourceError

    async with Kernel(max_engines=3) as k:
        vms = [await k.spawn("test-idle", cmdline="ms=100000 wait=host", memory="1M") for _ in range(3)]
        with pytest.raises(ResourceError, match="max_map_count"):
            await k.spawn("hello")
        for vm in vms:
            vm.interrupt(Irq.HOST)
            assert await vm.wait() == 0
        assert await (await k.spawn("hello", memory="1M")).wait() == 0
    async with Kernel(max_engines=3, memory_budget=4 << 20) as k:  # with swap: admitted in turn
        vms = [await k.spawn("test-idle", cmdline="ms=100000 wait=host", memory="1M") for _ in range(6)]
        for vm in vms:
            await vm.until_idle()
        assert sum(1 for vm in vms if not vm.swapped) <= 3  # the others wait swapped out
        assert k.stats()["swap"]["swap_outs"] >= 3
        for vm in vms:
            vm.interrupt(Irq.HOST)
        assert await asyncio.gather(*(vm.wait() for vm in vms)) == [0] * 6


class _RouteHolder:
    """What ``Vm.hc_syscall_entry`` touches of its VM: the kept route and the CPU."""

    def __init__(self) -> None:
        self._route: SyscallRoute | None = None
        self._cpu = self
        self.route: SyscallRoute | None = None

    def set_route(self, route: SyscallRoute | None) -> None:
        self.route = route


def test_syscall_entry_checks_and_routes() -> None:
    mem = GuestMemory(1 << 20)
    mem.set_regions([Region(0x10000, 0x12000, PROT_RX, "code"), Region(0x20000, 0x30000, PROT_RW, "data")])
    vm = _RouteHolder()
    arg = 0x20000

    def call(*words: int) -> int:
        struct.pack_into("<4I", mem.buf, arg, *words)
        return Vm.hc_syscall_entry(vm, mem, arg)  # type: ignore[arg-type]

    assert call(0x10010, 0x20100, 0x10000, 0x12000) == Result.OK
    want = SyscallRoute(0x10010, 0x20100, 0x10000, 0x12000)
    assert vm.route == vm._route == want  # kept by the VM (swap, new CPUs) and given to the CPU
    assert call(0x20010, 0x20100, 0x10000, 0x30000) == Result.INVAL  # entry not code
    assert call(0x13000, 0x20100, 0x10000, 0x12000) == Result.INVAL  # entry outside the range
    assert call(0x10010, 0x10100, 0x10000, 0x12000) == Result.INVAL  # save not writable
    assert call(0x10010, 0xFFFFFFFE, 0x10000, 0x12000) == Result.INVAL  # save past the end
    assert call(0x10010, 0x2FFFE, 0x10000, 0x12000) == Result.INVAL  # save straddles the end
    assert vm.route == want  # a refused call changes nothing
    assert call(0, 0, 0, 0) == Result.OK
    assert vm.route is None and vm._route is None
    mem.close()


@pytest.mark.parametrize("mode", ["timer", "idle"])
async def test_timer_wake_ups_run_inline_as_the_coroutine_would(mode: str) -> None:
    """Due timers run their idle VMs' next slices inline (``Vm._fast_wake``): one-shot
    timers (TIMER_SET, then IDLE until TIMER) and IDLE deadlines wake no VM early, and
    the VMs take the same interrupts and idles as with the inline path turned off."""
    need_image("test-contract")
    seen = []
    for inline in (True, False):
        async with Kernel() as k:
            if not inline:
                k._rt.timers.burst_ns = 0  # type: ignore[union-attr]
            vms = [
                await k.spawn("test-contract", cmdline=f"mode={mode} n=100 ms=2", memory="1M")
                for _ in range(20)
            ]
            for vm in vms:  # an IDLE answered in the wrong structure leaves its guest waiting
                assert await asyncio.wait_for(vm.wait(), 60) == 0, vm.console.text()
                assert "early=0 of 100" in vm.console.text()
            seen.append(
                (
                    sum(vm.stats["fast_wakes"] for vm in vms),
                    [vm.stats["idles"] for vm in vms],
                    [vm.stats["irqs_raised"] for vm in vms],
                )
            )
    (fast_on, idles_on, irqs_on), (fast_off, idles_off, irqs_off) = seen
    assert fast_on > 20 * 50 and fast_off == 0
    assert irqs_on == irqs_off  # every timer fired once: 100 per VM (0 for IDLE deadlines)
    assert all(i >= 100 for i in idles_on + idles_off), (idles_on, idles_off)


async def test_inline_wake_ups_survive_swap_outs() -> None:
    """Idle VMs swapped out between inline wake-ups come back where they waited: the IDLE
    a VM waits in is the last one it made, not the one its coroutine first slept in."""
    need_image("test-contract")
    async with Kernel(memory_budget=8 << 20) as k:  # about 6 of these VMs resident
        vms = [await k.spawn("test-contract", cmdline="mode=timer n=200 ms=2", memory="1M") for _ in range(9)]
        for vm in vms:  # an IDLE answered in the wrong structure leaves its guest waiting
            assert await asyncio.wait_for(vm.wait(), 60) == 0, vm.console.text()
            assert "early=0 of 200" in vm.console.text()
        assert k.stats()["swap"]["swap_outs"] > 50
        assert sum(vm.stats["fast_wakes"] for vm in vms) > 100


async def _tick(gaps: list[float], done: asyncio.Event) -> None:
    """Step through the loop until ``done``, keeping how long each turn took."""
    last = time.monotonic()
    while not done.is_set():
        await asyncio.sleep(0)
        now = time.monotonic()
        gaps.append(now - last)
        last = now


async def test_yields_hand_the_cpu_over_inline_and_the_loop_still_runs() -> None:
    """Two VMs yielding to each other: on the native path the arbiter runs their turns
    inline, one after the other, instead of a loop turn per switch, and still gives the
    loop control at least once per slice length (a task ticking in it never waits for
    the whole run); the pure-Python path wakes a coroutine for every turn."""
    need_image("bench-yield")
    for native in (True, False):
        async with Kernel(native=native, slice_us=5000) as k:
            gaps: list[float] = []
            done = asyncio.Event()
            ticker = asyncio.create_task(_tick(gaps, done))
            began = time.monotonic()
            vms = [await k.spawn("bench-yield", cmdline="n=50000") for _ in range(2)]
            idler = await k.spawn("test-contract", cmdline="mode=idle n=100 ms=2", memory="1M")
            for vm in [*vms, idler]:
                assert await asyncio.wait_for(vm.wait(), 60) == 0
            took = time.monotonic() - began
            # a VM woken from IDLE takes its turn in its coroutine (its input piles up)
            assert idler.stats["inline_turns"] == 0 and idler.stats["idles"] >= 50
            done.set()
            await ticker
            inline = [vm.stats["inline_turns"] for vm in vms]
            if native:
                assert min(inline) > 10_000  # most of the 100,000 turns ran inline
                # many slice lengths shorter than the run: an unbounded run of inline
                # turns would hold the loop until both VMs ended
                assert max(gaps) < min(0.1, took / 3), (max(gaps), took)
            else:
                assert inline == [0, 0]


async def test_a_turn_cut_short_inline_gets_the_rest_of_its_slice() -> None:
    """A spinner whose turn ran inline after a yielder's and was cut by the end of the
    inline time runs only what is left of its slice in its own turn, not a whole slice
    more: the yielder waits about one slice length per turn, as without inline turns."""
    need_image("bench-yield")
    need_image("test-spin")
    waits = []
    for native in (True, False):
        async with Kernel(native=native, slice_us=10_000) as k:
            spinner = await k.spawn("test-spin")
            yielder = await k.spawn("bench-yield", cmdline="n=40")
            began = time.monotonic()
            assert await asyncio.wait_for(yielder.wait(), 60) == 0
            waits.append((time.monotonic() - began) / 40)
            assert spinner.stats["preemptions"] >= 10
            spinner.kill()
    with_inline, without = waits
    # one spinner slice (10 ms) per yield either way; a whole extra slice would be 2x
    assert with_inline < 1.5 * without, waits


async def test_yielding_vms_pause_and_die_between_inline_turns() -> None:
    """VMs whose turns run inline can be paused, resumed and killed like any other: a
    paused one runs no slice until resumed, a killed one ends KILLED, the rest finish."""
    need_image("bench-yield")
    async with Kernel(native=True) as k:
        vms = [await k.spawn("bench-yield", cmdline="n=200000") for _ in range(3)]
        await asyncio.sleep(0.2)
        paused, killed, other = vms
        await paused.pause()
        slices = paused.stats["slices"]
        killed.kill()
        with pytest.raises(VmKilledError):
            await asyncio.wait_for(killed.wait(), 10)
        await asyncio.sleep(0.2)
        assert paused.stats["slices"] == slices  # paused: not run inline either
        paused.resume()
        for vm in (paused, other):
            assert await asyncio.wait_for(vm.wait(), 60) == 0
        assert killed.state is VmState.KILLED
        assert sum(vm.stats["inline_turns"] for vm in vms) > 1000
