"""The ELF loader accepts well-formed i386 images and refuses every malformed one clearly."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from denali import abi
from denali.errors import ImageError
from denali.loader import load_image, load_linux_program, parse_image
from denali.memory import PROT_R, PROT_RW, PROT_RX
from tests.elfmaker import PF_R, PF_W, PF_X, Elf, Seg


def test_valid_image_segments_and_permissions() -> None:
    elf = Elf(
        segments=[
            Seg(0x10000, b"\x90" * 10, PF_R | PF_X),
            Seg(0x11000, b"ro", PF_R),
            Seg(0x12000, b"rw", PF_R | PF_W, memsz=0x3000),
        ]
    )
    img = parse_image(elf.build(), "t.elf")
    assert img.entry == 0x10000
    assert [s.prot for s in img.segments] == [PROT_RX, PROT_R, PROT_RW]
    assert img.end == 0x15000
    img.check_fits(abi.DEFAULT_MEMORY)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"", "not an ELF"),
        (lambda b: b"MZ" + b[2:], "not an ELF"),
        (lambda b: b[:4] + b"\x02" + b[5:], "ELFCLASS32"),
        (lambda b: b[:5] + b"\x02" + b[6:], "little-endian"),
        (lambda b: b[:40], "truncated"),
        (lambda b: b[:0x1004], "truncated"),
    ],
)
def test_malformed_files(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageError, match=message):
        parse_image(mutate(Elf().build()), "bad.elf")


def test_wrong_machine() -> None:
    with pytest.raises(ImageError, match="EM_386"):
        parse_image(Elf(machine=62).build(), "x86_64.elf")


def test_not_executable_type() -> None:
    with pytest.raises(ImageError, match="ET_EXEC"):
        parse_image(Elf(etype=3).build(), "pie.elf")


def test_writable_and_executable_segment_refused() -> None:
    elf = Elf(segments=[Seg(0x10000, b"\x90", PF_R | PF_W | PF_X)])
    with pytest.raises(ImageError, match="writable and executable"):
        parse_image(elf.build(), "wx.elf")


@pytest.mark.parametrize("vaddr", [0x0, 0x1000, 0x2000, 0xC000_0000, 0xFFFF_F000])
def test_segment_outside_image_area(vaddr: int) -> None:
    elf = Elf(entry=vaddr, segments=[Seg(vaddr, b"\x90", PF_R | PF_X)])
    with pytest.raises(ImageError, match="outside the guest image area"):
        parse_image(elf.build(), "low.elf")


def test_segments_sharing_a_page_refused() -> None:
    elf = Elf(segments=[Seg(0x10000, b"\x90" * 8, PF_R | PF_X), Seg(0x10800, b"d", PF_R | PF_W)])
    with pytest.raises(ImageError, match="shares a page"):
        parse_image(elf.build(), "mixed.elf")


def test_entry_must_be_executable() -> None:
    elf = Elf(entry=0x11000, segments=[Seg(0x10000, b"\x90", PF_R | PF_X), Seg(0x11000, b"d", PF_R)])
    with pytest.raises(ImageError, match="entry point"):
        parse_image(elf.build(), "entry.elf")


def test_image_too_large_for_memory() -> None:
    elf = Elf(segments=[Seg(0x10000, b"\x90", PF_R | PF_X), Seg(0x11000, b"", PF_R | PF_W, memsz=8 << 20)])
    img = parse_image(elf.build(), "big.elf")
    with pytest.raises(ImageError, match="needs at least"):
        img.check_fits(4 << 20)


def test_linked_at_the_linux_default_says_how_to_link() -> None:
    elf = Elf(
        entry=0x08049000, segments=[Seg(0x08048000, b"hdr", PF_R), Seg(0x08049000, b"\x90", PF_R | PF_X)]
    )
    img = parse_image(elf.build(), "linux.elf")
    with pytest.raises(ImageError) as info:
        img.check_fits(abi.DEFAULT_MEMORY)
    msg = str(info.value)
    assert "linked at 0x08048000 (gcc's default for Linux programs)" in msg and "\n" not in msg
    assert "the VM has 16 MiB: link guests at 0x10000 with 'denali cc'" in msg
    img.check_fits(256 << 20)  # valid where it fits: only the memory it wastes is the problem


def test_filesz_larger_than_memsz() -> None:
    elf = Elf(segments=[Seg(0x10000, b"\x90" * 64, PF_R | PF_X, memsz=16)])
    with pytest.raises(ImageError, match="filesz > memsz"):
        parse_image(elf.build(), "sz.elf")


def test_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageError, match="cannot read"):
        load_image(str(tmp_path / "nope.elf"))


def test_random_garbage_never_crashes() -> None:
    import random

    rng = random.Random(7)
    good = Elf().build()
    for _ in range(300):
        b = bytearray(good)
        for _ in range(rng.randint(1, 12)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        try:
            parse_image(bytes(b), "fuzz.elf")
        except ImageError:
            pass


@pytest.mark.parametrize("kind", ["fifo", "char-device", "directory"])
def test_an_image_that_is_not_a_regular_file_is_refused_before_it_is_opened(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"{kind}.elf"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "char-device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
    else:
        path.mkdir()
    result: list[BaseException] = []

    def load() -> None:
        try:
            load_image(str(path))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=load)
    t.start()
    t.join(timeout=5)
    if t.is_alive():  # stuck opening the FIFO: give it a writer so the thread ends
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        t.join()
        pytest.fail("load_image blocked on a FIFO")
    assert len(result) == 1 and isinstance(result[0], ImageError), result
    assert str(result[0]) == f"{path}: not a regular file (an image must be an ELF file)"


def test_linux_programs_dynamic_pie_and_64_bit_are_refused(tmp_path: Path) -> None:
    """denali.loader.parse_linux_program: one clear error per kind of program it refuses."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing; run tools/install-test-deps.sh")
    src = tmp_path / "p.c"
    src.write_text("int main(void) { return 0; }\n")
    cases = {
        "-m32 -no-pie": "dynamically linked",
        "-m32 -static-pie": "position-independent",
        "-m64 -static": "ELFCLASS32",
        "-m32 -static": None,
    }
    for flags, err in cases.items():
        exe = tmp_path / flags.replace(" ", "_")
        subprocess.run(["gcc", *flags.split(), "-o", str(exe), str(src)], check=True, capture_output=True)
        if err is None:
            prog = load_linux_program(str(exe))
            assert prog.phdr and prog.entry and prog.tls is not None
            assert [s.prot for s in prog.segments] == [1, 5, 1, 3]  # R, R-X, R, RW
        else:
            with pytest.raises(ImageError, match=err):
                load_linux_program(str(exe))
