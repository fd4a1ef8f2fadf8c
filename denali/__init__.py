"""denali: the Denali isolation kernel (OSDI 2002) on Unicorn, as an embeddable asyncio library.

Only re-exports live here: this is the supported surface (docs/api.md). Internals that
power users may need, without a promise to keep them, are in ``denali.lowlevel``; the
virtual LAN (switch, TAP, VXLAN, pcap) is ``denali.net``.
"""

from denali._version import __version__
from denali.abi import ABI_VERSION, Irq, Result
from denali.config import KernelConfig, KernelOptions, parse_size
from denali.devices.console import Console, ConsoleSink
from denali.devices.disk.spec import DiskMode, DiskSpec, parse_disk_arg
from denali.devices.nic import NicConfig, NicPort
from denali.errors import (
    ConfigError,
    DenaliError,
    DiskError,
    GuestFault,
    ImageError,
    KernelClosedError,
    KernelInternalError,
    MigrationError,
    NetError,
    ResourceError,
    SnapshotError,
    SnapshotFormatError,
    SnapshotWriteError,
    SwapError,
    VmKilledError,
    VmMigratedError,
    VmStateError,
)
from denali.fault import FaultKind, FaultReport
from denali.images import builtin_images
from denali.kernel import Kernel
from denali.loader import Image, load_image
from denali.snapshot import SnapshotInfo
from denali.vm import Vm, VmState

__all__ = (
    "ABI_VERSION",
    "ConfigError",
    "Console",
    "ConsoleSink",
    "DenaliError",
    "DiskError",
    "DiskMode",
    "DiskSpec",
    "FaultKind",
    "FaultReport",
    "GuestFault",
    "Image",
    "ImageError",
    "Irq",
    "Kernel",
    "KernelClosedError",
    "KernelConfig",
    "KernelInternalError",
    "KernelOptions",
    "MigrationError",
    "NetError",
    "NicConfig",
    "NicPort",
    "ResourceError",
    "Result",
    "SnapshotError",
    "SnapshotFormatError",
    "SnapshotInfo",
    "SnapshotWriteError",
    "SwapError",
    "Vm",
    "VmKilledError",
    "VmMigratedError",
    "VmState",
    "VmStateError",
    "__version__",
    "builtin_images",
    "load_image",
    "parse_disk_arg",
    "parse_size",
)
