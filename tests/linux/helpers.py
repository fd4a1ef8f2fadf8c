"""What the Linux-personality tests share: the programs nobody here wrote (Debian's
busybox-static for i386, from tools/install-test-deps.sh), qemu-i386 as the reference,
static glibc test programs built from tests/linux/progs/, and a packed test tree."""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("DENALI_TEST_CACHE", Path.home() / ".cache" / "denali-test"))
BUSYBOX = CACHE / "busybox-i386" / "bin" / "busybox"
MTIME = 1_700_000_000
"""Every file of the test tree has this modification time (both sides see the same)."""
ENV = {"HOME": "/", "LANG": "C", "TZ": "UTC"}


def need_busybox() -> Path:
    """Fail (never skip): the install step must have fetched it."""
    if not BUSYBOX.is_file():
        pytest.fail(f"{BUSYBOX} is missing; run tools/install-test-deps.sh")
    return BUSYBOX


def need_qemu() -> str:
    q = shutil.which("qemu-i386")
    if q is None:
        pytest.fail("qemu-i386 is missing; run tools/install-test-deps.sh")
    return q


def build_prog(name: str, out_dir: Path) -> Path:
    """Compile tests/linux/progs/NAME.c with gcc -m32 -static (glibc for i386)."""
    out = out_dir / name
    if not out.exists():
        r = subprocess.run(
            [
                "gcc",
                "-m32",
                "-static",
                "-O1",
                "-D_FILE_OFFSET_BITS=64",
                "-o",
                str(out),
                str(HERE / "progs" / f"{name}.c"),
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode:
            pytest.fail(f"cannot build {name} (gcc -m32 -static; run tools/install-test-deps.sh): {r.stderr}")
    return out


def make_tree(root: Path) -> None:
    """A deterministic tree of text, numbers, binary data, an archive and a gzip file."""
    rnd = random.Random(18)
    words = [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
        "mike",
        "foo",
        "bar",
        "foobar",
    ]
    root.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(rnd.choice(words) for _ in range(rnd.randint(1, 6))) for _ in range(400)]
    (root / "words.txt").write_text("\n".join(lines) + "\n")
    (root / "sorted.txt").write_text("\n".join(sorted(lines)) + "\n")
    (root / "nums.txt").write_text("".join(f"{rnd.randint(-1000, 100000)}\n" for _ in range(300)))
    (root / "colon.txt").write_text(
        "".join(f"{rnd.choice(words)}:{i}:{rnd.random():.4f}\n" for i in range(50))
    )
    (root / "data.bin").write_bytes(rnd.randbytes(100_000))
    (root / "small.bin").write_bytes(rnd.randbytes(100))
    for d in ("dir/sub", "dir/other", "dir/sub/deep"):
        (root / d).mkdir(parents=True, exist_ok=True)
    files = ("dir/a.txt", "dir/b.log", "dir/sub/c.txt", "dir/sub/deep/d.txt", "dir/other/e.bin")
    for i, p in enumerate(files):
        (root / p).write_text(f"file {i}\n" * (i + 1))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("pkg/readme.txt", b"read me\n"), ("pkg/lib/code.c", b"int x;\n" * 20)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = MTIME
            ti.mode = 0o644
            ti.uname = ti.gname = "root"
            tar.addfile(ti, io.BytesIO(data))
    (root / "archive.tar").write_bytes(buf.getvalue())
    (root / "words.gz").write_bytes(gzip.compress((root / "words.txt").read_bytes(), mtime=MTIME))
    for p in root.rglob("*"):
        os.utime(p, (MTIME, MTIME))


def pack(tree: Path, image: Path, size: str = "32M") -> Path:
    r = subprocess.run(
        [sys.executable, "-m", "denali", "disk", "pack", str(tree), str(image), "--size", size],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return image


@dataclass
class Run:
    status: int
    stdout: bytes
    stderr: bytes


def qemu_run(
    qemu: str, prog: Path, argv: list[str], cwd: Path, stdin: bytes = b"", env: dict[str, str] | None = None
) -> Run:
    """The same program under qemu-i386 in ``cwd`` (argv[0] kept as given)."""
    r = subprocess.run(
        [qemu, "-0", argv[0], str(prog), *argv[1:]],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=env if env is not None else ENV,
        timeout=120,
    )
    return Run(r.returncode, r.stdout, r.stderr)
