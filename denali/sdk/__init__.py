"""The guest SDK: what a guest written outside this repository is built with.

The install step (``setup.py`` -> ``make -C guestos sdk``) puts into this package:

- ``include/``: the guestos headers (``ilwaco.h``, the libc subset, ``denali/abi.h``,
  ``net/``, ``fs/``);
- ``lib/``: the guestos libraries built for i386 (``libilwaco.a``, ``libnet.a``,
  ``libfs.a``), the start code ``crt0.o`` (``_start``), the linker script ``denali.ld``
  (the link map every built-in image uses), and ``toolchain``, the compiler and linker
  flags the libraries were built with.

``find_sdk()`` locates and checks them; ``denali.sdk.cc`` turns a gcc command line into
one that builds a guest (``denali cc``); ``denali.sdk.project`` writes a new guest
project (``denali new``). See ``docs/sdk.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from denali.errors import SdkError

SDK_DIR: Final = Path(__file__).resolve().parent
"""Where the install step puts the SDK (this package's directory)."""


@dataclass(frozen=True)
class Sdk:
    """An SDK found on disk: its directories and the flags recorded by its build."""

    root: Path
    cflags: tuple[str, ...]
    """Compiler flags every guest object is built with (target, freestanding, no PIC)."""
    ldflags: tuple[str, ...]
    """Linker flags (for ld itself) every guest image is linked with."""
    libs: tuple[str, ...]
    """Library names (``ilwaco``, ``net``, ``fs``): ``-l`` each, in one group."""

    @property
    def include(self) -> Path:
        return self.root / "include"

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def crt0(self) -> Path:
        return self.lib / "crt0.o"

    @property
    def linker_script(self) -> Path:
        return self.lib / "denali.ld"


def find_sdk(root: Path = SDK_DIR) -> Sdk:
    """The SDK under ``root``; ``SdkError`` (one line) when it is missing or incomplete."""
    toolchain = root / "lib" / "toolchain"
    try:
        text = toolchain.read_text()
    except OSError:
        raise SdkError(
            f"the guest SDK is not built ({toolchain} is missing): reinstall denali "
            "(pip install .), or in a source tree run make -C guestos"
        ) from None
    fields: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = tuple(value.split())
    missing = [k for k in ("cflags", "ldflags", "libs") if k not in fields]
    if missing:
        raise SdkError(f"{toolchain}: malformed, no {', '.join(missing)} (reinstall denali)")
    sdk = Sdk(root, fields["cflags"], fields["ldflags"], fields["libs"])
    need = [
        sdk.crt0,
        sdk.linker_script,
        sdk.include / "ilwaco.h",
        *(sdk.lib / f"lib{name}.a" for name in sdk.libs),
    ]
    absent = [str(p) for p in need if not p.is_file()]
    if absent:
        raise SdkError(f"the guest SDK is incomplete ({absent[0]} is missing): reinstall denali")
    return sdk
