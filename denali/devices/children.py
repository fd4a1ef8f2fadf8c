"""The child-VM device: a VM creates, runs and monitors its own children (CHILD_* hypercalls).

One ``Children`` device per VM owns everything of that VM's children as its guest sees
them: the handle table, the child-memory quota and its use, and the bounded queue of
child events (messages) with its interrupt bit ``Irq.CHILD``. It makes no VM itself:
the kernel side (``denali.nesting``) gives it a ``ChildFactory`` that builds child VMs,
and each child is a ``Child`` to it. So this module imports nothing above the devices.

Bounds, the rules a child can never break:

- **memory**: a child costs ``mem_size + quota`` of its parent's quota while it lives;
  its own children draw on the ``quota`` it was given. A subtree therefore never holds
  more memory than the grant of its root (``Kernel.spawn(child_memory=...)``).
- **devices**: a child has a NIC only when its parent has one and asks for it
  (``CHILD_F_NIC``): a port of its own on the parent's LAN, with queue bounds and a
  cable (link impairment) no better than the parent's; it has only the disks its
  parent passes down (read-only when the parent's is, or when the parent asks). What
  a child sends and writes through them meets every ancestor's monitors too
  (``Nic.above``, ``Disks.above``): a policy on a VM binds its whole subtree.
- **CPU**: the factory puts a child in its parent's CPU group: a whole subtree gets the
  one share of its root (``denali.scheduler``).
- **life**: destroying a VM (or its end) destroys its children, and theirs.

Events: a child's interposed hypercall or fault waits in the child until its parent
answers it (``CHILD_REPLY``); a child's end is always reported (``CHILD_EV_EXIT``). A
child has at most one waiting event and one exit event queued, so the queue
(``CHILD_QUEUE`` = 2 * ``CHILD_MAX``) never overflows. Every guest pointer and length
is checked against the parent's memory, and every child address against the child's
page map, by the child side.

State (``save``): the quota and its use; live children are not carried by a snapshot,
which refuses a VM that has any (``Vm.check_no_subtree``, ``SubtreeError``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol

from denali import abi
from denali.abi import Hc, Irq, Result
from denali.devices.base import SLOT_CHILDREN, Device, State
from denali.memory import PROT_R, PROT_RW, GuestMemory

log = logging.getLogger(__name__)

_CREATE: Final = abi.HYPERCALL_BY_NR[Hc.CHILD_CREATE].args
_CONTROL: Final = abi.HYPERCALL_BY_NR[Hc.CHILD_CONTROL].args
_MEMORY: Final = abi.HYPERCALL_BY_NR[Hc.CHILD_MEMORY].args
_INTERPOSE: Final = abi.HYPERCALL_BY_NR[Hc.CHILD_INTERPOSE].args
_EVENT: Final = abi.HYPERCALL_BY_NR[Hc.CHILD_EVENT].args
_REPLY: Final = abi.HYPERCALL_BY_NR[Hc.CHILD_REPLY].args
_CREATE_IN: Final = struct.Struct("<8I")
_CREATE_OUT: Final = _CREATE.offsets()["handle"]
_CREATE_MAC: Final = _CREATE.offsets()["mac"]
_CREATE_FLAGS: Final = abi.CHILD_F_DISK_RO | abi.CHILD_F_NIC
_II: Final = struct.Struct("<II")
_MEM_IN: Final = struct.Struct("<5I")
_INTERPOSE_IN: Final = struct.Struct("<IIQ")
_REPLY_IN: Final = struct.Struct("<7I")
_EVENT_CODEC: Final = _EVENT.codec()
_OPS: Final = (abi.CHILD_OP_START, abi.CHILD_OP_STOP, abi.CHILD_OP_RESUME, abi.CHILD_OP_DESTROY)


class ChildRefused(Exception):
    """Raised by a ``ChildFactory`` that cannot make the child: ``code`` is the guest's
    result (INVAL for a bad image, FULL when the kernel holds no more VMs)."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass(frozen=True, slots=True)
