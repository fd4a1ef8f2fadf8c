"""The virtual NIC's hypercalls: NET_INFO, NET_SEND (a batch), NET_RECV (a batch).

The host side of the NIC is ``denali.net.nic.NicPort`` (``vm.nic``); this module only
moves frames between guest memory and that port, checking every guest pointer and
length first. A VM without a NIC gets ``NODEV`` from all three.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.memory import PROT_R, PROT_RW

if TYPE_CHECKING:
    from denali.hypercalls import HypercallTable
    from denali.vm import Vm

_INFO: Final = abi.HYPERCALL_BY_NR[Hc.NET_INFO].args.offsets()
_SEND: Final = abi.HYPERCALL_BY_NR[Hc.NET_SEND].args.offsets()
_RECV: Final = abi.HYPERCALL_BY_NR[Hc.NET_RECV].args.offsets()
_U32: Final = struct.Struct("<I")
_PAIR: Final = struct.Struct("<II")
_MTU: Final = abi.NET_MTU
_MIN: Final = abi.NET_MIN_FRAME
_BATCH: Final = abi.NET_MAX_BATCH


def _net_info(vm: Vm, arg: int) -> int:
    nic = vm.nic
    if nic is None:
        return Result.NODEV
    buf = vm.memory.buf
    buf[arg + _INFO["mac"]:arg + _INFO["mac"] + 6] = nic.fixed_mac
    _U32.pack_into(buf, arg + _INFO["mtu"], _MTU)
    _U32.pack_into(buf, arg + _INFO["rx_queue"], nic.rx_capacity)
    return Result.OK


def _net_send(vm: Vm, arg: int) -> int:
    nic = vm.nic
    if nic is None:
        return Result.NODEV
    mem = vm.memory
    buf = mem.buf
    frames_at, count = _PAIR.unpack_from(buf, arg + _SEND["frames"])
    _U32.pack_into(buf, arg + _SEND["sent"], 0)
    if count > _BATCH:
        return Result.INVAL
    if not mem.check(frames_at, count * 8, PROT_R):
        return Result.FAULT
    frames = []
    stop = Result.OK
    for i in range(count):
        addr, length = _PAIR.unpack_from(buf, frames_at + 8 * i)
        if length < _MIN or length > _MTU:
            stop = Result.INVAL
            break
        if not mem.check(addr, length, PROT_R):
            stop = Result.FAULT
            break
        frames.append(buf[addr:addr + length])
    accepted, status = nic.send_batch_nowait(frames) if frames else (0, None)
    _U32.pack_into(buf, arg + _SEND["sent"], accepted)
    if status is not None and status.result != Result.OK:
        return int(status.result)
    return stop


def _net_recv(vm: Vm, arg: int) -> int:
    nic = vm.nic
    if nic is None:
        return Result.NODEV
    mem = vm.memory
    buf = mem.buf
    bufs, slot, count, lens = struct.unpack_from("<IIII", buf, arg + _RECV["bufs"])
    _U32.pack_into(buf, arg + _RECV["received"], 0)
    if slot < _MTU or count < 1 or count > _BATCH or slot > 1 << 20:
        return Result.INVAL
    if not mem.check(bufs, slot * count, PROT_RW) or not mem.check(lens, 4 * count, PROT_RW):
        return Result.FAULT
    frames = nic.receive_nowait(count)
    if not frames:
        return Result.AGAIN
    for i, frame in enumerate(frames):
        at = bufs + i * slot
        buf[at:at + len(frame)] = frame
        _U32.pack_into(buf, lens + 4 * i, len(frame))
    _U32.pack_into(buf, arg + _RECV["received"], len(frames))
    if nic.rx_pending:
        vm.pending |= Irq.NET_RX  # more wait: keep the (edge-triggered) bit set
    return Result.OK


def register(table: HypercallTable) -> None:
    """Add the NIC hypercalls to a kernel's table."""
    table.register(Hc.NET_INFO, _net_info)
    table.register(Hc.NET_SEND, _net_send)
    table.register(Hc.NET_RECV, _net_recv)
