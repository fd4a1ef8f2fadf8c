"""The personality hypercalls (SYSCALL_ENTRY, MEM_PROTECT, SET_TLS, RANDOM) and the
console's input and error stream, with hostile arguments: result codes, never a crash."""

from __future__ import annotations

import struct

import pytest

from denali import abi, personality
from denali.abi import Hc, Result
from denali.devices.console import Console
from denali.hypercalls import core_table
from denali.memory import PROT_R, PROT_RW, PROT_RX, GuestMemory, Region

ARG = 0x20000


class _Engine:
    def __init__(self) -> None:
        self.flushes = 0

    def flush_tlb(self) -> None:
        self.flushes += 1


class _Cpu:
    def __init__(self) -> None:
        self.engine = _Engine()
        self.routing: tuple[int, int, int, int] | None = None
        self.tls = b""

    def set_routing(self, st: personality.PersonalityState) -> None:
        self.routing = (st.entry, st.save, st.code_lo, st.code_hi)

    def write_tls(self, tls: bytes | bytearray) -> None:
        self.tls = bytes(tls)


class _Vm:
    def __init__(self) -> None:
        self.memory = GuestMemory(1 << 22)
        self.memory.set_regions([Region(0x10000, 0x12000, PROT_RX, "code"),
                                 Region(0x20000, 0x30000, PROT_RW, "data"),
                                 Region(0x100000, 0x200000, PROT_RW, "heap")])
        self.pstate: personality.PersonalityState | None = None
        self.cpu = _Cpu()
        self.console = Console()


@pytest.fixture
def vm() -> _Vm:
    v = _Vm()
    yield v  # type: ignore[misc]
    v.memory.close()


def call(vm: _Vm, nr: Hc, *words: int) -> int:
    t = core_table()
    personality.register(t)
    struct.pack_into(f"<{len(words)}I", vm.memory.buf, ARG, *words)
    return t.dispatch(vm, nr, ARG)  # type: ignore[arg-type]


def test_syscall_entry_checks_and_routes(vm: _Vm) -> None:
    assert call(vm, Hc.SYSCALL_ENTRY, 0x10010, 0x20100, 0x10000, 0x12000) == Result.OK
    assert vm.cpu.routing == (0x10010, 0x20100, 0x10000, 0x12000)
    assert call(vm, Hc.SYSCALL_ENTRY, 0x20010, 0x20100, 0x10000, 0x30000) == Result.INVAL  # entry not code
    assert call(vm, Hc.SYSCALL_ENTRY, 0x13000, 0x20100, 0x10000, 0x12000) == Result.INVAL  # outside range
    assert call(vm, Hc.SYSCALL_ENTRY, 0x10010, 0x10100, 0x10000, 0x12000) == Result.INVAL  # save not writable
    assert call(vm, Hc.SYSCALL_ENTRY, 0x10010, 0xFFFFFFFE, 0x10000, 0x12000) == Result.INVAL
    assert call(vm, Hc.SYSCALL_ENTRY, 0, 0, 0, 0) == Result.OK
    assert vm.cpu.routing == (0, 0, 0, 0)


def test_mem_protect_changes_the_page_map(vm: _Vm) -> None:
    mem = vm.memory
    assert call(vm, Hc.MEM_PROTECT, 0x300000, 0x2000, abi.MEM_R | abi.MEM_W, 0) == Result.OK
    assert mem.prot_at(0x301000) == PROT_RW and vm.cpu.engine.flushes == 0  # raising needs no flush
    mem.buf[0x300000] = 7
    assert call(vm, Hc.MEM_PROTECT, 0x300000, 0x1000, abi.MEM_R, 0) == Result.OK
    assert mem.prot_at(0x300000) == PROT_R and mem.prot_at(0x301000) == PROT_RW
    assert vm.cpu.engine.flushes == 1 and mem.buf[0x300000] == 7  # kept
    assert call(vm, Hc.MEM_PROTECT, 0x300000, 0x2000, abi.MEM_DISCARD, 0) == Result.OK
    assert mem.prot_at(0x300000) == 0 and mem.buf[0x300000] == 0  # discarded
    assert vm.pstate is not None and vm.pstate.regions == list(mem.regions)
    for bad in ((0x300001, 0x1000, abi.MEM_R), (0x300000, 0x1001, abi.MEM_R), (0x300000, 0, abi.MEM_R),
                (0x300000, 0x1000, abi.MEM_W | abi.MEM_X | abi.MEM_R), (0x300000, 0x1000, abi.MEM_W),
                (0x3000, 0x1000, abi.MEM_R), (0x3FF000, 0x2000, abi.MEM_R), (0xFFFFF000, 0x2000, abi.MEM_R),
                (0x300000, 0x1000, 0x40)):
        assert call(vm, Hc.MEM_PROTECT, *bad, 0) == Result.INVAL, bad
    assert mem.prot_at(0x2000) == 0  # the first 64 KiB are never touched


