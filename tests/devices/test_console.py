"""The console's input direction (CONSOLE_READ) and error stream (CONSOLE_WRITE_ERR)
with hostile arguments, through the kernel's dispatch path on real guest memory."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

import pytest

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.devices.base import SLOT_CONSOLE, SLOTS
from denali.devices.console import Console
from denali.hypercalls import HypercallTable
from denali.memory import PROT_RW, PROT_RX, GuestMemory, Region

ARG = 0x20000
_GOT = abi.HYPERCALL_BY_NR[Hc.CONSOLE_READ].args.offsets()["got"]


class FakeVm:
    """Guest memory, a console attached to this host, the interrupts it raised."""

    def __init__(self) -> None:
        self.memory = GuestMemory(1 << 20)
        self.memory.set_regions(
            [Region(0x10000, 0x11000, PROT_RX, "code"), Region(0x20000, 0x30000, PROT_RW, "data")]
        )
        self.console = Console()
        self.console.attach(self)  # type: ignore[arg-type]
        devices: list[object | None] = [None] * SLOTS
        devices[SLOT_CONSOLE] = self.console
        self.dispatch = HypercallTable.build([Console]).dispatcher(devices, self.memory)
        self.pending = 0

    def raise_irq(self, bits: int) -> None:
        self.pending |= bits

    def call(self, nr: Hc, *words: int) -> int:
        struct.pack_into(f"<{len(words)}I", self.memory.buf, ARG, *words)
        return self.dispatch(int(nr), ARG)

    def got_eof(self) -> tuple[int, int]:
        return struct.unpack_from("<II", self.memory.buf, ARG + _GOT)


@pytest.fixture
def vm() -> Iterator[FakeVm]:
    v = FakeVm()
    yield v
    v.memory.close()


async def test_console_input(vm: FakeVm) -> None:
    con = vm.console
    assert vm.call(Hc.CONSOLE_READ, 0x20100, 16, 0, 0) == Result.NODEV  # no input opened
    con.open_input()
    assert vm.call(Hc.CONSOLE_READ, 0x20100, 16, 0, 0) == Result.AGAIN
    assert vm.pending == 0
    await con.write_input(b"hello world")
    assert vm.pending == Irq.CONSOLE
    assert vm.call(Hc.CONSOLE_READ, 0x20100, 5, 0, 0) == Result.OK
    assert vm.got_eof() == (5, 0)
    assert bytes(vm.memory.buf[0x20100:0x20105]) == b"hello"
    con.close_input()
    assert vm.call(Hc.CONSOLE_READ, 0x20100, 100, 0, 0) == Result.OK
    assert vm.got_eof() == (6, 0)
    assert vm.call(Hc.CONSOLE_READ, 0x20100, 100, 0, 0) == Result.OK
    assert vm.got_eof() == (0, 1)  # end of input
    assert vm.call(Hc.CONSOLE_READ, 0x10000, 16, 0, 0) == Result.FAULT  # read-only buffer
    assert vm.call(Hc.CONSOLE_READ, 0x2FFF8, 16, 0, 0) == Result.FAULT  # straddles the end
    assert vm.call(Hc.CONSOLE_READ, 0x20100, abi.CONSOLE_MAX_READ + 1, 0, 0) == Result.INVAL
    await con.write_input(b"late")  # after the end: dropped
    assert vm.call(Hc.CONSOLE_READ, 0x20100, 100, 0, 0) == Result.OK and vm.got_eof() == (0, 1)


async def test_console_error_stream(vm: FakeVm) -> None:
    con = vm.console
    vm.memory.buf[0x20200:0x20203] = b"err"
    got: list[bytes] = []
    con.err_sink = got.append
    assert vm.call(Hc.CONSOLE_WRITE_ERR, 0x20200, 3) == Result.OK
    assert got == [b"err"] and con.err_written == 3 and con.written == 0
    con.err_sink = None
    assert vm.call(Hc.CONSOLE_WRITE_ERR, 0x20200, 3) == Result.OK
    assert con.text() == "err"  # without a sink the error stream joins the output
    assert vm.call(Hc.CONSOLE_WRITE_ERR, 0x20200, abi.CONSOLE_MAX_WRITE + 1) == Result.INVAL
    assert vm.call(Hc.CONSOLE_WRITE_ERR, 0x2FFFE, 3) == Result.FAULT
    assert con.err_written == 6


async def test_console_input_is_bounded(vm: FakeVm) -> None:
    con = vm.console
    con.input_limit = 8
    writer = asyncio.ensure_future(con.write_input(b"0123456789abcdef"))
    await asyncio.sleep(0)
    assert not writer.done()  # 8 bytes queued, the writer waits for room
    assert con.read_input(100) == b"01234567"
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert con.read_input(100) == b"89abcdef"
    await writer
