"""The hypercall dispatch table and the core hypercalls (terminate, idle, clock, ...).

One table per kernel. Each device module registers its handlers with ``register``,
which rejects a number registered twice. ``dispatch`` runs inside the CPU's interrupt
hook: it answers NOSYS for unknown numbers and FAULT when the argument structure is not
entirely inside guest memory with the permissions it needs (readable, and writable if
the structure has OUT fields), before any handler sees it. Handlers check the pointers
*inside* their structure themselves, with ``GuestMemory.check``. A handler returns a
``Result`` code, or ``EXIT`` to end the slice and let the VM coroutine finish the call.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from denali import abi
from denali.abi import Hc, Result
from denali.cpu import EXIT
from denali.errors import ConfigError
from denali.memory import PROT_R, PROT_RW, PROT_X

if TYPE_CHECKING:
    from denali.vm import Vm

Handler = Callable[["Vm", int], int]


class HypercallTable:
    """Maps hypercall numbers to handlers; see the module docstring for the contract."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Handler, int, int]] = {}

    def register(self, nr: Hc, handler: Handler) -> None:
        """Install ``handler`` for hypercall ``nr``; ``ConfigError`` if already taken."""
        if int(nr) in self._entries:
            raise ConfigError(f"hypercall {nr.name} ({int(nr)}) is already registered")
        spec = abi.HYPERCALL_BY_NR[int(nr)].args
        has_out = any(f.direction in ("out", "inout") for f in spec.fields)
        self._entries[int(nr)] = (handler, spec.size, PROT_RW if has_out else PROT_R)

    def dispatch(self, vm: Vm, nr: int, arg: int) -> int:
        entry = self._entries.get(nr)
        if entry is None:
            return Result.NOSYS
        handler, size, prot = entry
        if not vm.memory.check(arg, size, prot):
            return Result.FAULT
        return handler(vm, arg)

    def numbers(self) -> tuple[int, ...]:
        return tuple(sorted(self._entries))


def _offs(hc: Hc) -> dict[str, int]:
    return abi.HYPERCALL_BY_NR[int(hc)].args.offsets()


_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_TERM: Final = _offs(Hc.TERMINATE)
_IDLE: Final = _offs(Hc.IDLE)
_CLOCK: Final = _offs(Hc.CLOCK)
_HANDLER: Final = _offs(Hc.SET_HANDLER)
_TIMER: Final = _offs(Hc.TIMER_SET)
_CONS: Final = _offs(Hc.CONSOLE_WRITE)
_CONS_ERR: Final = _offs(Hc.CONSOLE_WRITE_ERR)
_CONS_IN: Final = _offs(Hc.CONSOLE_READ)


def _terminate(vm: Vm, arg: int) -> int:
    vm.exit_request = _U32.unpack_from(vm.memory.buf, arg + _TERM["status"])[0]
    return EXIT


def _idle(vm: Vm, arg: int) -> int:
    # Always ends the slice: the VM gives up the CPU (deadline 1 is a yield).
    return EXIT


def _clock(vm: Vm, arg: int) -> int:
    _U64.pack_into(vm.memory.buf, arg + _CLOCK["now_ns"], vm.kernel.now_ns())
    return Result.OK


def _set_handler(vm: Vm, arg: int) -> int:
    entry = _U32.unpack_from(vm.memory.buf, arg + _HANDLER["entry"])[0]
    if entry and not vm.memory.check(entry, 1, PROT_X | PROT_R):
        return Result.INVAL
    vm.irq_entry = entry
    return Result.OK


def _timer_set(vm: Vm, arg: int) -> int:
    vm.set_timer(_U64.unpack_from(vm.memory.buf, arg + _TIMER["deadline_ns"])[0])
    return Result.OK


def _console_write(vm: Vm, arg: int) -> int:
    buf, length = struct.unpack_from("<II", vm.memory.buf, arg + _CONS["buf"])
    if length > abi.CONSOLE_MAX_WRITE:
        return Result.INVAL
    if not vm.memory.check(buf, length, PROT_R):
        return Result.FAULT
    if length:
        vm.console.feed(vm.memory.read(buf, length))
    return Result.OK


def _console_write_err(vm: Vm, arg: int) -> int:
    buf, length = struct.unpack_from("<II", vm.memory.buf, arg + _CONS_ERR["buf"])
    if length > abi.CONSOLE_MAX_WRITE:
        return Result.INVAL
    if not vm.memory.check(buf, length, PROT_R):
        return Result.FAULT
    if length:
        vm.console.feed_err(vm.memory.read(buf, length))
    return Result.OK


def _console_read(vm: Vm, arg: int) -> int:
    mem = vm.memory
    buf, length = struct.unpack_from("<II", mem.buf, arg + _CONS_IN["buf"])
    if length > abi.CONSOLE_MAX_READ:
        return Result.INVAL
    if not mem.check(buf, length, PROT_RW):
        return Result.FAULT
    if not vm.console.has_input:
        return Result.NODEV
    data = vm.console.read_input(length) if length else b""
    if data is None:
        return Result.AGAIN
    mem.write(buf, data)
    eof = 1 if length and not data else 0
    struct.pack_into("<II", mem.buf, arg + _CONS_IN["got"], len(data), eof)
    return Result.OK


def core_table() -> HypercallTable:
    """A table with the hypercalls every VM has (devices add theirs)."""
    t = HypercallTable()
    t.register(Hc.TERMINATE, _terminate)
    t.register(Hc.IDLE, _idle)
    t.register(Hc.CLOCK, _clock)
    t.register(Hc.SET_HANDLER, _set_handler)
    t.register(Hc.TIMER_SET, _timer_set)
    t.register(Hc.CONSOLE_WRITE, _console_write)
    t.register(Hc.CONSOLE_WRITE_ERR, _console_write_err)
    t.register(Hc.CONSOLE_READ, _console_read)
    return t


IDLE_DEADLINE: Final = _IDLE["deadline_ns"]
IDLE_NOW: Final = _IDLE["now_ns"]
IDLE_PENDING: Final = _IDLE["pending"]
