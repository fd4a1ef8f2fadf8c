"""The monitor API on real guests: interposition kinds, order, answers, changes, delays,
stops, interrupts, faults, frames, disk requests, push/pop on a running VM, state."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from types import FrameType

import pytest

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.cpu import VCpu
from denali.devices.disk import DiskSpec, create_image
from denali.devices.disk.device import DiskRequest
from denali.errors import ConfigError, GuestFault, VmKilledError
from denali.kernel import Kernel
from denali.monitor import (
    Answer,
    Delay,
    FaultEvent,
    HypercallEvent,
    Monitor,
    MonitorStack,
    Resume,
    Stop,
)
from denali.monitor.base import FaultVerdict, Verdict
from denali.vm import INTERPOSABLE
from tests.conftest import need_image


class Recorder(Monitor):
    """Passes everything through and records what it saw, in a log shared by a stack."""

    def __init__(self, tag: str, log: list[tuple[str, str, int]]) -> None:
        self.tag = tag
        self.log = log

    def hypercall(self, call: HypercallEvent) -> Verdict:
        self.log.append((self.tag, "before", call.nr))
        return None

    def hypercall_done(self, call: HypercallEvent, result: int) -> int:
        self.log.append((self.tag, "after", call.nr))
        return result

    def interrupt(self, bits: int) -> int:
        self.log.append((self.tag, "irq", bits))
        return bits

    def frame_out(self, frame: bytes) -> bytes | int | None:
        self.log.append((self.tag, "tx", len(frame)))
        return frame

    def frame_in(self, frame: bytes) -> bytes | None:
        self.log.append((self.tag, "rx", len(frame)))
        return frame


async def test_no_monitor_means_no_interposer_and_the_kernels_own_dispatch(kernel: Kernel) -> None:
    need_image("hello")
    vm = await kernel.spawn("hello")
    await vm.wait()
    assert vm._interposer is None and vm.interposed == frozenset()
    assert kernel.vm_stats(vm)["monitors"] is None
    assert kernel.stats()["monitors"] == {}


async def test_an_empty_stack_interposes_on_nothing(kernel: Kernel) -> None:
    need_image("test-spin")
    vm = await kernel.spawn("test-spin")
    await asyncio.sleep(0.02)
    stack = kernel.monitors_of(vm)
    assert vm.interposed == frozenset()
    cpu = vm._cpu
    assert cpu is not None and cpu.dispatch.__qualname__.endswith("dispatcher.<locals>.dispatch")
    assert vm.nic_device is not None and vm.nic_device.tx_filter is None and vm.nic_device.rx_filter is None
    assert stack.stats()["stack"] == []
    vm.kill()


async def test_kinds_come_from_the_hooks_a_monitor_overrides() -> None:
    class OnlyFaults(Monitor):
        async def fault(self, event: FaultEvent) -> FaultVerdict:
            return None

    class OnlyDone(Monitor):
        def hypercall_done(self, call: HypercallEvent, result: int) -> int:
            return result

    assert Monitor.kinds == frozenset()
    assert OnlyFaults.kinds == {"fault"}
    assert OnlyDone.kinds == {"hypercall"}
    assert Recorder.kinds == {"hypercall", "interrupt", "frame_out", "frame_in"}
    assert Recorder.kinds <= INTERPOSABLE


async def test_order_down_and_up_the_stack(kernel: Kernel) -> None:
    need_image("hello")
    log: list[tuple[str, str, int]] = []
    vm = await kernel.spawn("hello", monitors=[Recorder("m1", log), Recorder("m2", log)])
    assert await vm.wait() == 0
    assert "Hello from denali" in vm.console.text()
    first = [e for e in log if e[2] == Hc.CONSOLE_WRITE][:4]
    assert first == [("m1", "before", 3), ("m2", "before", 3), ("m2", "after", 3), ("m1", "after", 3)]
    # TERMINATE goes down and never comes back
    assert log[-2:] == [("m1", "before", 1), ("m2", "before", 1)]
    assert vm.interposed == {"hypercall", "interrupt", "frame_out", "frame_in"}


async def test_only_the_hypercall_numbers_asked_for(kernel: Kernel) -> None:
    need_image("hello")
    seen: list[int] = []

    class Terminations(Monitor):
        hypercalls = frozenset({int(Hc.TERMINATE)})

        def hypercall(self, call: HypercallEvent) -> Verdict:
            seen.append(call.nr)
            return None

    vm = await kernel.spawn("hello", cmdline="", monitors=[Terminations()])
    assert await vm.wait() == 0
    assert seen == [Hc.TERMINATE]


async def test_answer_change_arguments_and_results(kernel: Kernel) -> None:
    need_image("test-exit")

    class Rewrite(Monitor):
        hypercalls = frozenset({int(Hc.TERMINATE), int(Hc.CONSOLE_WRITE)})

        def hypercall(self, call: HypercallEvent) -> Verdict:
            if call.nr == Hc.TERMINATE:
                args = call.args()
                assert args is not None
                assert call.set_args(status=int(args["status"]) + 1)
            elif call.nr == Hc.CONSOLE_WRITE:
                args = call.args()
                assert args is not None and not call.set_args(nosuch=1)
                assert call.set_args(len=4)  # only "exit" reaches the console
            return None

        def hypercall_done(self, call: HypercallEvent, result: int) -> int:
            return result

    vm = await kernel.spawn("test-exit", cmdline="status=41", monitors=[Rewrite()])
    assert await vm.wait() == 42
    assert vm.console.text() == "exit"

    need_image("test-idle")

    class Wake(Monitor):
        """Answers the guest's IDLE itself: 'the host interrupt arrived' (out fields)."""

        hypercalls = frozenset({int(Hc.IDLE)})

        def hypercall(self, call: HypercallEvent) -> Verdict:
            return Answer(Result.OK, {"pending": int(Irq.HOST), "now_ns": 1})

    t = time.perf_counter()
    vm = await kernel.spawn("test-idle", cmdline="ms=100000 wait=host", monitors=[Wake()])
    assert await vm.wait() == 0
    assert time.perf_counter() - t < 10
    assert "pending=0x10" in vm.console.text()
    assert vm.stats["idles"] == 0  # the kernel never idled it