class ChildEvent:
    """One message of the child-event queue (the fields of CHILD_EVENT)."""

    kind: int
    seq: int = 0
    nr: int = 0
    arg: int = 0
    status: int = 0
    eip: int = 0
    address: int = 0
    vector: int = 0
    args: bytes = b""


class Child(Protocol):
    """One child VM, as its parent's device drives it (``denali.nesting`` implements it)."""

    vm_id: int
    mac: bytes
    """The MAC of the child's NIC (all zero: it has none)."""

    def start(self) -> None: ...

    def stop(self) -> None:
        """Hold it before its next instruction (it waits; others run)."""
        ...

    def resume(self) -> None: ...

    def destroy(self) -> None:
        """End it (KILLED) and its subtree; its end is reported like any other."""
        ...

    @property
    def started(self) -> bool: ...

    def read(self, addr: int, length: int) -> bytes | int:
        """What the child may read at ``addr``, or a Result code (FAULT, AGAIN)."""
        ...

    def write(self, addr: int, data: bytes) -> int:
        """Write where the child may write: a Result code."""
        ...

    def interpose(self, hypercalls: frozenset[int], faults: bool) -> None: ...

    def waiting(self, seq: int) -> int | None:
        """The kind (CHILD_EV_*) of the event ``seq`` that waits for an answer, or None."""
        ...

    def reply(self, seq: int, action: int, result: int) -> None:
        """Answer the waiting event ``seq`` (its kind fits ``action``: checked by the caller)."""
        ...

    async def ended(self) -> None:
        """Return once the child has ended and its devices closed."""
        ...


class ChildFactory(Protocol):
    """Makes children for one parent VM (``denali.nesting.ChildSpawner``)."""

    def create(
        self,
        device: Children,
        image: bytes,
        mem_size: int,
        quota: int,
        cmdline: str,
        disks: Sequence[int],
        readonly: bool,
        nic: bool = False,
    ) -> Child:
        """A new, not yet started child of ``device``'s VM; its events go to
        ``device.post_event`` and its end to ``device.child_ended``; ``nic``: it gets a
        NIC on the LAN of its parent's NIC. Raises ``ChildRefused``."""
        ...


@dataclass(slots=True)
class _Slot:
    child: Child
    cost: int
    ended: bool = False


