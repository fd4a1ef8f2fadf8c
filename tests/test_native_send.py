"""The native send: NET_SEND answered in the CPU's C interrupt hook (denali/_preempt.c,
``VCpu.set_native_send``) exactly as the Python path answers it, frames in order,
never past the port's room, and out of the way of monitors and dirty tracking."""

from __future__ import annotations

import asyncio
import struct
import sys

import pytest

from denali import abi
from denali.devices.nic import NicConfig
from denali.kernel import Kernel
from denali.monitor import Monitor, MonitorStack
from tests.conftest import need_image
from tests.net.helpers import Recorder
from tests.test_native_clock import until

ETHERTYPE = b"\x88\xb5"


def seqs(frames: list[bytes]) -> list[int]:
    """The sequence numbers of test-netsend's frames, in the order they arrived."""
    return [struct.unpack_from("<I", f, 14)[0] for f in frames if f[12:14] == ETHERTYPE]


async def run_netsend(native: bool, cmdline: str = "") -> tuple[str, list[bytes], int, int]:
    """test-netsend on a kernel with or without the native path: its console, the frames
    a port on the LAN received, its hypercalls and those the C hook answered."""
    async with Kernel(native=native, slice_us=200_000) as k:
        rec = Recorder("peer")
        k.switch.attach(rec)
        vm = await k.spawn("test-netsend", cmdline=cmdline, nic_config=NicConfig(tx_capacity=16))
        assert await vm.wait() == 0, vm.console.text()
        await asyncio.sleep(0.05)  # the switch forwards the last frames
        return vm.console.text(), rec.frames, vm.hypercalls, vm.native_hypercalls


async def test_native_and_python_answer_every_edge_alike() -> None:
    """Every case of test-netsend (bad lengths, pointers into unmapped, guard, read-only
    and kernel pages, past the end, wrapping, the structure on the register page's
    kernel fields, a full queue) gets the same result and ``sent`` on both paths, and
    the LAN sees the same frames in the same order."""
    need_image("test-netsend")
    c_text, c_frames, c_calls, c_native = await run_netsend(True)
    p_text, p_frames, p_calls, p_native = await run_netsend(False)
    assert p_native == 0 and c_native > 20  # the C path really ran
    assert c_calls == p_calls
    assert c_text == p_text
    # the same frames (the MACs differ per kernel; the register page's is its own)
    assert [len(f) for f in c_frames] == [len(f) for f in p_frames]
    assert [f[12:] for f in c_frames if f[12:14] == ETHERTYPE] == [
        f[12:] for f in p_frames if f[12:14] == ETHERTYPE
    ]
    # the burst: the queue holds 16; the C hook stopped at the credit, Python said FULL
    burst = next(line for line in c_text.splitlines() if line.startswith("burst "))
    full = chr(ord("A") + int(abi.Result.FULL))
    assert burst == "burst " + "A1" * 16 + (full + "0") * 24, burst  # OK sent=1, then FULL
    assert seqs(c_frames)[:16] == list(range(16))
    cases = dict(line.split(" ", 2)[1:] for line in c_text.splitlines() if line.startswith("case "))
    assert cases["batch"] == "r=0 sent=8"
    assert cases["frame-into-the-guard"].startswith(f"r={int(abi.Result.FAULT)} ")
    assert cases["struct-on-the-kernel-fields"] == f"r={int(abi.Result.FAULT)}"
    assert cases["count-65"] == f"r={int(abi.Result.INVAL)} sent=0"


async def test_frames_keep_their_order_and_count() -> None:
    """Thousands of sends, most of them in C, some in Python when the queue is short of
    room: every frame the guest was told was sent reaches the LAN once, in order."""
    need_image("test-netsend")
    text, frames, _, native = await run_netsend(True, "loop=3000")
    assert "looped 3000" in text
    got = seqs(frames)
    assert got == sorted(got) and len(set(got)) == len(got)
    assert len(got) == 3000  # the queue (16) drains every 10 frames
    assert native > 2900


async def test_monitors_and_tracking_take_the_python_path() -> None:
    """A monitor on the frames sent (or on NET_SEND) sees every frame: the C hook stays
    out while it is stacked and comes back when it is popped; while pages are tracked
    the hook is out too, and the page of each NET_SEND structure is marked dirty."""
    need_image("test-netsend")
    seen: list[bytes] = []

    class Frames(Monitor):
        def frame_out(self, frame: bytes) -> bytes:
            seen.append(frame)
            return frame

    async with Kernel(native=True, slice_us=200_000) as k:
        rec = Recorder("peer")
        k.switch.attach(rec)
        vm = await k.spawn("test-netsend", cmdline="loop=100000000")
        cpu = vm._cpu
        await until(lambda: vm._cpu is not None and vm._cpu.engine.native_sends > 100)
        cpu = vm._cpu
        assert cpu is not None
        stack = MonitorStack.of(vm)
        stack.push(Frames())
        await asyncio.sleep(0.01)  # past the slice boundary where it took effect
        before = cpu.engine.native_sends
        await until(lambda: len(seen) > 200)
        assert cpu.engine.native_sends == before
        stack.pop()
        await until(lambda: cpu.engine.native_sends > before + 100)
        sent = seqs(rec.frames)
        assert set(seqs(seen)) <= set(sent)  # what the monitor passed reached the LAN

        mem = vm._memory
        assert mem is not None
        mem.start_tracking()
        await asyncio.sleep(0.01)
        mem.take_dirty()
        before = cpu.engine.native_sends
        calls = vm.hypercalls
        await until(lambda: vm.hypercalls > calls + 200)
        dirty = mem.take_dirty()
        assert cpu.engine.native_sends == before
        assert sum(dirty) > 1  # the stack page with each NET_SEND structure, not only vregs
        mem.stop_tracking()
        await until(lambda: cpu.engine.native_sends > before + 100)
        got = seqs(rec.frames)
        assert got == sorted(got)  # across every change of path
        vm.kill()


async def test_a_child_nic_and_an_impaired_link_stay_in_python() -> None:
    """The hook never sends for a NIC whose frames must meet monitors above it (a child
    VM's) or whose port has a link model: there the port's room means nothing."""
    need_image("test-netsend")
    from denali.net.impair import LinkSpec

    async with Kernel(native=True) as k:
        vm = await k.spawn("test-netsend", cmdline="loop=100000000")
        await until(lambda: vm._cpu is not None and vm._cpu.engine.native_sends > 10)
        cpu = vm._cpu
        assert cpu is not None and vm.nic is not None
        vm.nic.set_link(LinkSpec(delay_s=0.001))
        await asyncio.sleep(0.01)
        before = cpu.engine.native_sends
        calls = vm.hypercalls
        await until(lambda: vm.hypercalls > calls + 200)
        assert cpu.engine.native_sends == before
        vm.kill()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