def test_memory_protect_splits_and_merges() -> None:
    mem = GuestMemory(1 << 20)
    mem.set_regions([Region(0x10000, 0x20000, PROT_RW, "a")])
    assert mem.protect(0x12000, 0x13000, PROT_R) is True
    assert [(r.start, r.end, r.prot) for r in mem.regions] == [
        (0x10000, 0x12000, PROT_RW), (0x12000, 0x13000, PROT_R), (0x13000, 0x20000, PROT_RW)]
    assert mem.protect(0x12000, 0x13000, PROT_RW) is False
    assert mem.check(0x10000, 0x10000, PROT_RW)
    with pytest.raises(ValueError):
        mem.protect(0x10000, 0x11000, 6)
    mem.close()


def test_set_tls_builds_user_data_descriptors(vm: _Vm) -> None:
    assert call(vm, Hc.SET_TLS, 6, 0x12345678, 0xFFFFF, abi.TLS_F_PAGES) == Result.OK
    d = vm.cpu.tls[:8]
    assert d[2] | d[3] << 8 | d[4] << 16 | d[7] << 24 == 0x12345678
    assert d[5] == 0xF3  # present, DPL 3, data read/write, accessed
    assert d[6] & 0x80  # page granularity
    assert call(vm, Hc.SET_TLS, 8, 0x1000, 0x10, 0) == Result.OK and not vm.cpu.tls[16 + 6] & 0x80
    assert call(vm, Hc.SET_TLS, 6, 0, 0, abi.TLS_F_EMPTY) == Result.OK and vm.cpu.tls[:8] == bytes(8)
    for bad in ((5, 0, 0, 0), (9, 0, 0, 0), (6, 0, 0x100000, 0), (6, 0, 0, 4), (0xFFFFFFFF, 0, 0, 0)):
        assert call(vm, Hc.SET_TLS, *bad) == Result.INVAL, bad


def test_random_fills_and_checks(vm: _Vm) -> None:
    assert call(vm, Hc.RANDOM, 0x20100, 32) == Result.OK
    first = bytes(vm.memory.buf[0x20100:0x20120])
    assert call(vm, Hc.RANDOM, 0x20100, 32) == Result.OK
    assert bytes(vm.memory.buf[0x20100:0x20120]) != first
    assert call(vm, Hc.RANDOM, 0x20100, abi.RANDOM_MAX + 1) == Result.INVAL
    assert call(vm, Hc.RANDOM, 0x10000, 16) == Result.FAULT  # read-only
    assert call(vm, Hc.RANDOM, 0x2FFF8, 16) == Result.FAULT  # straddles the end


async def test_console_input_and_error_stream(vm: _Vm) -> None:
    out = vm.console
    assert call(vm, Hc.CONSOLE_READ, 0x20100, 16, 0, 0) == Result.NODEV  # no input opened
    raised = []
    out.on_input = lambda: raised.append(1)
    out.open_input()
    assert call(vm, Hc.CONSOLE_READ, 0x20100, 16, 0, 0) == Result.AGAIN
    await out.write_input(b"hello world")
    assert raised
    assert call(vm, Hc.CONSOLE_READ, 0x20100, 5, 0, 0) == Result.OK
    assert struct.unpack_from("<II", vm.memory.buf, ARG + 8) == (5, 0)
    assert bytes(vm.memory.buf[0x20100:0x20105]) == b"hello"
    out.close_input()
    assert call(vm, Hc.CONSOLE_READ, 0x20100, 100, 0, 0) == Result.OK
    assert struct.unpack_from("<II", vm.memory.buf, ARG + 8) == (6, 0)
    assert call(vm, Hc.CONSOLE_READ, 0x20100, 100, 0, 0) == Result.OK
    assert struct.unpack_from("<II", vm.memory.buf, ARG + 8) == (0, 1)  # end of input
    assert call(vm, Hc.CONSOLE_READ, 0x10000, 16, 0, 0) == Result.FAULT
    assert call(vm, Hc.CONSOLE_READ, 0x20100, abi.CONSOLE_MAX_READ + 1, 0, 0) == Result.INVAL
    vm.memory.buf[0x20200:0x20203] = b"err"
    got = []
    out.err_sink = got.append
    assert call(vm, Hc.CONSOLE_WRITE_ERR, 0x20200, 3) == Result.OK
    assert got == [b"err"] and out.err_written == 3 and out.written == 0
    out.err_sink = None
    assert call(vm, Hc.CONSOLE_WRITE_ERR, 0x20200, 3) == Result.OK
    assert out.text() == "err"  # without a sink the error stream joins the output
    assert call(vm, Hc.CONSOLE_WRITE_ERR, 0x20200, abi.CONSOLE_MAX_WRITE + 1) == Result.INVAL


async def test_console_input_is_bounded(vm: _Vm) -> None:
    import asyncio
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
