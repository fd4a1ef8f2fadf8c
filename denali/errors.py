"""Every exception the denali library raises to its host program.

The guest never sees these: it sees result codes (``denali.abi.Result``). Only the CLI
turns them into messages and exit statuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from denali.fault import FaultReport


class DenaliError(Exception):
    """Raised for any failure denali reports; the base of all its exceptions."""


class ConfigError(DenaliError, ValueError):
    """Raised when a configuration, an option, or an image given by the host is invalid."""


class ImageError(ConfigError):
    """Raised when a guest image cannot be loaded (bad ELF, wrong machine, too large)."""


class DiskError(ConfigError):
    """Raised when a disk image or overlay is missing, in use, truncated, corrupt, or does not
    match its base image; never repaired silently. ``path`` names the offending file."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class GuestFault(DenaliError):
    """Raised (from ``Vm.wait()``) when a guest faulted and its VM was stopped.

    ``report`` carries the reason, address, EIP, registers and disassembly.
    """

    def __init__(self, report: FaultReport) -> None:
        super().__init__(report.summary())
        self.report = report


class KernelClosedError(DenaliError, RuntimeError):
    """Raised when a kernel that is closed or closing is asked to do something."""


class ResourceError(DenaliError):
    """Raised when the host lacks what a VM needs (memory maps, engine memory, a device)."""


class SwapError(ResourceError):
    """Raised when a swap file cannot be written (a swap-out fails; the VM stays resident)
    or read back intact; from ``Vm.wait()`` when the VM it failed was stopped."""


class NetError(DenaliError):
    """Raised when a network port cannot be opened or used (TAP, VXLAN, pcap)."""


class VmKilledError(DenaliError):
    """Raised by ``Vm.wait()`` when the host stopped the VM before the guest terminated."""


class KernelInternalError(DenaliError):
    """Raised by ``Vm.wait()`` when a kernel bug stopped that VM; ``__cause__`` says which."""


class SdkError(DenaliError):
    """Raised when the guest SDK cannot build a guest: the SDK was not built into the package,
    the machine's compiler is missing, or a new project cannot be written."""


class VmStateError(DenaliError):
    """Raised when a VM is asked for something its state does not allow: snapshotting a VM
    that is not paused, pausing or resuming a VM that has ended."""


class SubtreeError(VmStateError):
    """Raised when a snapshot, clone or migration is asked of a VM that has live child VMs,
    or of a child VM: a snapshot does not carry a subtree (destroy the children first, or
    snapshot a VM without any)."""


class SnapshotError(DenaliError):
    """Raised when a snapshot cannot be written or read; ``path`` names the file."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class SnapshotFormatError(SnapshotError, ConfigError):
    """Raised when a file is not a snapshot this kernel can restore: not a snapshot, another
    format or ABI version, truncated, or damaged (a checksum mismatch). Never repaired."""


class SnapshotWriteError(SnapshotError, ResourceError):
    """Raised when the host cannot write a snapshot (a full disk, a directory that cannot
    be written); nothing is left at the snapshot's path and the VM is unchanged."""


class VmMigratedError(VmKilledError):
    """Raised by ``Vm.wait()`` on the source kernel when the VM moved to another kernel by
    live migration (``denali.migration``); it runs on there."""


class MigrationError(DenaliError):
    """Raised when a live migration fails: the peer cannot be reached, refuses the VM, sends
    a malformed stream, or the link drops. On the source the VM keeps running (or stays
    as it was asked to be), nothing of it lost; on the destination nothing is left."""
