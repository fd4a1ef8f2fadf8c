"""The hypercall table: one handler per number, checked arguments before any handler."""

from __future__ import annotations

import pytest

from denali import abi
from denali.abi import Hc, Result
from denali.devices.base import SLOT_CLOCK, SLOTS
from denali.errors import ConfigError
from denali.hypercalls import HypercallTable
from denali.kernel import DEVICE_CLASSES
from denali.memory import PROT_R, PROT_RW, GuestMemory, Region


def _memory() -> GuestMemory:
    mem = GuestMemory(1 << 20)
    mem.set_regions(
        [
            Region(abi.Layout.VREGS, abi.Layout.VREGS + 0x1000, PROT_RW, "vregs"),
            Region(0x10000, 0x11000, PROT_R, "ro"),
            Region(0x20000, 0x30000, PROT_RW, "rw"),
        ]
    )
    return mem


def test_every_hypercall_has_one_owner_and_duplicates_are_refused() -> None:
    t = HypercallTable.build(DEVICE_CLASSES)
    assert t.numbers() == tuple(sorted(int(h) for h in Hc))
    with pytest.raises(ConfigError, match="already registered"):
        t.register(Hc.IDLE, SLOT_CLOCK, lambda dev, mem, arg: 0)


def test_unknown_and_unchecked_arguments_never_reach_handlers() -> None:
    calls = []
    t = HypercallTable()
    t.register(Hc.CLOCK, SLOT_CLOCK, lambda dev, mem, arg: calls.append(arg) or Result.OK)
    mem = _memory()
    devices: list[object | None] = [None] * SLOTS
    devices[SLOT_CLOCK] = object()
    dispatch = t.dispatcher(devices, mem)
    assert dispatch(999, 0x20000) == Result.NOSYS
    assert dispatch(Hc.CLOCK, 0x10000) == Result.FAULT  # CLOCK has OUT fields: not read-only memory
    assert dispatch(Hc.CLOCK, 0x2FFFC) == Result.FAULT  # straddles the end
    assert dispatch(Hc.CLOCK, abi.Layout.VREGS) == Result.FAULT  # over the kernel's register fields
    assert dispatch(Hc.CLOCK, abi.Layout.VREGS + abi.CMDLINE_OFFSET) == Result.OK  # the guest's part
    assert dispatch(Hc.CLOCK, 0x20000) == Result.OK
    assert calls == [abi.Layout.VREGS + abi.CMDLINE_OFFSET, 0x20000]
    assert t.numbers() == (int(Hc.CLOCK),)
    devices[SLOT_CLOCK] = None
    assert dispatch(Hc.CLOCK, 0x20000) == Result.NODEV  # checked after the argument, before the handler
    assert dispatch(Hc.CLOCK, 0x10000) == Result.FAULT
    mem.close()
