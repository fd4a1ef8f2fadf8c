"""What every virtual device is, and the narrow interface between a device and its VM.

A device (console, clock, NIC, disks, personality services) is one object per VM that owns its host state,
its hypercall handlers and its save/restore. It knows its VM only as a ``DeviceHost``:
it may raise interrupt bits, read the VM's clock, set timers, and post completions that
touch guest memory. It never holds a VM, a kernel, or guest memory between calls.

Hypercall handlers are methods ``handler(self, mem, arg) -> int``: ``mem`` is the VM's
memory for the duration of the call, ``arg`` the guest address of the argument
structure, already checked (``denali.hypercalls``) to lie in guest memory with the
permissions its fields need. A handler checks every pointer *inside* the structure
itself (``GuestMemory.check``) and returns a ``Result`` code.

Guest memory outside a hypercall is touched only through ``DeviceHost.post``: the
callback runs on the event loop while no slice of that VM runs (at once if none runs,
else right after the slice), so a slice on a worker thread never sees the kernel write
its memory. It is called with ``None`` instead of memory when the VM has ended.

State (``save``/``restore``): plain data (dicts, lists, str, int, bool, bytes) that a
device of the same kind in another VM, kernel or process turns back into the same
device state. Swap keeps devices live and does not use it; snapshots and migration do.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from denali.abi import Hc

if TYPE_CHECKING:
    from denali.memory import GuestMemory
    from denali.timers import Timer

Completion = Callable[["GuestMemory | None"], None]
"""A posted completion: called with the VM's memory between slices, or None if it ended."""
State = dict[str, Any]


class DeviceHost(Protocol):
    """What a device may do to its VM (the VM implements it; tests may fake it)."""

    @property
    def vm_id(self) -> int:
        """The VM's id, for names and logs."""
        ...

    def raise_irq(self, bits: int) -> None:
        """OR ``bits`` into the VM's pending mask (batched: delivered when it next runs)."""
        ...

    def post(self, completion: Completion) -> None:
        """Run ``completion`` on the loop while no slice of the VM runs (see module doc)."""
        ...

    def now_ns(self) -> int:
        """The VM's clock (what CLOCK returns to the guest)."""
        ...

    def call_at(self, deadline_ns: int, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` once the VM's clock reads ``deadline_ns`` (never before)."""
        ...


class Device(abc.ABC):
    """Base of every virtual device; see the module docstring for the contract.

    ``SLOT``: the device's fixed index in a VM's device table (one device per kind).
    ``HYPERCALLS``: hypercall number -> name of the handler method.
    """

    SLOT: ClassVar[int]
    HYPERCALLS: ClassVar[Mapping[Hc, str]] = {}
    __slots__ = ("_host",)

    def attach(self, host: DeviceHost) -> None:
        """Called once by the VM builder before the VM runs."""
        self._host = host

    @property
    def host(self) -> DeviceHost:
        return self._host

    def busy(self) -> bool:
        """True while work is in flight that needs the VM's memory (no swap-out then)."""
        return False

    def save(self) -> State:
        """The device's state as plain data (the VM is paused and the device idle)."""
        return {}

    def restore(self, state: State) -> None:  # noqa: B027 (a device with no state keeps this)
        """Take over ``state`` from ``save`` of a device of the same kind (after ``attach``);
        ``check_state`` has accepted it."""

    @classmethod
    def check_state(cls, state: Any) -> None:
        """Refuse saved state (from a snapshot or a migration, so untrusted) that
        ``restore`` could not take, before any VM is built from it: ``TypeError`` or
        ``ValueError`` saying what is wrong, in a few words. The default asks for an
        object; a device with state of its own checks its fields too."""
        if not isinstance(state, dict):
            raise TypeError(f"{cls.__name__.lower()} state is not an object")

    def close_now(self) -> bool:
        """Release, without waiting, what the ended VM's device holds; True when that was
        everything, so ``aclose`` has nothing left to do and the VM ends without a close
        task (a VM's end then costs no loop iteration). The default answers for devices
        that do not override ``aclose``; a device that does, and can sometimes finish at
        once, overrides this too. Idempotent, never raises for host trouble."""
        return type(self).aclose is Device.aclose

    async def aclose(self) -> None:  # noqa: B027 (a device with nothing to release keeps this)
        """Release host resources once the VM has ended; idempotent, never raises for
        host trouble (devices report it through their own error channel)."""


SLOT_VM = 0
"""Slot of the VM itself (TERMINATE, IDLE, SET_HANDLER)."""
SLOT_CLOCK = 1
SLOT_CONSOLE = 2
SLOT_NIC = 3
SLOT_DISK = 4
SLOT_CHILDREN = 5
SLOT_PERSONALITY = 6
SLOTS = 7
