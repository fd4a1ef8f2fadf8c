"""denali: the Denali isolation kernel (OSDI 2002) on Unicorn, as an embeddable asyncio library.

Only re-exports live here; see the modules for contracts.
"""

from denali._version import __version__
from denali.abi import ABI_VERSION, Irq, Result
from denali.config import KernelConfig, parse_size
from denali.errors import (
    ConfigError,
    DenaliError,
    GuestFault,
    ImageError,
    KernelClosedError,
    KernelInternalError,
    NetError,
    ResourceError,
    VmKilledError,
    WouldBlock,
)
from denali.fault import FaultKind, FaultReport
from denali.images import builtin_images
from denali.kernel import Kernel
from denali.loader import Image, load_image
from denali.vm import Vm, VmState

__all__ = (
    "ABI_VERSION",
    "ConfigError",
    "DenaliError",
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
    "NetError",
    "ResourceError",
    "Result",
    "Vm",
    "VmKilledError",
    "VmState",
    "WouldBlock",
    "__version__",
    "builtin_images",
    "load_image",
    "parse_size",
)
