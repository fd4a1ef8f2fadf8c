"""The hypercall table: one handler per number, checked arguments before any handler."""

from __future__ import annotations

import pytest

from denali.abi import Hc, Result
from denali.errors import ConfigError
from denali.hypercalls import HypercallTable, core_table
from denali.memory import PROT_R, PROT_RW, GuestMemory, Region


class _Vm:
    def __init__(self) -> None:
        self.memory = GuestMemory(1 << 20)
        self.memory.set_regions([Region(0x10000, 0x11000, PROT_R, "ro"),
                                 Region(0x20000, 0x30000, PROT_RW, "rw")])


def test_duplicate_registration_is_refused() -> None:
    t = core_table()
    with pytest.raises(ConfigError, match="already registered"):
        t.register(Hc.IDLE, lambda vm, arg: 0)


def test_unknown_and_unchecked_arguments_never_reach_handlers() -> None:
    calls = []
    t = HypercallTable()
    t.register(Hc.CLOCK, lambda vm, arg: calls.append(arg) or Result.OK)  # type: ignore[func-returns-value]
    vm = _Vm()
    assert t.dispatch(vm, 999, 0x20000) == Result.NOSYS  # type: ignore[arg-type]
    assert t.dispatch(vm, Hc.CLOCK, 0x10000) == Result.FAULT  # type: ignore[arg-type]  # CLOCK has OUT fields
    assert t.dispatch(vm, Hc.CLOCK, 0x2FFFC) == Result.FAULT  # type: ignore[arg-type]  # straddles the end
    assert t.dispatch(vm, Hc.CLOCK, 0x20000) == Result.OK  # type: ignore[arg-type]
    assert calls == [0x20000]
    assert t.numbers() == (int(Hc.CLOCK),)
    vm.memory.close()
