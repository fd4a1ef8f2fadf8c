"""Recursive VMs, the kernel's side: child VMs made for a parent's ``Children`` device.

``ChildSpawner`` (one per kernel) is the ``ChildFactory`` of every VM's child device: it
builds a child VM whole (console, clock, the disks passed down, a NIC on its parent's
LAN when asked for, its own child device), in its parent's CPU group, and hands the
device a ``ChildVm``. The child is published
in ``Kernel.vms`` when it starts; its console writes also go to its parent's console.

Interposition reuses the monitor layer: the events a parent chooses (CHILD_INTERPOSE)
are caught by a ``MessageMonitor`` placed nearest the kernel on the child's stack (the
parent is the layer below its child); each becomes a message in the parent's event
queue and the child waits in its coroutine (every other VM runs) until the parent's
CHILD_REPLY gives the response. A child the parent interposes on nothing has no
monitor at all: its events take the kernel's direct path at their direct cost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from denali import abi
from denali.abi import Result
from denali.devices.children import Child, ChildEvent, ChildRefused, Children
from denali.devices.clock import Clock
from denali.devices.console import Console
from denali.devices.disk.device import Disk, Disks
from denali.devices.disk.shared import share
from denali.devices.nic import Nic, NicConfig, NicPort
from denali.devices.personality import Personality
from denali.errors import ConfigError, ImageError, NetError
from denali.loader import parse_image
from denali.memory import PROT_R, PROT_RW, GuestMemory
from denali.monitor.protocol import MessageMonitor, Request, Response
from denali.monitor.stack import MonitorStack
from denali.net.switch import Switch
from denali.runtime import Runtime
from denali.vm import Vm, VmState

log = logging.getLogger(__name__)

_END: Final = {
    VmState.EXITED: abi.CHILD_END_EXITED,
    VmState.FAULTED: abi.CHILD_END_FAULTED,
    VmState.KILLED: abi.CHILD_END_KILLED,
    VmState.FAILED: abi.CHILD_END_FAILED,
}


class ChildVm:
    """One child VM as its parent's device drives it (``denali.devices.children.Child``)."""

    def __init__(
        self, vm: Vm, device: Children, publish: Callable[[Vm], None], totals: dict[str, int]
    ) -> None:
        self.vm = vm
        self.vm_id = vm.id
        self.mac = vm.mac
        self._device = device
        self._publish = publish
        self._totals = totals
        self._started = False
        self._monitor: MessageMonitor | None = None
        self._waiting: dict[int, tuple[int, asyncio.Future[Response]]] = {}

    # ---- life ----
    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._publish(self.vm)
        self.vm.start()

    def stop(self) -> None:
        MonitorStack.of(self.vm, self._totals).hold_nowait(self)

    def resume(self) -> None:
        ip = self.vm._interposer
        if isinstance(ip, MonitorStack):
            ip.release(self)

    def destroy(self) -> None:
        if not self._started:  # a VM that never ran ends through the usual path
            self.start()
        self.vm.stopped_by = self.vm.stopped_by or "destroyed by its parent"
        self.vm.kill()

    async def ended(self) -> None:
        await asyncio.shield(self.vm._done)

    def on_end(self) -> None:
        """Called as the child ends: its parent hears of it (CHILD_EV_EXIT)."""
        vm = self.vm
        for _, fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
        f = vm.fault
        self._device.child_ended(
            self,
            ChildEvent(
                abi.CHILD_EV_EXIT,
                nr=_END.get(vm.state, abi.CHILD_END_FAILED),
                status=(vm.exit_status or 0) & 0xFFFFFFFF,
                eip=f.eip & 0xFFFFFFFF if f is not None else 0,
                address=(f.address or 0) & 0xFFFFFFFF if f is not None else 0,
                vector=(f.vector or 0) & 0xFFFFFFFF if f is not None else 0,
            ),
        )

    # ---- memory ----
    def _memory(self) -> GuestMemory | None:
        """The child's memory: before its start, the memory its start will take."""
        mem = self.vm._memory
        if mem is None and not self._started:
            mem = self.vm.memory_before_start()
        return mem

    def read(self, addr: int, length: int) -> bytes | int:
        mem = self._memory()
        if mem is None or self.vm._in_slice:
            return Result.NODEV if self.vm.state.final else Result.AGAIN
        if not mem.check(addr, length, PROT_R):
            return Result.FAULT
        return mem.read(addr, length)

    def write(self, addr: int, data: bytes) -> int:
        mem = self._memory()
        if mem is None or self.vm._in_slice:
            return Result.NODEV if self.vm.state.final else Result.AGAIN
        if not mem.check(addr, len(data), PROT_RW):
            return Result.FAULT
        if data:
            mem.write(addr, data)
        return Result.OK

    # ---- interposition ----
    def interpose(self, hypercalls: frozenset[int], faults: bool) -> None:
        stack = MonitorStack.of(self.vm, self._totals)
        if self._monitor is not None:
            stack.remove(self._monitor)
            self._monitor = None
        if not hypercalls and not faults:
            return
        m = MessageMonitor(self._ask, hypercalls=hypercalls, faults=faults)
        m.kinds = frozenset(k for k, on in (("hypercall", bool(hypercalls)), ("fault", faults)) if on)
        stack.insert(len(stack.monitors), m)  # the parent is the layer below its child
        self._monitor = m

    async def _ask(self, req: Request) -> Response:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        if req.kind == "fault":
            f: dict[str, Any] = dict(req.fault or {})
            kind = abi.CHILD_EV_FAULT
            ev = ChildEvent(
                kind,
                req.seq,
                eip=int(f.get("eip") or 0) & 0xFFFFFFFF,
                address=int(f.get("address") or 0) & 0xFFFFFFFF,
                vector=int(f.get("vector") or 0) & 0xFFFFFFFF,
            )
        else:
            kind = abi.CHILD_EV_HYPERCALL
            ev = ChildEvent(
                kind,
                req.seq,
                nr=req.nr & 0xFFFFFFFF,
                arg=req.arg & 0xFFFFFFFF,
                args=self._arg_bytes(req.nr, req.arg),
            )
        self._waiting[req.seq] = (kind, fut)
        try:
            self._device.post_event(self, ev)
            return await fut
        finally:
            self._waiting.pop(req.seq, None)

    def _arg_bytes(self, nr: int, arg: int) -> bytes:
        mem = self.vm._memory
        h = abi.HYPERCALL_BY_NR.get(nr)
        n = min(abi.CHILD_EVENT_ARGS, h.args.size if h is not None else abi.CHILD_EVENT_ARGS)
        if mem is None or not mem.check(arg, n, PROT_R):
            return b""
        return mem.read(arg, n)

    def waiting(self, seq: int) -> int | None:
        w = self._waiting.get(seq)
        return w[0] if w is not None and not w[1].done() else None

    def reply(self, seq: int, action: int, result: int) -> None:
        w = self._waiting.get(seq)
        if w is None or w[1].done():
            return
        if action == abi.CHILD_ANSWER:
            resp = Response(seq, "answer", result & 0xFFFFFFFF)
        elif action == abi.CHILD_RESUME:
            resp = Response(seq, "resume")
        elif action == abi.CHILD_KILL:
            resp = Response(seq, "stop", reason="destroyed by its parent")
        else:
            resp = Response(seq, "pass")
        w[1].set_result(resp)


