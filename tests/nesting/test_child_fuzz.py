"""Hostile children under monitors (issue 14, item 5): a child fuzzing every hypercall,
the CHILD_* ones included (with handles of its parent, its sibling and ids never issued,
real grandchildren and creates beyond its quota), under a parent that interposes on a
random set of its calls and answers at random, and hostile replies of its own.

What must hold: the parent's canary, the sibling's memory and a peer VM's memory are
unchanged; every call whose result the contract fixes returned it (checked inside the
guests); the parent hears of every end; nothing is logged at error level; the kernel
goes on. Seeded: a failure replays with the same seed."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from pathlib import Path

import pytest

from denali import lowlevel
from denali.devices.disk import DiskSpec
from denali.errors import VmKilledError
from denali.kernel import Kernel
from denali.vm import Vm, VmState
from tests.conftest import need_image
from tests.nesting.test_children import disk_of


async def _line(vm: Vm, pattern: str) -> re.Match[str]:
    """Wait for a console line of ``vm`` matching ``pattern``."""
    for _ in range(20_000):
        m = re.search(pattern, vm.console.text())
        if m is not None:
            return m
        if vm.done:
            break
        await asyncio.sleep(0.005)
    raise AssertionError(f"no {pattern!r} on the console: {vm.console.text()[-2000:]}")


def _hash(vm: Vm, start: int = 0, length: int | None = None) -> str:
    buf = lowlevel.guest_memory(vm).buf
    end = len(buf) if length is None else start + length
    return hashlib.sha256(bytes(buf[start:end])).hexdigest()


def _fuzz_disks(tmp_path: Path) -> list[DiskSpec]:
    return [
        DiskSpec(disk_of("test-hcfuzz", tmp_path / "child.img"), name="child", mode="ro"),
        DiskSpec(disk_of("test-idle", tmp_path / "sib.img"), name="sib", mode="ro"),
    ]


async def _until_idle(vm: Vm) -> None:
    for _ in range(4000):
        if vm.state is VmState.IDLE:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"VM {vm.id} did not idle ({vm.state})")


@pytest.mark.parametrize("seed", [31, 32])
async def test_a_hostile_child_under_a_fuzzing_monitor_reaches_nothing(
    tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    need_image("test-childfuzz")
    need_image("test-hcfuzz")
    need_image("test-idle")
    caplog.set_level(logging.WARNING)
    async with Kernel(slice_us=2000) as k:
        peer = await k.spawn("test-idle", memory="1M", cmdline="ms=3600000", nic=False)
        await peer.until_idle()
        peer_before, peer_slices = _hash(peer), peer.stats["slices"]
        mon = await k.spawn(
            "test-childfuzz",
            cmdline=f"seed={seed} rounds=3 calls=4000 kill=4000",
            child_memory="24M",
            nic=False,
            disks=_fuzz_disks(tmp_path),
        )
        m = await _line(mon, r"sibling vm=(\d+) canary=0x([0-9a-f]+) len=(\d+) ready")
        sib = k.vms[int(m[1])]
        canary = (int(m[2], 16), int(m[3]))
        await _until_idle(sib)
        await _until_idle(mon)
        sib_before, sib_slices = _hash(sib), sib.stats["slices"]
        canary_before = _hash(mon, *canary)
        mon.interrupt()  # the hostile rounds begin
        done = await _line(mon, r"childfuzz: done [^\n]*")
        await _until_idle(mon)
        assert _hash(mon, *canary) == canary_before  # the parent's canary, seen by the host
        assert sib.state is VmState.IDLE and sib.stats["slices"] == sib_slices  # stopped and resumed
        assert _hash(sib) == sib_before  # not a byte of the sibling changed
        mon.interrupt()
        status = await mon.wait()
        text = mon.console.text()
        assert status == 0 and f"childfuzz: seed={seed} SUCCESS" in text, text[-3000:]
        summary = done[0]
        assert "mismatches=0 " in summary and "canary intact" in summary and "other_end=0 " in summary, (
            summary
        )
        counts = {key: int(v) for key, v in re.findall(r"(\w+)=(\d+)", summary)}
        assert counts["exited_ok"] + counts["killed"] == 3 and counts["checked"] > 100, summary
        assert counts["passes"] > 0 and counts["answers"] > 0, summary
        assert sib.state is VmState.KILLED  # destroyed by its parent at the end
        assert peer.state is VmState.IDLE and peer.stats["slices"] == peer_slices
        assert _hash(peer) == peer_before
        assert set(k.vms) == {peer.id}
        again = await k.spawn("hello", nic=False)  # the kernel goes on
        assert await again.wait() == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_hostile_child_under_the_security_monitor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """secmon answers the child's DISK_WRITEs whatever their structure: one it cannot
    write back into gets FAULT (it used to leave the child waiting for ever)."""
    need_image("secmon")
    need_image("test-hcfuzz")
    caplog.set_level(logging.WARNING)
    child = disk_of("test-hcfuzz", tmp_path / "child.img")
    data = tmp_path / "data.img"
    data.write_bytes(bytes(range(256)) * 16 * 64)
    async with Kernel(slice_us=2000) as k:
        mon = await k.spawn(
            "secmon",
            cmdline="mem=8388608 quota=4194304 -- seed=21 calls=8000 img=child",
            child_memory="16M",
            nic=False,
            disks=[
                DiskSpec(child, name="child", mode="ro"),
                DiskSpec(str(data), name="data", overlay_dir=str(tmp_path)),
            ],
        )
        status = await mon.wait()
        text = mon.console.text()
        assert status == 0 and "hcfuzz: seed=21 calls=8000 " in text and "child exited 0" in text, text[
            -2000:
        ]
        assert "secmon: denied " in text and len(k.vms) == 0
    assert data.read_bytes() == bytes(range(256)) * 16 * 64
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_child_waiting_for_a_paused_then_killed_parent_ends_with_it(tmp_path: Path) -> None:
    """A child whose interposed call waits for its parent waits while the parent is
    paused (nothing else stops), and ends KILLED with it when the parent is killed."""
    need_image("test-childfuzz")
    async with Kernel(slice_us=2000) as k:
        peer = await k.spawn("test-idle", memory="1M", cmdline="ms=3600000", nic=False)
        mon = await k.spawn(
            "test-childfuzz",
            cmdline="seed=7 rounds=1 calls=100000 kill=1000000",
            child_memory="24M",
            nic=False,
            disks=_fuzz_disks(tmp_path),
        )
        m = await _line(mon, r"sibling vm=(\d+) canary=0x[0-9a-f]+ len=\d+ ready")
        sib = k.vms[int(m[1])]
        await _until_idle(mon)
        mon.interrupt()
        for _ in range(4000):  # the hostile child runs
            kids = [vm for vm in k.vms.values() if vm not in (peer, mon, sib)]
            if kids and kids[0].hypercalls > 50:
                break
            await asyncio.sleep(0.005)
        hostile = kids[0]
        await mon.pause()
        await asyncio.sleep(0.05)  # whatever it was doing, it now waits for its parent
        calls = hostile.hypercalls
        await asyncio.sleep(0.2)
        assert hostile.hypercalls == calls and not hostile.done
        assert peer.state is VmState.IDLE
        mon.kill()
        with pytest.raises(VmKilledError):
            await mon.wait()
        for vm in (hostile, sib):
            with pytest.raises(VmKilledError):
                await asyncio.wait_for(vm.wait(), 30)  # a guard against a hang, not a timing
            assert vm.state is VmState.KILLED
        assert set(k.vms) == {peer.id}
