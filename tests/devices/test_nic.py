"""NIC hypercall handlers against hostile arguments, on real guest memory and a real NIC."""

from __future__ import annotations

import struct

import pytest

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.devices.base import SLOT_NIC, SLOTS
from denali.devices.nic import Nic, NicConfig, NicPort
from denali.hypercalls import HypercallTable
from denali.memory import PROT_R, PROT_RW, PROT_RX, GuestMemory, Region
from denali.net.switch import Switch

MEM = 1 << 20
ARG = 0x20000  # argument structs
DATA = 0x21000  # frame buffers
RO = 0x30000  # a read-only page
CODE = 0x10000


class FakeVm:
    """Guest memory and a NIC device on a port (or none), raising irqs into ``pending``."""

    def __init__(self, nic: NicPort | None) -> None:
        self.memory = GuestMemory(MEM)
        self.memory.set_regions(
            [
                Region(CODE, CODE + 0x1000, PROT_RX, "text"),
                Region(ARG, RO, PROT_RW, "data"),
                Region(RO, RO + 0x1000, PROT_R, "ro"),
            ]
        )
        self.devices: list[object | None] = [None] * SLOTS
        if nic is not None:
            dev = Nic(nic)
            dev.attach(self)
            self.devices[SLOT_NIC] = dev
        self.pending = 0

    def raise_irq(self, bits: int) -> None:
        self.pending |= bits

    def close(self) -> None:
        self.memory.close()


class Table:
    """The kernel's dispatch path for the NIC's hypercalls, called as ``dispatch(vm, nr, arg)``."""

    def __init__(self) -> None:
        self.table = HypercallTable.build([Nic])

    def dispatch(self, vm: FakeVm, nr: int, arg: int) -> int:
        return self.table.dispatcher(vm.devices, vm.memory)(int(nr), arg)


@pytest.fixture
def table() -> Table:
    return Table()


def put(vm: FakeVm, addr: int, fmt: str, *vals: int) -> None:
    struct.pack_into(fmt, vm.memory.buf, addr, *vals)


def test_no_nic_is_nodev(table: Table) -> None:
    vm = FakeVm(None)
    for nr in (Hc.NET_INFO, Hc.NET_SEND, Hc.NET_RECV):
        assert table.dispatch(vm, nr, ARG) == Result.NODEV
    vm.close()


def test_struct_pointer_checks(table: Table) -> None:
    vm = FakeVm(NicPort.for_vm(1))
    for bad in (0, 0x1000, MEM - 4, 0xC0000000, 0xFFFFFFF8, RO, CODE):
        assert table.dispatch(vm, Hc.NET_SEND, bad) == Result.FAULT
    vm.close()


async def test_send_checks_lengths_and_pointers(table: Table) -> None:
    async with Switch() as sw:
        a, b = NicPort.for_vm(1), NicPort.for_vm(2)
        sw.attach(a)
        sw.attach(b)
        vm = FakeVm(a)
        frame = b"\xff" * 6 + a.fixed_mac + b"\x88\xb5" + b"x" * 46
        vm.memory.write(DATA, frame)
        iov = DATA + 0x800
        cases = [
            ([(DATA, 60)], Result.OK, 1),
            ([(DATA, 59)], Result.INVAL, 0),
            ([(DATA, 1515)], Result.INVAL, 0),
            ([(DATA, 60), (0xC0000000, 60)], Result.FAULT, 1),
            ([(DATA, 60), (MEM - 30, 60)], Result.FAULT, 1),
            ([(0xFFFFFFF0, 60)], Result.FAULT, 0),
        ]
        for frames, want, sent in cases:
            for i, (addr, ln) in enumerate(frames):
                put(vm, iov + 8 * i, "<II", addr, ln)
            put(vm, ARG, "<IIII", iov, len(frames), 99, 0)
            assert table.dispatch(vm, Hc.NET_SEND, ARG) == want, frames
            assert struct.unpack_from("<I", vm.memory.buf, ARG + 8)[0] == sent
        put(vm, ARG, "<IIII", iov, abi.NET_MAX_BATCH + 1, 0, 0)
        assert table.dispatch(vm, Hc.NET_SEND, ARG) == Result.INVAL
        put(vm, ARG, "<IIII", 0xC0000000, 1, 0, 0)
        assert table.dispatch(vm, Hc.NET_SEND, ARG) == Result.FAULT
        await sw.join()
        assert b.rx_pending == 3
        vm.close()


def test_recv_checks_and_batches(table: Table) -> None:
    nic = NicPort.for_vm(3, config=NicConfig(rx_capacity=8))
    vm = FakeVm(nic)
    recv = abi.HYPERCALL_BY_NR[Hc.NET_RECV].args.codec()
    lens = DATA + 0x7000
    bad = [
        (DATA, 1513, 2, lens),  # slot too small
        (DATA, 1514, 0, lens),  # no slots
        (DATA, 1514, 65, lens),  # too many
        (0xC0000000, 1514, 1, lens),  # buffer in kernel space
        (RO, 1514, 1, lens),  # read-only buffer
        (DATA, 1514, 2, RO),  # read-only lengths
        (MEM - 1514, 1514, 2, lens),  # runs past the end
    ]
    want = [Result.INVAL, Result.INVAL, Result.INVAL, Result.FAULT, Result.FAULT, Result.FAULT, Result.FAULT]
    for args, w in zip(bad, want, strict=True):
        recv.pack_into(vm.memory.buf, ARG, *args, 0, 0)
        assert table.dispatch(vm, Hc.NET_RECV, ARG) == w, args
    recv.pack_into(vm.memory.buf, ARG, DATA, 1536, 2, lens, 0, 0)
    assert table.dispatch(vm, Hc.NET_RECV, ARG) == Result.AGAIN
    frames = [bytes([i]) * (60 + i) for i in range(3)]
    for f in frames:
        nic.deliver(b"\xff" * 6 + f[6:])
    assert table.dispatch(vm, Hc.NET_RECV, ARG) == Result.OK
    assert struct.unpack_from("<I", vm.memory.buf, ARG + 16)[0] == 2
    assert struct.unpack_from("<II", vm.memory.buf, lens) == (60, 61)
    assert vm.pending & Irq.NET_RX  # one frame still waits
    assert table.dispatch(vm, Hc.NET_RECV, ARG) == Result.OK
    assert struct.unpack_from("<I", vm.memory.buf, ARG + 16)[0] == 1
    assert vm.memory.buf[DATA : DATA + 6] == b"\xff" * 6
    vm.close()


def test_info(table: Table) -> None:
    nic = NicPort.for_vm(0x01020304)
    vm = FakeVm(nic)
    assert table.dispatch(vm, Hc.NET_INFO, ARG) == Result.OK
    mac, _, mtu, rxq = struct.unpack_from("<6sHII", vm.memory.buf, ARG)
    assert mac == bytes.fromhex("02de01020304") and mtu == 1514 and rxq == nic.rx_capacity
    vm.close()


def test_saved_nic_state_is_checked_before_a_restore() -> None:
    Nic.check_state({"mac": b"\x02" * 6, "rx": [b"\xff" * 60, b"x" * abi.NET_MTU]})
    Nic.check_state({})
    for bad in ({"rx": [b"x" * (abi.NET_MTU + 1)]}, {"rx": ["text"]}, {"rx": b"frames"}):
        with pytest.raises(ValueError, match="the NIC's queued frames are not frames"):
            Nic.check_state(bad)
    with pytest.raises(TypeError, match="nic state is not an object"):
        Nic.check_state([b"frame"])
