"""The disk hypercalls at the handler level: a fake VM with real guest memory, real files.

Every hostile argument must give a result code (also written to 'status'), never an
exception, never a write outside what the guest may write, never another VM's data.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.devices.disk import DiskSpec
from denali.devices.disk.backend import ImageBackend
from denali.devices.disk.device import Disks, open_disks
from denali.errors import ConfigError, DiskError
from tests.devices.disk.conftest import (
    BLOCK,
    CODE,
    HEAP,
    MEM,
    RODATA,
    FakeVm,
    Guest,
    fd_count,
    make_image,
    names_in,
    pattern,
)

N = 64
R, W, F = Hc.DISK_READ, Hc.DISK_WRITE, Hc.DISK_FLUSH


@pytest.fixture
async def guest(fake_vm: FakeVm, tmp_path: Path, overlay_dir: Path) -> AsyncIterator[Guest]:
    """A VM with disks: 'base' (overlay-discard over a patterned image), 'ro', 'data' (rw)."""
    base = make_image(tmp_path / "base.img", N, seed=1)
    data = make_image(tmp_path / "data.img", 8)
    fake_vm.disks = await Disks.open(
        [
            DiskSpec(str(base), overlay_dir=str(overlay_dir)),
            DiskSpec(str(base), name="ro", mode="ro"),
            DiskSpec(str(data), mode="rw"),
        ]
    )
    yield Guest(fake_vm)
    await fake_vm.disks.aclose()


async def test_info_by_name_and_by_index(guest: Guest) -> None:
    res, info = guest.info("base")
    assert res == Result.OK
    assert info == {
        "handle": 0,
        "blocks": N,
        "block_size": BLOCK,
        "flags": 0,
        "max_blocks": abi.DISK_MAX_BLOCKS,
        "queue": abi.DISK_QUEUE,
    }
    res, info = guest.info("ro")
    assert res == Result.OK and info["handle"] == 1 and info["flags"] == abi.DISK_F_READONLY
    res, info = guest.info("data")
    assert res == Result.OK and info["handle"] == 2 and info["blocks"] == 8
    names = []
    for i in range(5):
        arg = guest.alloc(64)
        guest.put(Hc.DISK_INFO, arg, index=i)
        res = guest.call(Hc.DISK_INFO, arg)
        if res != Result.OK:
            assert res == Result.NODEV
            break
        names.append(guest.vm.memory.read(arg, 32).rstrip(b"\0").decode())
        assert guest.get(Hc.DISK_INFO, arg, "handle") == i
    assert names == ["base", "ro", "data"]
    assert guest.info("nope")[0] == Result.NODEV
    assert guest.info("bas")[0] == Result.NODEV
    assert guest.info("\xff\xfe")[0] == Result.NODEV
    arg = guest.alloc(64)
    guest.put(Hc.DISK_INFO, arg, name=b"x" * 32)  # no NUL
    assert guest.call(Hc.DISK_INFO, arg) == Result.INVAL
    assert guest.call(Hc.DISK_INFO, 0) == Result.FAULT
    assert guest.call(Hc.DISK_INFO, RODATA) == Result.FAULT  # has OUT fields: must be writable
    assert guest.call(Hc.DISK_INFO, MEM - 32) == Result.FAULT


async def test_read_write_flush(guest: Guest) -> None:
    buf = guest.alloc(4 * BLOCK)
    assert await guest.io(R, 0, 10, 4, buf) == Result.OK
    assert guest.vm.memory.read(buf, 4 * BLOCK) == pattern(1, N)[10 * BLOCK : 14 * BLOCK]
    assert guest.vm.pending & Irq.DISK
    guest.vm.memory.write(buf, pattern(5, 4))
    assert await guest.io(W, 0, N - 4, 4, buf) == Result.OK
    assert await guest.io(F, 0) == Result.OK
    other = guest.alloc(4 * BLOCK)
    assert await guest.io(R, 0, N - 4, 4, other) == Result.OK
    assert guest.vm.memory.read(other, 4 * BLOCK) == pattern(5, 4)
    # the read-only view of the same base does not see it
    assert await guest.io(R, 1, N - 4, 4, other) == Result.OK
    assert guest.vm.memory.read(other, 4 * BLOCK) == pattern(1, N)[(N - 4) * BLOCK :]
    assert await guest.io(F, 1) == Result.OK  # flushing a read-only disk: nothing to do
    assert (
        await guest.io(R, 0, 0, abi.DISK_MAX_BLOCKS, guest.alloc(abi.DISK_MAX_BLOCKS * BLOCK)) == Result.INVAL
    )  # 256 > N blocks: past the end
    assert await guest.io(R, 0, 0, N, guest.alloc(N * BLOCK)) == Result.OK


async def test_requests_complete_in_order(guest: Guest) -> None:
    """Writes then a read of the same block, all submitted before any completes."""
    bufs = [guest.alloc(BLOCK) for _ in range(5)]
    args = []
    for i, b in enumerate(bufs[:4]):
        guest.vm.memory.write(b, pattern(10 + i, 1))
        res, arg = guest.submit(W, 2, 3, 1, b)
        assert res == Result.OK and guest.status(W, arg) == abi.DISK_PENDING
        args.append((W, arg))
    res, arg = guest.submit(R, 2, 3, 1, bufs[4])
    assert res == Result.OK
    args.append((R, arg))
    for nr, a in args:
        assert await guest.wait(nr, a) == Result.OK
    assert guest.vm.memory.read(bufs[4], BLOCK) == pattern(13, 1)


@pytest.mark.parametrize(
    ("nr", "handle", "block", "count", "buf", "expect"),
    [
        (R, 3, 0, 1, None, Result.NODEV),  # no such handle
        (R, 0xFFFFFFFF, 0, 1, None, Result.NODEV),
        (R, 0, 0, 0, None, Result.INVAL),  # zero blocks
        (R, 0, 0, abi.DISK_MAX_BLOCKS + 1, None, Result.INVAL),
        (R, 0, 0, 0xFFFFFFFF, HEAP, Result.INVAL),  # huge count, before any pointer check
        (R, 0, N, 1, None, Result.INVAL),  # first block past the end
        (R, 0, N - 1, 2, None, Result.INVAL),  # range crosses the end
        (R, 0, (1 << 64) - 1, 2, None, Result.INVAL),  # block + count wraps 64 bits
        (R, 0, (1 << 63), 1, None, Result.INVAL),
        (W, 1, 0, 1, None, Result.INVAL),  # write to a read-only disk
        (R, 0, 0, 1, 0, Result.FAULT),  # NULL buffer
        (R, 0, 0, 1, CODE, Result.FAULT),  # read into code
        (R, 0, 0, 1, RODATA, Result.FAULT),  # read into read-only data
        (R, 0, 0, 1, MEM - BLOCK + 1, Result.FAULT),  # runs off the end of memory
        (R, 0, 0, 2, MEM - BLOCK, Result.FAULT),
        (R, 0, 0, 1, 0xC0000000, Result.FAULT),  # kernel space
        (R, 0, 0, 1, 0xFFFFF000, Result.FAULT),  # would wrap 32 bits
        (W, 0, 0, 1, 0x2000, Result.FAULT),  # write from unmapped memory
        (W, 0, 0, 2, RODATA, Result.FAULT),  # read-only data then an unmapped page
    ],
)
async def test_hostile_requests(
    guest: Guest, nr: Hc, handle: int, block: int, count: int, buf: int | None, expect: Result
) -> None:
    if buf is None:
        buf = guest.alloc(BLOCK)
    before = bytes(guest.vm.memory.buf)
    res, arg = guest.submit(nr, handle, block, count, buf)
    assert res == expect
    assert guest.status(nr, arg) == expect
    after = bytes(guest.vm.memory.buf)
    # nothing but the status word changed
    diff = [i for i in range(0, MEM, 4096) if before[i : i + 4096] != after[i : i + 4096]]
    assert diff == [arg & ~0xFFF]
    await asyncio.sleep(0)
    assert guest.vm.irqs == 0


async def test_writing_from_code_and_rodata_is_allowed(guest: Guest) -> None:
    # a write only reads guest memory: any readable buffer is fine
    assert await guest.io(W, 0, 0, 1, CODE) == Result.OK
    assert await guest.io(W, 0, 1, 1, RODATA) == Result.OK


async def test_hostile_struct_pointers(guest: Guest) -> None:
    for nr in (R, W, F, Hc.DISK_INFO):
        for arg in (0, 0x2000, CODE, MEM - 4, MEM, 0xBFFFFFF8, 0xFFFFFFFF):
            assert guest.call(nr, arg) == Result.FAULT
    assert guest.call(R, RODATA) == Result.FAULT  # status is OUT: must be writable


async def test_flush_bad_handle(guest: Guest) -> None:
    res, arg = guest.submit(F, 7)
    assert res == Result.NODEV and guest.status(F, arg) == Result.NODEV


async def test_queue_bound_gives_full(guest: Guest) -> None:
    buf = guest.alloc(BLOCK)
    accepted = []
    for _ in range(abi.DISK_QUEUE):
        res, arg = guest.submit(R, 0, 0, 1, buf)
        assert res == Result.OK
        accepted.append(arg)
    res, arg = guest.submit(R, 0, 0, 1, buf)
    assert res == Result.FULL and guest.status(R, arg) == Result.FULL
    res, arg = guest.submit(F, 0)
    assert res == Result.FULL
    # other disks have their own queues
    assert (guest.submit(R, 1, 0, 1, buf))[0] == Result.OK
    for a in accepted:
        assert await guest.wait(R, a) == Result.OK
    assert await guest.io(R, 0, 0, 1, buf) == Result.OK
    disks = guest.vm.disks
    assert disks is not None and disks.disks[0].stats["full"] == 2


async def test_vm_without_disks(fake_vm: FakeVm) -> None:
    fake_vm.disks = await open_disks([])
    assert fake_vm.disks.disks == ()
    g = Guest(fake_vm)
    assert g.info("base")[0] == Result.NODEV
    res, arg = g.submit(R, 0)
    assert res == Result.NODEV and g.status(R, arg) == Result.NODEV
    assert g.submit(F, 0)[0] == Result.NODEV


async def test_vm_ending_with_requests_in_flight(fake_vm: FakeVm, tmp_path: Path, overlay_dir: Path) -> None:
    base = make_image(tmp_path / "b.img", N, seed=2)
    opened_fds = fd_count()
    fake_vm.disks = await Disks.open([DiskSpec(str(base), overlay_dir=str(overlay_dir))])
    g = Guest(fake_vm)
    buf = g.alloc(8 * BLOCK)
    for i in range(abi.DISK_QUEUE):
        assert g.submit(R if i % 2 else W, 0, i, 8, buf)[0] == Result.OK
    await asyncio.sleep(0.001)
    fake_vm.ended = True  # the VM ended: its completions are told so (no memory)
    await fake_vm.disks.aclose()
    await fake_vm.disks.aclose()  # idempotent
    st = fake_vm.disks.disks[0].stats
    assert st["internal_errors"] == 0
    assert st["dropped"] + st["reads"] + st["writes"] + st["io_errors"] <= abi.DISK_QUEUE
    assert fd_count() == opened_fds
    assert names_in(overlay_dir) == []


async def test_aclose_finishes_even_when_cancelled(fake_vm: FakeVm, tmp_path: Path) -> None:
    base = make_image(tmp_path / "b.img", N, seed=2)
    opened_fds = fd_count()
    fake_vm.disks = await Disks.open(
        [DiskSpec(str(base), mode="overlay-keep", overlay=str(tmp_path / "k.ovl"))]
    )
    g = Guest(fake_vm)
    buf = g.alloc(BLOCK)
    fake_vm.memory.write(buf, pattern(4, 1))
    _, arg = g.submit(W, 0, 9, 1, buf)
    assert await g.wait(W, arg) == Result.OK
    for _ in range(10):
        g.submit(W, 0, 1, 1, buf)
    closer = asyncio.ensure_future(fake_vm.disks.aclose())
    await asyncio.sleep(0)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert fd_count() == opened_fds
    again = await Disks.open([DiskSpec(str(base), mode="overlay-keep", overlay=str(tmp_path / "k.ovl"))])
    try:
        assert await again.disks[0].backend.read(9, 1) == pattern(4, 1)
    finally:
        await again.aclose()


async def test_truncated_and_removed_files_fail_only_that_io(
    fake_vm: FakeVm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="denali.devices.disk")
    base = make_image(tmp_path / "b.img", N, seed=3)
    rw = make_image(tmp_path / "rw.img", 8)
    fake_vm.disks = await Disks.open([DiskSpec(str(base), mode="ro"), DiskSpec(str(rw), mode="rw")])
    g = Guest(fake_vm)
    buf = g.alloc(BLOCK)
    try:
        assert await g.io(R, 0, N - 1, 1, buf) == Result.OK
        os.truncate(base, BLOCK * (N // 2))
        assert await g.io(R, 0, N - 1, 1, buf) == Result.IO
        assert await g.io(R, 0, 0, 1, buf) == Result.IO  # a base cut shorter is not trusted at all
        assert await g.io(W, 1, 0, 1, buf) == Result.OK
        os.unlink(rw)
        assert await g.io(W, 1, 0, 1, buf) == Result.IO
        assert await g.io(R, 1, 0, 1, buf) == Result.IO
        assert await g.io(F, 1) == Result.IO
        assert fake_vm.disks.disks[1].stats["io_errors"] == 3
        assert fake_vm.disks.disks[1].last_error is None  # host errors, not bugs
    finally:
        await fake_vm.disks.aclose()
    # each disk's first host I/O error is a warning naming the disk and the file; later
    # ones are debug lines (a guest retrying in a loop must not flood the log)
    disk_logs = [r for r in caplog.records if r.name == "denali.devices.disk.device"]
    warnings = [r.getMessage() for r in disk_logs if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"disk b ({base}): ") and "truncated" in warnings[0]
    assert warnings[1].startswith(f"disk rw ({rw}): ") and "removed" in warnings[1]
    assert sum(r.levelno == logging.DEBUG and "I/O error" in r.getMessage() for r in disk_logs) == 3


async def test_a_kernel_bug_in_a_request_is_logged_with_its_traceback(
    fake_vm: FakeVm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    base = make_image(tmp_path / "b.img", N, seed=3)
    fake_vm.disks = await Disks.open([DiskSpec(str(base), mode="ro")])
    disk = fake_vm.disks.disks[0]

    async def buggy_read(self: ImageBackend, block: int, count: int) -> bytes:
        raise ZeroDivisionError("a bug in a backend")

    monkeypatch.setattr(ImageBackend, "read", buggy_read)
    g = Guest(fake_vm)
    buf = g.alloc(BLOCK)
    try:
        assert await g.io(R, 0, 0, 1, buf) == Result.IO
        assert isinstance(disk.last_error, ZeroDivisionError)
    finally:
        await fake_vm.disks.aclose()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].getMessage().startswith(f"disk b ({base}): internal error")
    assert errors[0].exc_info is not None and errors[0].exc_info[1] is disk.last_error


async def test_open_errors_leave_nothing_open(tmp_path: Path) -> None:
    base = make_image(tmp_path / "b.img", N)
    before = fd_count()
    with pytest.raises(DiskError):
        await Disks.open([DiskSpec(str(base), mode="ro"), DiskSpec(str(tmp_path / "missing.img"))])
    with pytest.raises(ConfigError, match="two disks are named"):
        await Disks.open([DiskSpec(str(base), mode="ro"), DiskSpec(str(base))])
    with pytest.raises(ConfigError, match="at most 16"):
        await Disks.open([DiskSpec(str(base), name=f"d{i}", mode="ro") for i in range(17)])
    assert fd_count() == before
    many = await Disks.open([DiskSpec(str(base), name=f"d{i}", mode="ro") for i in range(16)])
    assert fd_count() == before + 1  # one shared descriptor for all of them
    await many.aclose()