async def test_answered_calls_skip_the_layers_below(kernel: Kernel) -> None:
    need_image("hello")
    log: list[tuple[str, str, int]] = []

    class Swallow(Monitor):
        hypercalls = frozenset({int(Hc.CONSOLE_WRITE)})

        def hypercall(self, call: HypercallEvent) -> Verdict:
            return Answer(Result.OK)

    vm = await kernel.spawn("hello", monitors=[Recorder("m1", log), Swallow(), Recorder("m3", log)])
    assert await vm.wait() == 0
    assert vm.console.text() == ""  # the console device never saw the write
    assert ("m1", "after", Hc.CONSOLE_WRITE) in log
    assert ("m3", "before", Hc.CONSOLE_WRITE) not in log
    assert ("m3", "before", Hc.TERMINATE) in log


async def test_a_delayed_hypercall_waits_outside_the_slice_and_others_run(kernel: Kernel) -> None:
    need_image("test-exit")
    need_image("test-spin")
    release = asyncio.Event()

    class Gatekeeper(Monitor):
        hypercalls = frozenset({int(Hc.CONSOLE_WRITE)})

        def hypercall(self, call: HypercallEvent) -> Verdict:
            async def later() -> None:
                await release.wait()

            return Delay(later())

    vm = await kernel.spawn("test-exit", cmdline="status=3", monitors=[Gatekeeper()])
    spinner = await kernel.spawn("test-spin")
    await asyncio.sleep(0.1)
    assert not vm.done and vm.console.text() == ""
    slices = spinner.stats["slices"]
    await asyncio.sleep(0.05)
    assert spinner.stats["slices"] > slices  # the other VM runs while this one waits
    release.set()
    assert await vm.wait() == 3
    assert vm.console.text() == "exiting with 3\n"
    spinner.kill()


async def test_a_delay_can_end_in_an_answer_or_a_stop(kernel: Kernel) -> None:
    need_image("test-exit")

    class Later(Monitor):
        hypercalls = frozenset({int(Hc.CONSOLE_WRITE), int(Hc.TERMINATE)})

        def hypercall(self, call: HypercallEvent) -> Verdict:
            async def answer() -> Answer | Stop | None:
                await asyncio.sleep(0.01)
                if call.nr == Hc.TERMINATE:
                    return Stop("no exit for you")
                return Answer(Result.OK)

            return Delay(answer())

    vm = await kernel.spawn("test-exit", cmdline="status=3", monitors=[Later()])
    with pytest.raises(VmKilledError, match="no exit for you"):
        await vm.wait()
    assert vm.console.text() == ""
    assert vm.stopped_by == "monitor Later: no exit for you"


