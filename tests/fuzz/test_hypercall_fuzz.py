"""Random hypercalls from two guests (test-hcfuzz, 120,000 calls), a sentinel VM untouched.

The fuzzers run at full speed inside their own VMs: numbers, structure pointers and
contents aimed at edges (see guestos/tests/hcfuzz.c), with two disks and a NIC each, so
every device path is hit. They check inside the guest that every call returned a known
result code and that their code never changed; the host checks that both ended by
terminating (no fault, no kernel error), that nothing was logged at error level, and
that a sentinel VM on the same kernel neither ran nor changed a byte of its memory.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from denali import lowlevel
from denali.devices.disk import DiskSpec
from denali.kernel import Kernel
from denali.vm import VmState
from tests.conftest import need_image

SEEDS = (11, 12)


@pytest.mark.parametrize(("workers", "calls"), [(0, 60_000), (2, 8_000)])
async def test_random_hypercalls_leave_a_sentinel_untouched(
    tmp_path: Path, workers: int, calls: int, caplog: pytest.LogCaptureFixture
) -> None:
    """120,000 calls on the loop's thread; with worker threads (where every hypercall
    leaves emulation and costs ~15x more) 16,000."""
    need_image("test-hcfuzz")
    need_image("test-idle")
    caplog.set_level(logging.WARNING)
    base = tmp_path / "disk.img"
    base.write_bytes(bytes(range(256)) * 16 * 64)  # 64 blocks
    disks = [DiskSpec(str(base), overlay_dir=str(tmp_path)), DiskSpec(str(base), name="ro", mode="ro")]
    async with Kernel(slice_us=2000, workers=workers) as k:
        sentinel = await k.spawn("test-idle", memory="1M", cmdline="ms=3600000", nic=False)
        await sentinel.until_idle()
        before = hashlib.sha256(lowlevel.guest_memory(sentinel).buf).hexdigest()
        slices = sentinel.stats["slices"]
        fuzzers = [
            await k.spawn("test-hcfuzz", cmdline=f"seed={seed} calls={calls}", disks=disks) for seed in SEEDS
        ]
        for vm in fuzzers:
            status = await vm.wait()
            last = "hcfuzz: seed=" + vm.console.text().rsplit("\nhcfuzz: seed=", 1)[-1].rstrip("\n")
            assert status == 0 and last.endswith("SUCCESS"), last
            assert f"calls={calls} " in last and " unknown=0 " in last and "code intact" in last, last
        assert sentinel.state is VmState.IDLE and sentinel.stats["slices"] == slices
        assert hashlib.sha256(lowlevel.guest_memory(sentinel).buf).hexdigest() == before
        assert base.read_bytes() == bytes(range(256)) * 16 * 64  # overlays took every write
        again = await k.spawn("hello", nic=False)  # the kernel still works
        assert await again.wait() == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
