"""The personality-services device (MEM_PROTECT, SET_TLS, RANDOM) with hostile
arguments, through the kernel's dispatch path on real guest memory: result codes,
never a crash."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from denali import _uc, abi
from denali.abi import Hc, Result
from denali.devices.base import SLOT_PERSONALITY, SLOTS
from denali.devices.personality import Personality
from denali.hypercalls import HypercallTable
from denali.memory import PROT_R, PROT_RW, PROT_RX, GuestMemory, Region

ARG = 0x20000
TLS_AT = abi.Layout.KERNEL_PAGE + len(_uc.GDT)


class FakeVm:
    """Guest memory with a code, a data and a heap region, and the personality device."""

    def __init__(self) -> None:
        self.memory = GuestMemory(1 << 22)
        self.memory.set_regions(
            [
                Region(abi.Layout.KERNEL_PAGE, abi.Layout.KERNEL_PAGE + 0x1000, PROT_RX, "kernel"),
                Region(0x10000, 0x12000, PROT_RX, "code"),
                Region(0x20000, 0x30000, PROT_RW, "data"),
                Region(0x100000, 0x200000, PROT_RW, "heap"),
            ]
        )
        kp = abi.Layout.KERNEL_PAGE
        self.memory.buf[kp : kp + len(_uc.GDT)] = _uc.GDT  # as the CPU writes it
        self.lowered = 0
        self.memory.on_lowered = self._lowered
        self.devices: list[object | None] = [None] * SLOTS
        self.devices[SLOT_PERSONALITY] = Personality()
        self.dispatch = HypercallTable.build([Personality]).dispatcher(self.devices, self.memory)

    def _lowered(self) -> None:
        self.lowered += 1

    def call(self, nr: Hc, *words: int) -> int:
        struct.pack_into(f"<{len(words)}I", self.memory.buf, ARG, *words)
        return self.dispatch(int(nr), ARG)


@pytest.fixture
def vm() -> Iterator[FakeVm]:
    v = FakeVm()
    yield v
    v.memory.close()


def test_mem_protect_changes_the_page_map(vm: FakeVm) -> None:
    mem = vm.memory
    assert vm.call(Hc.MEM_PROTECT, 0x300000, 0x2000, abi.MEM_R | abi.MEM_W, 0) == Result.OK
    assert mem.prot_at(0x301000) == PROT_RW and vm.lowered == 0  # raising needs no flush
    mem.buf[0x300000] = 7
    assert vm.call(Hc.MEM_PROTECT, 0x300000, 0x1000, abi.MEM_R, 0) == Result.OK
    assert mem.prot_at(0x300000) == PROT_R and mem.prot_at(0x301000) == PROT_RW
    assert vm.lowered == 1 and mem.buf[0x300000] == 7  # the CPU is told; the data is kept
    assert vm.call(Hc.MEM_PROTECT, 0x300000, 0x2000, abi.MEM_DISCARD, 0) == Result.OK
    assert mem.prot_at(0x300000) == 0 and mem.buf[0x300000] == 0  # unmapped and discarded
    assert vm.lowered == 2
    for bad in (
        (0x300001, 0x1000, abi.MEM_R),
        (0x300000, 0x1001, abi.MEM_R),
        (0x300000, 0, abi.MEM_R),
        (0x300000, 0x1000, abi.MEM_W | abi.MEM_X | abi.MEM_R),
        (0x300000, 0x1000, abi.MEM_W),
        (0x3000, 0x1000, abi.MEM_R),
        (0x3FF000, 0x2000, abi.MEM_R),
        (0xFFFFF000, 0x2000, abi.MEM_R),
        (0x300000, 0x1000, 0x40),
    ):
        assert vm.call(Hc.MEM_PROTECT, *bad, 0) == Result.INVAL, bad
    assert mem.prot_at(0x3000) == 0  # below the image base nothing is ever mapped
    assert mem.prot_at(abi.Layout.KERNEL_PAGE) == PROT_RX  # nor is the kernel page touched


def test_memory_protect_splits_and_merges() -> None:
    mem = GuestMemory(1 << 20)
    mem.set_regions([Region(0x10000, 0x20000, PROT_RW, "a")])
    assert mem.protect(0x12000, 0x13000, PROT_R) is True
    assert [(r.start, r.end, r.prot) for r in mem.regions] == [
        (0x10000, 0x12000, PROT_RW),
        (0x12000, 0x13000, PROT_R),
        (0x13000, 0x20000, PROT_RW),
    ]
    assert mem.protect(0x12000, 0x13000, PROT_RW) is False
    assert mem.check(0x10000, 0x10000, PROT_RW)
    with pytest.raises(ValueError):
        mem.protect(0x10000, 0x11000, 6)
    mem.close()


def test_set_tls_writes_user_data_descriptors_into_the_gdt(vm: FakeVm) -> None:
    buf = vm.memory.buf
    assert vm.call(Hc.SET_TLS, 6, 0x12345678, 0xFFFFF, abi.TLS_F_PAGES) == Result.OK
    d = buf[TLS_AT : TLS_AT + 8]
    assert d[2] | d[3] << 8 | d[4] << 16 | d[7] << 24 == 0x12345678
    assert d[5] == 0xF3  # present, DPL 3, data read/write, accessed
    assert d[6] & 0x80  # page granularity
    assert vm.call(Hc.SET_TLS, 8, 0x1000, 0x10, 0) == Result.OK and not buf[TLS_AT + 16 + 6] & 0x80
    assert vm.call(Hc.SET_TLS, 6, 0, 0, abi.TLS_F_EMPTY) == Result.OK and buf[TLS_AT : TLS_AT + 8] == bytes(8)
    before = bytes(buf[abi.Layout.KERNEL_PAGE : abi.Layout.KERNEL_PAGE + 0x1000])
    for bad in ((5, 0, 0, 0), (9, 0, 0, 0), (6, 0, 0x100000, 0), (6, 0, 0, 4), (0xFFFFFFFF, 0, 0, 0)):
        assert vm.call(Hc.SET_TLS, *bad) == Result.INVAL, bad
    assert bytes(buf[abi.Layout.KERNEL_PAGE : abi.Layout.KERNEL_PAGE + 0x1000]) == before
    assert bytes(buf[abi.Layout.KERNEL_PAGE : TLS_AT]) == _uc.GDT  # the fixed entries are never written


def test_random_fills_and_checks(vm: FakeVm) -> None:
    assert vm.call(Hc.RANDOM, 0x20100, 32) == Result.OK
    first = bytes(vm.memory.buf[0x20100:0x20120])
    assert vm.call(Hc.RANDOM, 0x20100, 32) == Result.OK
    assert bytes(vm.memory.buf[0x20100:0x20120]) != first
    assert vm.call(Hc.RANDOM, 0x20100, abi.RANDOM_MAX + 1) == Result.INVAL
    assert vm.call(Hc.RANDOM, 0x10000, 16) == Result.FAULT  # read-only
    assert vm.call(Hc.RANDOM, 0x2FFF8, 16) == Result.FAULT  # straddles the end
    assert vm.call(Hc.RANDOM, 0x20100, 0) == Result.OK