async def test_stop_from_a_hook_runs_no_more_guest_code(kernel: Kernel) -> None:
    need_image("test-print")
    count = 0

    class StopAfter(Monitor):
        hypercalls = frozenset({int(Hc.CONSOLE_WRITE)})

        def hypercall(self, call: HypercallEvent) -> Verdict:
            nonlocal count
            count += 1
            return Stop("enough") if count == 3 else None

    vm = await kernel.spawn("test-print", cmdline="lines=1000", monitors=[StopAfter()])
    with pytest.raises(VmKilledError, match="enough"):
        await vm.wait()
    assert count == 3


async def test_interrupts_seen_and_dropped(kernel: Kernel) -> None:
    need_image("test-irq")
    seen: list[int] = []

    class Irqs(Monitor):
        def interrupt(self, bits: int) -> int:
            seen.append(bits)
            return bits

    vm = await kernel.spawn("test-irq", cmdline="mode=timer", monitors=[Irqs()])
    assert await vm.wait() == 0, vm.console.text()
    assert any(b & Irq.TIMER for b in seen)

    class DropHost(Monitor):
        def interrupt(self, bits: int) -> int:
            return bits & ~Irq.HOST

    vm = await kernel.spawn("test-irq", cmdline="mode=host", monitors=[DropHost()])
    await asyncio.sleep(0.05)
    vm.interrupt(Irq.HOST)
    await asyncio.sleep(0.1)
    assert not vm.done  # the guest never saw HOST
    kernel.monitors_of(vm).pop()
    vm.interrupt(Irq.HOST)
    assert await vm.wait() == 0


async def test_faults_pass_down_or_resume(kernel: Kernel) -> None:
    need_image("test-fault")
    seen: list[str] = []

    class Watch(Monitor):
        async def fault(self, event: FaultEvent) -> FaultVerdict:
            seen.append(event.report.kind.name)
            return None

    vm = await kernel.spawn("test-fault", cmdline="kind=null-read", monitors=[Watch()])
    with pytest.raises(GuestFault):
        await vm.wait()
    assert seen == ["NULL_POINTER"]

    class SkipInt3(Monitor):
        async def fault(self, event: FaultEvent) -> FaultVerdict:
            assert self.stack is not None
            if event.report.kind.name == "BREAKPOINT":
                await asyncio.sleep(0.01)  # a fault hook may wait; the VM waits with it
                return Resume()  # EIP is already past the int3
            return None

    vm = await kernel.spawn("test-fault", cmdline="kind=int3", monitors=[SkipInt3()])
    status = await vm.wait()  # the guest went on past its int3 and reached its end
    assert "about to fault: int3" in vm.console.text()
    assert status == 99 and "FAIL: survived int3" in vm.console.text()

    class Kill(Monitor):
        async def fault(self, event: FaultEvent) -> FaultVerdict:
            return Stop("faults are not allowed")

    vm = await kernel.spawn("test-fault", cmdline="kind=div0", monitors=[Kill()])
    with pytest.raises(VmKilledError, match="faults are not allowed"):
        await vm.wait()


