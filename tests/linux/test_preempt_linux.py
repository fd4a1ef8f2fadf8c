"""Preemption never changes what an unmodified Linux program computes (tests/test_preempt.py
for guestos guests). Slices end by the stop flag and the block hook (``denali.preempt``);
a routed system call moves EIP to the personality from the interrupt hook, on the
engine's own thread. Two VMs share the CPU on 50 us slices, each preempted thousands of
times between and inside its routed calls, and must give qemu-i386's bytes."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from denali.kernel import Kernel
from denali.linux import spawn_linux, syscalls_of
from tests.linux.helpers import need_busybox, need_qemu, qemu_run


@pytest.fixture(scope="module")
def text() -> bytes:
    rnd = random.Random(17)
    words = [b"alpha", b"bravo", b"charlie", b"delta", b"echo", b"foxtrot"]
    out = bytearray()
    while len(out) < 256 << 10:
        out += b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
    return bytes(out)


@pytest.mark.parametrize("workers", [0, 2], ids=["loop", "workers2"])
async def test_busybox_on_50us_slices_matches_qemu(text: bytes, workers: int) -> None:
    busybox, qemu = need_busybox(), need_qemu()
    cases = (["busybox", "gzip", "-c"], ["busybox", "sha256sum"])
    refs = [qemu_run(qemu, busybox, argv, Path("/"), text) for argv in cases]
    assert all(r.status == 0 and r.stdout for r in refs)
    async with Kernel(slice_us=50, workers=workers) as k:
        outs = [bytearray() for _ in cases]
        vms = [
            await spawn_linux(k, busybox, argv, stdin=text, nic=False, stdout=out.extend)
            for argv, out in zip(cases, outs, strict=True)
        ]
        statuses = await asyncio.wait_for(asyncio.gather(*(vm.wait() for vm in vms)), 120)
        stats = [(vm.stats["preemptions"], syscalls_of(vm)) for vm in vms]
    assert statuses == [0, 0]
    for (preemptions, calls), out, ref in zip(stats, outs, refs, strict=True):
        assert preemptions > 200 and calls > 50, stats
        assert bytes(out) == ref.stdout
