"""The ABI is defined once: layouts are consistent and the C header is fresh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from denali import abi

ROOT = Path(__file__).resolve().parent.parent


def test_generated_header_is_fresh() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_abi.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_header_compiles_for_i386_and_layouts_match(tmp_path: Path) -> None:
    src = tmp_path / "t.c"
    src.write_text("#include <denali/abi.h>\nint x;\n")
    gcc = subprocess.run(["gcc", "-print-file-name=include"], capture_output=True, text=True).stdout.strip()
    r = subprocess.run(
        [
            "gcc",
            "-m32",
            "-ffreestanding",
            "-nostdinc",
            "-isystem",
            gcc,
            "-I",
            str(ROOT / "guestos" / "include"),
            "-Wall",
            "-Werror",
            "-c",
            str(src),
            "-o",
            str(tmp_path / "t.o"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr  # the header's _Static_asserts check every offset


def test_hypercall_numbers_unique_and_structs_aligned() -> None:
    nrs = [h.nr for h in abi.HYPERCALLS]
    assert len(nrs) == len(set(nrs))
    assert set(nrs) == {int(h) for h in abi.Hc}
    for h in abi.HYPERCALLS:
        assert h.args.size % 8 == 0
        assert h.args.codec().size == h.args.size


def test_vregs_fit_before_cmdline() -> None:
    assert abi.VREGS.size <= abi.CMDLINE_OFFSET
    assert abi.CMDLINE_OFFSET + abi.CMDLINE_MAX + 1 == abi.PAGE_SIZE


def test_stale_header_detected(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_abi
    finally:
        sys.path.pop(0)
    fake = tmp_path / "abi.h"
    good = gen_abi.render()
    stale = good.replace(f"DENALI_ABI_VERSION {abi.ABI_VERSION}", f"DENALI_ABI_VERSION {abi.ABI_VERSION - 1}")
    assert stale != good
    fake.write_text(stale)
    monkeypatch.setattr(gen_abi, "HEADER", fake)
    monkeypatch.setattr(gen_abi, "ROOT", tmp_path)
    assert gen_abi.main(["--check"]) == 1


def test_contract_document_covers_the_abi() -> None:
    doc = (ROOT / "docs" / "virtual-architecture.md").read_text()
    assert f"ABI version {abi.ABI_VERSION}" in doc
    for h in abi.HYPERCALLS:
        assert f"`{h.name.upper()}`" in doc and h.args.name in doc
    for r in abi.Result:
        assert f"`{r.name}`" in doc
    for i in abi.Irq:
        assert f"`{i.name}`" in doc
    for f in abi.VREGS.fields:
        assert f"`{f.name}`" in doc