async def test_frames_out_and_in_changed_dropped_refused(kernel: Kernel) -> None:
    need_image("httpd")
    need_image("httpget")
    log: list[tuple[str, str, int]] = []
    srv = await kernel.spawn("httpd", cmdline="ip=10.0.0.1/24", monitors=[Recorder("srv", log)])
    cli = await kernel.spawn(
        "httpget",
        cmdline="ip=10.0.0.2/24 url=http://10.0.0.1/bytes/2258 count=20 conc=2",
        monitors=[Recorder("cli", log)],
    )
    assert await cli.wait() == 0, cli.console.text()
    assert "ok=20 fail=0" in cli.console.text()
    for tag in ("srv", "cli"):
        assert sum(1 for t, k, _ in log if t == tag and k == "tx") > 20
        assert sum(1 for t, k, _ in log if t == tag and k == "rx") > 20
    srv.kill()

    class Refuse(Monitor):
        def frame_out(self, frame: bytes) -> bytes | int | None:
            return int(Result.FULL)

    class Blackhole(Monitor):
        def frame_in(self, frame: bytes) -> bytes | None:
            return None

    need_image("test-netudp")
    need_image("udpecho")
    echo = await kernel.spawn("udpecho", cmdline="ip=10.0.0.5/24", monitors=[Blackhole()])
    client = await kernel.spawn("test-netudp", cmdline="ip=10.0.0.6/24 dst=10.0.0.5 count=1")
    assert await client.wait() != 0  # nothing reached the echo server
    assert "udp: 0/1 echoed" in client.console.text()
    assert echo.nic is not None
    client2 = await kernel.spawn(
        "test-netudp", cmdline="ip=10.0.0.7/24 dst=10.0.0.5 count=1", monitors=[Refuse()]
    )
    assert await client2.wait() != 0
    assert "udp: 0/1 echoed" in client2.console.text()
    assert client2.nic is not None and client2.nic.stats.tx_frames == 0  # nothing left the NIC
    echo.kill()


@pytest.fixture
async def data_disk(tmp_path: Path) -> Path:
    img = tmp_path / "data.img"
    await create_image(str(img), 1 << 20)
    return img


async def test_disk_requests_seen_changed_and_refused(
    kernel: Kernel, data_disk: Path, tmp_path: Path
) -> None:
    need_image("test-disk")
    seen: list[DiskRequest] = []

    class Disk(Monitor):
        def disk(self, request: DiskRequest) -> DiskRequest | int:
            seen.append(request)
            return request

    vm = await kernel.spawn(
        "test-disk",
        nic=False,
        cmdline="ops=write,verify,flush count=4 seed=2",
        disks=[DiskSpec(str(data_disk), name="data", overlay_dir=str(tmp_path))],
        monitors=[Disk()],
    )
    assert await vm.wait() == 0, vm.console.text()
    kinds = {r.kind for r in seen}
    assert kinds == {"read", "write", "flush"}
    assert all(r.handle == 0 for r in seen)

    class NoWrites(Monitor):
        def disk(self, request: DiskRequest) -> DiskRequest | int:
            return int(Result.IO) if request.kind == "write" else request

    vm = await kernel.spawn(
        "test-disk",
        nic=False,
        cmdline="ops=write count=1 seed=2",
        disks=[DiskSpec(str(data_disk), name="data", overlay_dir=str(tmp_path))],
        monitors=[NoWrites()],
    )
    assert await vm.wait() != 0
    assert "FAIL" in vm.console.text()

    class Shift(Monitor):
        """Moves every request 8 blocks up: the guest's view is consistent, the file's is not."""

        def disk(self, request: DiskRequest) -> DiskRequest | int:
            if request.kind == "flush":
                return request
            return DiskRequest(request.kind, request.handle, request.block + 8, request.count, request.buf)

    vm = await kernel.spawn(
        "test-disk",
        nic=False,
        cmdline="ops=write,verify count=2 seed=5",
        disks=[DiskSpec(str(data_disk), name="data", mode="rw")],
        monitors=[Shift()],
    )
    assert await vm.wait() == 0, vm.console.text()
    raw = await asyncio.to_thread(data_disk.read_bytes)
    assert raw[: 2 * abi.DISK_BLOCK_SIZE] == bytes(2 * abi.DISK_BLOCK_SIZE)
    assert raw[8 * abi.DISK_BLOCK_SIZE : 10 * abi.DISK_BLOCK_SIZE] != bytes(2 * abi.DISK_BLOCK_SIZE)


async def test_push_and_pop_on_a_running_vm(kernel: Kernel) -> None:
    need_image("test-gdb")
    log: list[tuple[str, str, int]] = []
    vm = await kernel.spawn("test-gdb", cmdline="spin=1")
    await asyncio.sleep(0.05)
    assert vm.interposed == frozenset()
    stack = kernel.monitors_of(vm)
    rec = Recorder("late", log)
    stack.push(rec)
    assert vm.interposed == rec.kinds
    await asyncio.sleep(0.05)
    n = len(log)
    assert n > 0 and any(k == "before" and nr == Hc.IDLE for _, k, nr in log)
    assert stack.pop() is rec
    assert rec.stack is None
    assert vm.interposed == frozenset()
    await asyncio.sleep(0.05)
    assert len(log) <= n + 1  # at most the call that was on its way
    with pytest.raises(IndexError):
        stack.pop()
    vm.kill()