class Children(Device):
    """The child-VM device of one VM (see the module docstring)."""

    SLOT: ClassVar[int] = SLOT_CHILDREN
    HYPERCALLS: ClassVar = {
        Hc.CHILD_CREATE: "hc_create",
        Hc.CHILD_CONTROL: "hc_control",
        Hc.CHILD_MEMORY: "hc_memory",
        Hc.CHILD_INTERPOSE: "hc_interpose",
        Hc.CHILD_EVENT: "hc_event",
        Hc.CHILD_REPLY: "hc_reply",
    }
    __slots__ = ("_events", "_factory", "_slots", "disk_count", "has_nic", "quota", "stats", "used")

    def __init__(
        self, factory: ChildFactory | None, quota: int = 0, disk_count: int = 0, has_nic: bool = False
    ) -> None:
        self._factory = factory
        self.quota = quota
        """Bytes of memory this VM's children (and theirs) may hold in all."""
        self.used = 0
        """Bytes of the quota held by live children (mem_size + quota each)."""
        self.disk_count = disk_count
        self.has_nic = has_nic
        """Whether this VM has a NIC, and so may give its children one (CHILD_F_NIC)."""
        self._slots: list[_Slot | None] = [None] * abi.CHILD_MAX
        self._events: deque[tuple[int, ChildEvent]] = deque()
        self.stats = {"created": 0, "refused": 0, "events": 0, "replies": 0}

    # ---- what the kernel side calls ----
    def post_event(self, child: Child, event: ChildEvent) -> None:
        """Queue ``event`` of ``child`` for the guest and raise Irq.CHILD when the queue
        was empty."""
        handle = self._handle_of(child)
        if handle is None:
            return
        assert len(self._events) < abi.CHILD_QUEUE  # see the module docstring
        self._events.append((handle, event))
        self.stats["events"] += 1
        if len(self._events) == 1:
            self.host.raise_irq(Irq.CHILD)

    def child_ended(self, child: Child, event: ChildEvent) -> None:
        """``child`` ended: its quota comes back and its exit event is queued (the handle
        is free once the guest has read it)."""
        handle = self._handle_of(child)
        if handle is None:
            return
        slot = self._slots[handle]
        assert slot is not None
        if slot.ended:
            return
        slot.ended = True
        self.used -= slot.cost
        self.post_event(child, event)

    def _handle_of(self, child: Child) -> int | None:
        for i, slot in enumerate(self._slots):
            if slot is not None and slot.child is child:
                return i
        return None

    def _live(self, handle: int) -> _Slot | None:
        slot = self._slots[handle] if handle < abi.CHILD_MAX else None
        return slot if slot is not None and not slot.ended else None

    @property
    def children(self) -> tuple[Child, ...]:
        """The live children."""
        return tuple(s.child for s in self._slots if s is not None and not s.ended)

    def busy(self) -> bool:
        return False

    def save(self) -> State:
        return {"quota": self.quota, "used": self.used}

    @classmethod
    def check_state(cls, state: Any) -> None:
        super().check_state(state)
        grant = state.get("quota", 0)
        if not isinstance(grant, int) or not 0 <= grant <= 1 << 40:
            raise ValueError("the child-memory grant is out of range")

    def close_now(self) -> bool:
        """True (nothing to wait for) when no child was ever made or all have been freed."""
        return all(s is None for s in self._slots)

    async def aclose(self) -> None:
        """Destroy every child (and so their subtrees) and wait for them to end."""
        kids = [s.child for s in self._slots if s is not None]
        for c in kids:
            c.destroy()
        if kids:
            await asyncio.gather(*(c.ended() for c in kids), return_exceptions=True)

    # ---- hypercalls ----
    def hc_create(self, mem: GuestMemory, arg: int) -> int:
        image, image_len, mem_size, quota, cmd, cmd_len, disks, flags = _CREATE_IN.unpack_from(mem.buf, arg)
        res = self._create(mem, image, image_len, mem_size, quota, cmd, cmd_len, disks, flags)
        if isinstance(res, tuple):
            handle, vm_id, mac = res
            _II.pack_into(mem.buf, arg + _CREATE_OUT, handle, vm_id)
            mem.buf[arg + _CREATE_MAC : arg + _CREATE_MAC + 6] = mac
            return Result.OK
        self.stats["refused"] += 1
        return res

    def _create(
        self,
        mem: GuestMemory,
        image: int,
        image_len: int,
        mem_size: int,
        quota: int,
        cmd: int,
        cmd_len: int,
        disks: int,
        flags: int,
    ) -> tuple[int, int, bytes] | int:
        if flags & ~_CREATE_FLAGS:
            return Result.INVAL
        if not abi.MIN_MEMORY <= mem_size <= abi.MAX_MEMORY or mem_size % abi.PAGE_SIZE:
            return Result.INVAL
        if image_len == 0 or image_len > abi.CHILD_IMAGE_MAX or cmd_len > abi.CMDLINE_MAX:
            return Result.INVAL
        if not mem.check(image, image_len, PROT_R) or (cmd_len and not mem.check(cmd, cmd_len, PROT_R)):
            return Result.FAULT
        cmdline = mem.read(cmd, cmd_len) if cmd_len else b""
        if b"\0" in cmdline:
            return Result.INVAL
        if disks >> self.disk_count:
            return Result.NODEV
        if flags & abi.CHILD_F_NIC and not self.has_nic:
            return Result.NODEV
        cost = mem_size + quota
        if self.used + cost > self.quota:
            return Result.FULL
        try:
            handle = self._slots.index(None)
        except ValueError:
            return Result.FULL
        if self._factory is None:
            return Result.NODEV
        try:
            child = self._factory.create(
                self,
                mem.read(image, image_len),
                mem_size,
                quota,
                cmdline.decode("latin-1"),
                [i for i in range(self.disk_count) if disks >> i & 1],
                bool(flags & abi.CHILD_F_DISK_RO),
                bool(flags & abi.CHILD_F_NIC),
            )
        except ChildRefused as exc:
            log.debug("VM %d: child refused: %s", self.host.vm_id, exc)
            return exc.code
        self._slots[handle] = _Slot(child, cost)
        self.used += cost
        self.stats["created"] += 1
        return handle, child.vm_id, child.mac

    def hc_control(self, mem: GuestMemory, arg: int) -> int:
        handle, op = _II.unpack_from(mem.buf, arg)
        slot = self._live(handle)
        if slot is None:
            return Result.NODEV
        if op not in _OPS:
            return Result.INVAL
        c = slot.child
        if op == abi.CHILD_OP_START:
            if c.started:
                return Result.INVAL
            c.start()
        elif op == abi.CHILD_OP_STOP:
            c.stop()
        elif op == abi.CHILD_OP_RESUME:
            c.resume()
        else:
            c.destroy()
        return Result.OK

    def hc_memory(self, mem: GuestMemory, arg: int) -> int:
        handle, op, addr, buf, length = _MEM_IN.unpack_from(mem.buf, arg)
        slot = self._live(handle)
        if slot is None:
            return Result.NODEV
        if op not in (abi.CHILD_MEM_READ, abi.CHILD_MEM_WRITE) or length > abi.CHILD_MEMORY_MAX:
            return Result.INVAL
        if op == abi.CHILD_MEM_READ:
            if not mem.check(buf, length, PROT_RW):
                return Result.FAULT
            data = slot.child.read(addr, length)
            if isinstance(data, int):
                return data
            mem.write(buf, data)
            return Result.OK
        if not mem.check(buf, length, PROT_R):
            return Result.FAULT
        return slot.child.write(addr, mem.read(buf, length))

    def hc_interpose(self, mem: GuestMemory, arg: int) -> int:
        handle, flags, bits = _INTERPOSE_IN.unpack_from(mem.buf, arg)
        slot = self._live(handle)
        if slot is None:
            return Result.NODEV
        if flags & ~abi.CHILD_I_FAULT:
            return Result.INVAL
        numbers = frozenset(n for n in range(64) if bits >> n & 1)
        slot.child.interpose(numbers, bool(flags & abi.CHILD_I_FAULT))
        return Result.OK

    def hc_event(self, mem: GuestMemory, arg: int) -> int:
        if not self._events:
            return Result.AGAIN
        handle, ev = self._events.popleft()
        _EVENT_CODEC.pack_into(
            mem.buf,
            arg,
            handle,
            ev.kind,
            ev.seq,
            ev.nr,
            ev.arg,
            ev.status,
            ev.eip,
            ev.address,
            ev.vector,
            0,
            ev.args[: abi.CHILD_EVENT_ARGS].ljust(abi.CHILD_EVENT_ARGS, b"\0"),
        )
        if ev.kind == abi.CHILD_EV_EXIT:
            self._slots[handle] = None  # the handle is free now
        if self._events:  # more wait: the guest learns it as it would from an empty queue
            self.host.raise_irq(Irq.CHILD)
        return Result.OK

    def hc_reply(self, mem: GuestMemory, arg: int) -> int:
        handle, seq, action, result, buf, length, addr = _REPLY_IN.unpack_from(mem.buf, arg)
        slot = self._live(handle)
        if slot is None:
            return Result.NODEV
        kind = slot.child.waiting(seq)
        if kind is None:
            return Result.INVAL
        fits = {
            abi.CHILD_PASS: True,
            abi.CHILD_KILL: True,
            abi.CHILD_ANSWER: kind == abi.CHILD_EV_HYPERCALL,
            abi.CHILD_RESUME: kind == abi.CHILD_EV_FAULT,
        }.get(action, False)
        if not fits or length > abi.CHILD_MEMORY_MAX:
            return Result.INVAL
        if length:
            if not mem.check(buf, length, PROT_R):
                return Result.FAULT
            res = slot.child.write(addr, mem.read(buf, length))
            if res != Result.OK:
                return res
        slot.child.reply(seq, action, result)
        self.stats["replies"] += 1
        return Result.OK
