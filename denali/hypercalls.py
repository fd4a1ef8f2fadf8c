"""The hypercall dispatch table: number -> (device slot, handler, argument size, access).

One table per kernel, built from the device classes (``HypercallTable.build``), each of
which names its hypercalls (``Device.HYPERCALLS``); a number claimed twice is a
``ConfigError``. A VM's CPU calls the closure ``dispatcher(devices, memory)`` returns.

Order of checks, for every hypercall (what a guest sees when several things are wrong):

1. an unknown number: ``NOSYS``;
2. the argument structure (EBX .. EBX + its size) not entirely inside guest memory with
   the access its fields need (readable; writable too if it has OUT fields, and then
   not overlapping the kernel fields of the virtual-register page): ``FAULT``;
3. the VM has no such device (a NIC or disk hypercall on a VM without one): ``NODEV``;
4. the handler's own checks, in the order its documentation gives.

A handler returns a ``Result`` code for EAX, or ``EXIT`` to end the slice so the VM
completes the call (TERMINATE, IDLE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from denali import abi
from denali.abi import Hc, Result
from denali.cpu import Dispatch
from denali.errors import ConfigError
from denali.memory import PROT_R, PROT_RW

if TYPE_CHECKING:
    from denali.memory import GuestMemory

Handler = Callable[[Any, "GuestMemory", int], int]
_NOSYS: Final = int(Result.NOSYS)
_FAULT: Final = int(Result.FAULT)
_NODEV: Final = int(Result.NODEV)


class HasHypercalls(Protocol):
    """A class whose instances answer hypercalls from one slot of a VM's device table."""

    SLOT: ClassVar[int]
    HYPERCALLS: ClassVar[Mapping[Hc, str]]


class HypercallTable:
    """Maps hypercall numbers to handlers; see the module docstring for the contract."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[int, tuple[int, Handler, int, int]] = {}

    @classmethod
    def build(cls, owners: Sequence[type[HasHypercalls]]) -> HypercallTable:
        """A table with the hypercalls of every class in ``owners``."""
        t = cls()
        for owner in owners:
            for nr, method in owner.HYPERCALLS.items():
                t.register(nr, owner.SLOT, getattr(owner, method))
        return t

    def register(self, nr: Hc, slot: int, handler: Handler) -> None:
        """Install ``handler`` for hypercall ``nr`` on devices in ``slot``; ``ConfigError``
        if the number is already taken."""
        if int(nr) in self._entries:
            raise ConfigError(f"hypercall {nr.name} ({int(nr)}) is already registered")
        spec = abi.HYPERCALL_BY_NR[int(nr)].args
        has_out = any(f.direction in ("out", "inout") for f in spec.fields)
        self._entries[int(nr)] = (slot, handler, spec.size, PROT_RW if has_out else PROT_R)

    def dispatcher(self, devices: Sequence[object | None], memory: GuestMemory) -> Dispatch:
        """The function a VM's CPU calls for each hypercall: ``dispatch(nr, arg)``."""
        entries = self._entries
        check = memory.check

        def dispatch(nr: int, arg: int) -> int:
            entry = entries.get(nr)
            if entry is None:
                return _NOSYS
            slot, handler, size, prot = entry
            if not check(arg, size, prot):
                return _FAULT
            dev = devices[slot]
            if dev is None:
                return _NODEV
            return handler(dev, memory, arg)

        return dispatch

    def numbers(self) -> tuple[int, ...]:
        return tuple(sorted(self._entries))
