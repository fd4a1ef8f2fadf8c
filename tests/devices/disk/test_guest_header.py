"""The disk constants in the generated abi.h agree with denali/abi.py; the fs headers compile alone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from denali import abi

ROOT = Path(__file__).resolve().parents[3]
HEADER = ROOT / "guestos/include/denali/abi.h"


def test_disk_constants_match_the_abi() -> None:
    found = dict(re.findall(r"#define DENALI_(DISK_\w+) (\w+)", HEADER.read_text()))
    want = {
        name: getattr(abi, name)
        for name in (
            "DISK_BLOCK_SIZE",
            "DISK_MAX_BLOCKS",
            "DISK_QUEUE",
            "DISK_NAME_MAX",
            "DISK_MAX_DISKS",
            "DISK_PENDING",
            "DISK_F_READONLY",
        )
    }
    assert {k: int(v.rstrip("u"), 0) for k, v in found.items()} == want


def test_headers_compile_alone(tmp_path: Path) -> None:
    inc = subprocess.run(["gcc", "-print-file-name=include"], capture_output=True, text=True).stdout.strip()
    for header in ("fs/disk.h", "fs/fs.h"):
        src = tmp_path / "t.c"
        src.write_text(f"#include <{header}>\nint x;\n")
        r = subprocess.run(
            [
                "gcc",
                "-m32",
                "-ffreestanding",
                "-nostdinc",
                "-isystem",
                inc,
                "-std=gnu11",
                "-I",
                str(ROOT / "guestos/include"),
                "-Wall",
                "-Wextra",
                "-Werror",
                "-c",
                str(src),
                "-o",
                str(tmp_path / "t.o"),
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
