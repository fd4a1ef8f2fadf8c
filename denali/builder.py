"""Builds a VM whole: its devices, its switch port and its swap area, then the ``Vm``.

Order (each step undone if a later one fails, so a failed spawn leaves nothing behind):

1. the console, clock and personality-services devices;
2. the NIC: a ``NicPort`` with the VM's MAC, attached to the kernel's switch (a MAC in
   use is refused here, before anything is opened);
3. the disks (``Disks.open``: every image and overlay opened and checked);
4. the swap file (with a memory budget);
5. the ``Vm``, which attaches every device to itself.

Only then does the kernel publish the VM and start it. Memory and CPU are made later,
when the gatekeeper first admits the VM (``denali.vm``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from denali.devices.children import ChildFactory, Children
from denali.devices.clock import Clock
from denali.devices.console import Console, ConsoleSink
from denali.devices.disk.device import Disks, open_disks
from denali.devices.disk.spec import DiskSpec
from denali.devices.nic import Nic, NicConfig, NicPort
from denali.devices.personality import Personality
from denali.loader import Image
from denali.net.impair import LinkSpec
from denali.net.switch import Switch
from denali.runtime import Runtime
from denali.vm import Vm


@dataclass(frozen=True)
class VmSpec:
    """Everything a VM is made from (validated by ``Kernel.spawn``)."""

    image: Image
    memory: int
    cmdline: str = ""
    console: ConsoleSink | None = None
    nic: bool = True
    mac: bytes | None = None
    nic_config: NicConfig | None = None
    disks: Sequence[DiskSpec] = field(default=())
    link: LinkSpec | None = None
    """Impairment of the NIC's cable (loss, delay, ...), or None."""
    child_memory: int = 0
    """Bytes of memory the VM's children (and theirs) may hold in all (0: no children)."""


async def build_vm(
    rt: Runtime,
    switch: Switch,
    vm_id: int,
    spec: VmSpec,
    mac: bytes,
    on_end: Callable[[Vm], None],
    children: ChildFactory | None = None,
) -> Vm:
    """Make VM ``vm_id`` from ``spec`` (see the module docstring); ``mac`` is its NIC's
    MAC unless ``spec.mac`` gives one; ``on_end`` is called as the VM ends; ``children``
    makes the VM's child VMs. Raises what the failing step raises."""
    console = Console(spec.console)
    clock = Clock()
    port: NicPort | None = None
    disks: Disks | None = None
    area = False
    try:
        nic = None
        if spec.nic:
            port = NicPort(f"vm{vm_id}", spec.mac or mac, config=spec.nic_config)
            if spec.link is not None:
                port.set_link(spec.link)
            switch.attach(port)  # NetError/ConfigError (a MAC in use) before anything else
            nic = Nic(port)
        disks = await open_disks(spec.disks)
        if rt.store is not None:
            rt.store.create_area(vm_id, spec.memory)
            area = True
        kids = Children(
            children, quota=spec.child_memory, disk_count=len(disks.disks), has_nic=nic is not None
        )
        return Vm(
            rt,
            vm_id,
            spec.image,
            spec.memory,
            spec.cmdline,
            console,
            clock,
            nic,
            disks,
            Personality(),
            on_end,
            children=kids,
        )
    except BaseException:
        if area and rt.store is not None:
            rt.store.remove_area(vm_id)
        if disks is not None:
            await disks.aclose()
        if port is not None and port.switch is not None:
            switch.detach(port)
        raise
