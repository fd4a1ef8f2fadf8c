"""Preemption never changes what a guest computes (each test failed before its fix).

The watchdog used to call ``uc_emu_stop`` from its own thread; Unicorn can take such an
exit right after a guest memory access and resume at the instruction that made it, so
a read-modify-write instruction ran twice. The test-rmw guest updates its state with
``add``/``xor``/``xchg`` to memory and prints a hash, which the test recomputes here;
under 50 us slices it is preempted tens of thousands of times.
"""

from __future__ import annotations

import struct

import pytest

from denali.kernel import Kernel
from tests.conftest import need_image

_M = 0xFFFFFFFF


def _rol(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _M


def expected_hash(reps: int) -> str:
    """test-rmw's result, computed the same way (guestos/tests/rmw.c)."""
    s = 12345
    table = []
    for _ in range(256):
        s = (s * 1103515245 + 12345) & _M
        table.append(s)
    buf = bytearray()
    for _ in range(30000):
        s = (s * 1103515245 + 12345) & _M
        buf.append(s >> 24)
    st = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    for _ in range(reps):
        for i in range(0, 30000 - 63, 64):
            w = struct.unpack_from("<16I", buf, i)
            for j in range(16):
                f = (st[1] & st[2]) | (~st[1] & st[3] & _M)
                x = _rol((st[0] + f + table[(j * 7 + buf[i + j]) & 255] + w[j]) & _M, (j % 4) * 5 + 7)
                st[1] = (st[1] + x) & _M
                st[0] = st[3]
                st[3] = st[2]
                st[2] = (st[1] - x) & _M
    return "hash " + " ".join(f"{v:08x}" for v in st)


async def _run(reps: int, slice_us: int, workers: int, count: int) -> list[tuple[str, int]]:
    async with Kernel(slice_us=slice_us, workers=workers) as k:
        vms = [await k.spawn("test-rmw", cmdline=f"reps={reps}", memory="1M") for _ in range(count)]
        for vm in vms:
            assert await vm.wait() == 0
    return [(vm.console.text().strip(), vm.stats["preemptions"]) for vm in vms]


async def test_the_guest_computes_what_the_model_says() -> None:
    need_image("test-rmw")
    [(out, _)] = await _run(2, 1_000_000, 0, 1)
    assert out == expected_hash(2)


@pytest.mark.parametrize("workers", [0, 2])
async def test_preempted_guest_computes_the_same(workers: int) -> None:
    """Two VMs sharing the CPU under 50 us slices, hundreds of preemptions each, give
    the result of one uninterrupted run (one slice of a second)."""
    need_image("test-rmw")
    reps = 300
    [(want, none)] = await _run(reps, 1_000_000, 0, 1)
    assert none == 0 and want.startswith("hash ")
    for out, preemptions in await _run(reps, 50, workers, 2):
        # how many slices the watchdog cut depends on the machine's speed: seen 780 to 2,400
        assert preemptions > 200, preemptions
        assert out == want, (out, want, preemptions)