async def test_stack_misuse_is_refused(kernel: Kernel) -> None:
    need_image("test-spin")
    vm = await kernel.spawn("test-spin")
    other = await kernel.spawn("test-spin")
    m = Recorder("x", [])
    kernel.monitors_of(vm).push(m)
    with pytest.raises(ConfigError):
        kernel.monitors_of(vm).push(m)
    with pytest.raises(ConfigError):
        kernel.monitors_of(other).push(m)

    class Odd(Monitor):
        pass

    odd = Odd()
    odd.kinds = frozenset({"telepathy"})
    with pytest.raises(ConfigError, match="telepathy"):
        kernel.monitors_of(vm).push(odd)
    vm.kill()
    other.kill()


async def test_save_and_restore_monitor_state(kernel: Kernel) -> None:
    need_image("hello")

    class Counter(Monitor):
        def __init__(self) -> None:
            self.n = 0

        def hypercall(self, call: HypercallEvent) -> Verdict:
            self.n += 1
            return None

        def save(self) -> dict[str, int]:
            return {"n": self.n}

        def restore(self, state: dict[str, int]) -> None:
            self.n = state["n"]

    vm = await kernel.spawn("hello", monitors=[Counter()])
    await vm.wait()
    stack = MonitorStack.of(vm)
    saved = stack.save()
    assert saved == [{"monitor": "test_save_and_restore_monitor_state.<locals>.Counter", "state": {"n": 2}}]
    vm2 = await kernel.spawn("hello", monitors=[Counter()])
    stack2 = kernel.monitors_of(vm2)
    stack2.restore(saved)
    assert stack2.monitors[0].n == 2  # type: ignore[attr-defined]
    await vm2.wait()
    with pytest.raises(ConfigError, match="does not match"):
        stack2.restore([])


async def test_monitors_work_with_worker_threads() -> None:
    need_image("test-exit")
    log: list[tuple[str, str, int]] = []
    async with Kernel(slice_us=2000, workers=1) as k:
        vm = await k.spawn("test-exit", cmdline="status=9", monitors=[Recorder("w", log)])
        assert await vm.wait() == 9
    assert ("w", "after", Hc.CONSOLE_WRITE) in log and ("w", "before", Hc.TERMINATE) in log


async def python_calls_per_hypercall(monitors: type[Monitor] | None) -> float:
    """Python-level calls (profiler 'call' and 'c_call' events) made inside the CPU's
    interrupt hook per CLOCK hypercall of bench-hcall: the difference between n=3000
    and n=1000, over 2000."""
    need_image("bench-hcall")
    hook = VCpu.on_interrupt.__code__
    counts = []
    for n in (1000, 3000):
        async with Kernel(slice_us=2000) as k:
            count = depth = 0

            def prof(frame: FrameType, event: str, arg: object) -> None:
                nonlocal count, depth
                if event == "call" and frame.f_code is hook:
                    depth += 1
                elif event == "return" and frame.f_code is hook:
                    depth -= 1
                elif depth and event in ("call", "c_call"):
                    count += 1

            ms = [monitors(), monitors(), monitors()] if monitors is not None else []
            vm = await k.spawn("bench-hcall", cmdline=f"n={n}", monitors=ms)
            sys.setprofile(prof)
            try:
                await vm.wait()
            finally:
                sys.setprofile(None)
            counts.append(count)
    return (counts[1] - counts[0]) / 2000


async def test_kinds_nobody_interposes_on_keep_the_direct_path() -> None:
    """The same work per hypercall, call for call, with three monitors that interpose
    on faults only as with none (speed: tools/bench/bench_monitor.py)."""

    class Faults(Monitor):
        async def fault(self, event: FaultEvent) -> FaultVerdict:
            return None

    class Everything(Recorder):
        def __init__(self) -> None:
            super().__init__("x", [])

    plain = await python_calls_per_hypercall(None)
    faults = await python_calls_per_hypercall(Faults)
    everything = await python_calls_per_hypercall(Everything)
    assert faults == plain, (plain, faults)
    assert everything > plain + 5, (plain, everything)
