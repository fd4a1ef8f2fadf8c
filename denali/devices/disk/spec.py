"""What disks a VM gets: ``DiskSpec`` and the ``--disk`` command-line syntax.

Modes (``DiskSpec.mode``):

- ``overlay-discard`` (default, ``:discard``): the guest reads the image and writes to a
  private copy-on-write overlay that is thrown away when the VM ends; the image is shared
  read-only, so any number of VMs may use it at once.
- ``overlay-keep`` (``:keep`` or ``:keep=OVERLAY``): the same, but the overlay is a file
  that persists across boots (default ``IMAGE.overlay``); one VM at a time per overlay.
- ``ro`` (``:ro``): the image, shared read-only; the guest's writes are refused (INVAL).
- ``rw`` (``:rw``): the image itself, read and written by this VM alone (locked).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final, Literal

from denali import abi
from denali.errors import ConfigError

DiskMode = Literal["overlay-keep", "overlay-discard", "ro", "rw"]
MODES: Final[tuple[DiskMode, ...]] = ("overlay-keep", "overlay-discard", "ro", "rw")
_SUFFIX: Final[dict[str, DiskMode]] = {
    "keep": "overlay-keep",
    "discard": "overlay-discard",
    "ro": "ro",
    "rw": "rw",
}
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_disk_name(name: str) -> str:
    """Return ``name`` if it is a valid disk name, else raise ``ConfigError``.

    A name is 1..31 ASCII bytes of letters, digits, '.', '_' and '-', starting with a
    letter or digit (it travels in DISK_INFO's 32-byte field with its NUL).
    """
    if not _NAME.match(name) or len(name.encode()) > abi.DISK_NAME_MAX:
        raise ConfigError(
            f"invalid disk name {name!r}: use 1-{abi.DISK_NAME_MAX} letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class DiskSpec:
    """One disk for a VM: the image at ``path``, seen by the guest as ``name``.

    ``path`` (and ``overlay``) must be regular files: anything else (a FIFO, a device,
    a socket, a directory) is refused with ``DiskError`` when the disk is opened, before
    the file is (see ``denali.devices.disk.base.open_checked``).

    ``name`` defaults to the image file's name without its extension. ``overlay`` is the
    overlay file of an ``overlay-keep`` disk (default ``path + ".overlay"``); it is
    created on first use and checked against the image on every later one.
    ``overlay_dir`` is where an ``overlay-discard`` disk keeps its throwaway file (default:
    the system temporary directory; the file is unlinked as soon as it is created, so
    nothing is left behind even if the host dies). Raises ``ConfigError`` when invalid.
    """

    path: str
    name: str | None = None
    mode: DiskMode = "overlay-discard"
    overlay: str | None = None
    overlay_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("a disk needs an image path")
        if self.mode not in MODES:
            raise ConfigError(f"unknown disk mode {self.mode!r}; modes: {', '.join(MODES)}")
        if self.name is not None:
            check_disk_name(self.name)
        if self.overlay is not None and self.mode != "overlay-keep":
            raise ConfigError(f"disk {self.path}: an overlay file is only used in overlay-keep mode")
        if self.overlay_dir is not None and self.mode != "overlay-discard":
            raise ConfigError(f"disk {self.path}: overlay_dir is only used in overlay-discard mode")

    @property
    def disk_name(self) -> str:
        """The name the guest asks DISK_INFO for."""
        if self.name is not None:
            return self.name
        base = os.path.basename(self.path.rstrip("/"))
        stem = base.split(".", 1)[0] if not base.startswith(".") else base
        try:
            return check_disk_name(stem)
        except ConfigError:
            raise ConfigError(
                f"disk {self.path}: cannot derive a disk name from the file name; give one as NAME=PATH"
            ) from None

    @property
    def overlay_path(self) -> str | None:
        """The kept overlay's file (overlay-keep only), else None."""
        if self.mode != "overlay-keep":
            return None
        return self.overlay if self.overlay is not None else self.path + ".overlay"


def parse_disk_arg(text: str, index: int | None = None) -> DiskSpec:
    """Parse one ``--disk`` value: ``[NAME=]PATH[:keep[=OVERLAY]|:discard|:ro|:rw]``.

    ``{i}`` anywhere in ``text`` becomes ``index`` when one is given (so
    ``--disk data=base.img:keep=vm{i}.overlay`` gives each of N VMs its own overlay).
    ``NAME=`` is recognised when the text before the first '=' is a valid disk name and
    contains no '/'. The mode suffix is recognised only at the end (a PATH may contain
    ':' otherwise). Without a suffix the mode is ``overlay-discard``.
    Examples: ``base.img``, ``root=images/base.img:ro``, ``data.img:keep=/var/vm1.ovl``.
    Raises ``ConfigError`` with the offending text.
    """
    if index is not None:
        text = text.replace("{i}", str(index))
    rest = text
    name: str | None = None
    head, eq, tail = rest.partition("=")
    if eq and "/" not in head and ":" not in head and _NAME.match(head):
        name, rest = head, tail
    mode: DiskMode = "overlay-discard"
    overlay: str | None = None
    keep_at = rest.rfind(":keep=")
    if keep_at >= 0:
        overlay = rest[keep_at + len(":keep=") :]
        rest = rest[:keep_at]
        mode = "overlay-keep"
        if not overlay:
            raise ConfigError(f"--disk {text!r}: ':keep=' needs an overlay path")
    else:
        path_part, colon, suffix = rest.rpartition(":")
        if colon and suffix in _SUFFIX:
            rest, mode = path_part, _SUFFIX[suffix]
    if not rest:
        raise ConfigError(f"--disk {text!r}: no image path (syntax: [NAME=]PATH[:keep|:discard|:ro|:rw])")
    try:
        return DiskSpec(rest, name=name, mode=mode, overlay=overlay)
    except ConfigError as exc:
        raise ConfigError(f"--disk {text!r}: {exc}") from None