class ChildSpawner:
    """Makes child VMs for the ``Children`` devices of one kernel's VMs."""

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        new_id: Callable[[], int],
        publish: Callable[[Vm], None],
        on_end: Callable[[Vm], None],
        room: Callable[[], bool],
        totals: dict[str, int],
        switch: Switch | None = None,
        mac_for: Callable[[int], bytes] | None = None,
    ) -> None:
        """``runtime()`` the kernel's runtime; ``new_id()`` a fresh VM id; ``publish(vm)``
        makes a started child visible in ``Kernel.vms``; ``on_end`` is the kernel's
        end-of-VM callback (it detaches a child's NIC); ``room()`` says whether the
        kernel may hold another VM; ``switch`` is the kernel's LAN and ``mac_for(vm_id)``
        the MAC of a VM's NIC there (a child's NIC, CHILD_F_NIC)."""
        self._runtime = runtime
        self._new_id = new_id
        self._publish = publish
        self._on_end = on_end
        self._room = room
        self._totals = totals
        self._switch = switch
        self._mac_for = mac_for

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
        parent = device.host
        assert isinstance(parent, Vm)
        try:
            img = parse_image(image, f"image of VM {parent.id}'s child", name=f"child-of-{parent.id}")
            img.check_fits(mem_size)
        except ImageError as exc:
            raise ChildRefused(Result.INVAL, str(exc)) from None
        if not self._room():
            raise ChildRefused(Result.FULL, "the kernel holds no more VMs")
        passed: list[Disk] = []
        if disks:
            if parent.disks is None:
                raise ChildRefused(Result.NODEV, "no disks to pass down")
            for n, i in enumerate(disks):
                d = parent.disks.disks[i]
                passed.append(Disk(n, d.name, share(d, readonly)))
        vm_id = self._new_id()
        port = self._child_port(parent, vm_id) if nic else None
        holder: list[ChildVm] = []

        def ended(vm: Vm) -> None:
            self._on_end(vm)
            if holder:
                holder[0].on_end()

        kids = Children(self, quota=quota, disk_count=len(passed), has_nic=port is not None)
        try:
            vm = Vm(
                self._runtime(),
                vm_id,
                img,
                mem_size,
                cmdline,
                Console(parent.console.feed),
                Clock(),
                Nic(port, above=parent.nic_device) if port is not None else None,
                Disks(passed, above=(parent.disks, disks) if parent.disks is not None and passed else None),
                Personality(),
                ended,
                children=kids,
                group=parent.group,
            )
        except BaseException:
            if port is not None and self._switch is not None and port.switch is not None:
                self._switch.detach(port)
            raise
        child = ChildVm(vm, device, self._publish, self._totals)
        holder.append(child)
        log.debug("VM %d created child VM %d (%d bytes, quota %d)", parent.id, vm_id, mem_size, quota)
        return child

    def _child_port(self, parent: Vm, vm_id: int) -> NicPort:
        """The NIC port of a new child of ``parent``, attached to the LAN of the parent's
        NIC: MAC ``mac_for(vm_id)``, queue bounds and cable impairment as the parent's
        (never promiscuous). ``ChildRefused`` NODEV when the parent's NIC is not on this
        kernel's LAN, FULL when the switch takes no more ports (a MAC or name in use)."""
        own = parent.nic
        switch = self._switch
        if own is None or switch is None or self._mac_for is None or own.switch is not switch:
            raise ChildRefused(Result.NODEV, "no NIC on this kernel's LAN to pass down")
        config = NicConfig(rx_capacity=own.rx_capacity, tx_capacity=own.ingress_capacity)
        port = NicPort(f"vm{vm_id}", self._mac_for(vm_id), config=config)
        link = own.link
        if link is not None:
            port.set_link(link.spec)
        try:
            switch.attach(port)
        except (ConfigError, NetError) as exc:
            raise ChildRefused(Result.FULL, str(exc)) from None
        return port
