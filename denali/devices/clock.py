"""The clock and timer device: CLOCK reads the VM's clock, TIMER_SET arms its one-shot timer.

The VM's clock is the kernel's monotonic clock plus the VM's offset (0 unless the VM was
restored from a snapshot, whose clock continues where it stopped). The timer raises
``Irq.TIMER`` once the clock reads its deadline, never before (``denali.timers``); a
new TIMER_SET replaces the armed deadline, 0 disarms it, a past deadline fires at once.

State: the armed deadline (0: none), on the VM's clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.devices.base import SLOT_CLOCK, Device, DeviceHost, State

if TYPE_CHECKING:
    from denali.memory import GuestMemory
    from denali.timers import Timer

_U64: Final = struct.Struct("<Q")
_NOW: Final = abi.HYPERCALL_BY_NR[Hc.CLOCK].args.offsets()["now_ns"]
_DEADLINE: Final = abi.HYPERCALL_BY_NR[Hc.TIMER_SET].args.offsets()["deadline_ns"]


class Clock(Device):
    """One VM's clock and one-shot timer."""

    SLOT: ClassVar[int] = SLOT_CLOCK
    HYPERCALLS: ClassVar = {Hc.CLOCK: "hc_clock", Hc.TIMER_SET: "hc_timer_set"}
    __slots__ = ("_deadline", "_held", "_now", "_timer")

    def __init__(self) -> None:
        self._timer: Timer | None = None
        self._deadline = 0
        self._held: Callable[[], int] | None = None
        """While another keeps the timer (``hand_over``): reads its deadline."""

    @property
    def deadline(self) -> int:
        """The armed deadline on the VM's clock, 0 when none is armed."""
        held = self._held
        return held() if held is not None else self._deadline

    def attach(self, host: DeviceHost) -> None:
        super().attach(host)
        self._now = host.now_ns

    # ---- hypercalls ----
    def hc_clock(self, mem: GuestMemory, arg: int) -> int:
        _U64.pack_into(mem.buf, arg + _NOW, self._now())
        return Result.OK

    def hc_timer_set(self, mem: GuestMemory, arg: int) -> int:
        self.arm(_U64.unpack_from(mem.buf, arg + _DEADLINE)[0])
        return Result.OK

    # ---- host side ----
    def arm(self, deadline_ns: int) -> None:
        """Arm the timer for ``deadline_ns`` (VM clock), replacing any; 0 disarms it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = None
        self._deadline = deadline_ns
        if deadline_ns:
            self._timer = self._host.call_at(deadline_ns, self._fire)

    def hand_over(self, deadline: Callable[[], int]) -> None:
        """Another keeps the timer (the VM sleeps in C, ``denali.sleep``), and fires or
        re-arms it: the loop timer goes, ``deadline()`` says what is armed meanwhile;
        ``arm`` takes it back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = deadline

    def _fire(self) -> None:
        self._timer = None
        self._deadline = 0
        self._host.raise_irq(Irq.TIMER)

    def save(self) -> State:
        return {"deadline": self.deadline}

    def restore(self, state: State) -> None:
        self.arm(int(state.get("deadline", 0)))

    @classmethod
    def check_state(cls, state: Any) -> None:
        super().check_state(state)
        if not isinstance(state.get("deadline", 0), int):
            raise TypeError("the clock's deadline is not an integer")

    def close_now(self) -> bool:
        self.arm(0)
        return True

    async def aclose(self) -> None:
        self.close_now()
