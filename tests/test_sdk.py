"""The guest SDK: denali cc and denali new build guests outside the repository that boot.

The fast tests run ``python -m denali`` from this tree (PYTHONPATH) with a temporary
directory as the working directory, so only the package and its SDK data are used, the
way an installed package finds them. ``test_wheel_install_builds_a_guest`` builds a
real wheel from a copy of the sources, installs it into a throwaway venv, and builds
and boots a guest with nothing but that install.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from denali.errors import SdkError
from denali.sdk import SDK_DIR, cc, find_sdk
from denali.sdk.project import new_project

ROOT = Path(__file__).resolve().parent.parent
HELLO_C = r"""
#include <ilwaco.h>
#include <stdio.h>
#include <string.h>
int twice(int x);
int main(int argc, char **argv)
{
    printf("outside guest: argc=%d first=%s twice=%d vm=%u\n", argc, argc ? argv[0] : "-",
           twice(21), DENALI_VREGS->vm_id);
    return argc ? (int)strlen(argv[0]) : 9;
}
"""
TWICE_C = "int twice(int x) { return 2 * x; }\n"


def need_sdk() -> None:
    """Fail (never skip) when the SDK is not built into this tree."""
    try:
        find_sdk()
    except SdkError as exc:
        pytest.fail(f"{exc} (pip install -e '.[dev]' or make -C guestos OUT=$PWD/denali/images)")


def denali(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m denali ARGS`` from this tree, run in ``cwd``."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "denali", *args],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cc_compiles_links_and_the_guest_boots(tmp_path: Path) -> None:
    need_sdk()
    (tmp_path / "hello.c").write_text(HELLO_C)
    (tmp_path / "twice.c").write_text(TWICE_C)
    r = denali("cc", "-O2", "-Wall", "-Werror", "-c", "twice.c", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "twice.o").read_bytes()[:5] == b"\x7fELF\x01"  # an i386 object, not linked
    r = denali("cc", "-O2", "-Wall", "-Werror", "-o", "hello.elf", "hello.c", "twice.o", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = denali("boot", "./hello.elf", "--cmdline", "abcde fg", cwd=tmp_path)
    assert "outside guest: argc=2 first=abcde twice=42 vm=1" in r.stdout, r.stdout + r.stderr
    assert r.returncode == 5


def test_new_project_builds_with_make_and_boots(tmp_path: Path) -> None:
    need_sdk()
    assert shutil.which("make"), "make is not installed; run tools/install-test-deps.sh"
    r = denali("new", "demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["Makefile", "demo.c"]
    dnl = f"env PYTHONPATH={ROOT} {sys.executable} -m denali"
    m = subprocess.run(
        ["make", "-C", "demo", f"DENALI={dnl}"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert m.returncode == 0, m.stdout + m.stderr
    assert "-m denali cc -O2 -Wall -Wextra -o demo.elf demo.o" in m.stdout  # CC = $(DENALI) cc
    r = denali("boot", "demo/demo.elf", "--cmdline", "name=tester", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Hello, tester! This is demo, VM 1, with 16384 KiB of memory." in r.stdout
    assert "argv[0] = name=tester" in r.stdout and "slept " in r.stdout


def test_new_refuses_a_nonempty_directory_and_bad_names(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    for name, why in (
        ("taken", "not an empty directory"),
        ("9lives", "a project name"),
        ("a b", "a project name"),
    ):
        r = denali("new", name, cwd=tmp_path)
        assert r.returncode == 2 and why in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    empty = tmp_path / "empty"
    assert new_project(empty) == [empty / "empty.c", empty / "Makefile"]


def test_cc_checks_the_linked_image_with_the_loader(tmp_path: Path) -> None:
    need_sdk()
    (tmp_path / "hello.c").write_text(HELLO_C + TWICE_C)
    # moving text below 0x10000 links fine but no kernel would load it: say so now
    r = denali("cc", "-o", "low.elf", "hello.c", "-Wl,--section-start=.text=0x3000", cwd=tmp_path)
    assert r.returncode == 1
    assert "the kernel would refuse this image" in r.stderr and "outside the guest image area" in r.stderr


def test_gcc_default_link_address_is_refused_in_one_clear_line(tmp_path: Path) -> None:
    """A guest linked the way gcc links a Linux program (at 0x08048000) gets one line
    that says what is wrong and how to link it."""
    assert shutil.which("gcc"), "gcc is not installed; run tools/install-test-deps.sh"
    (tmp_path / "start.S").write_text(
        ".globl _start\n_start: movl $1, %eax\n movl $st, %ebx\n int $0x80\n.data\nst: .long 7, 0\n"
    )
    subprocess.run(
        ["gcc", "-m32", "-static", "-nostdlib", "-no-pie", "-o", "linux.elf", "start.S"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    r = denali("boot", "./linux.elf", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1, r.stderr
    assert "linked at 0x08048000 (gcc's default for Linux programs)" in r.stderr
    assert "link guests at 0x10000 with 'denali cc'" in r.stderr
    r = denali("boot", "./linux.elf", "--memory", "256M", cwd=tmp_path)  # valid, only wasteful
    assert r.returncode == 7, r.stderr


def test_missing_compiler_or_sdk_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.c").write_text("int main(void) { return 0; }\n")
    r = denali("cc", "-o", "x.elf", "x.c", cwd=tmp_path, env={"DENALI_CC": "/nonexistent/gcc"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "/nonexistent/gcc not found" in r.stderr
    with pytest.raises(SdkError, match="not built"):
        find_sdk(tmp_path)


def test_print_sdk_and_the_headers_it_ships() -> None:
    need_sdk()
    r = denali("cc", "--print-sdk", cwd=ROOT)
    assert r.returncode == 0 and Path(r.stdout.strip()) == SDK_DIR
    src = ROOT / "guestos" / "include"
    for h in src.rglob("*.h"):
        shipped = SDK_DIR / "include" / h.relative_to(src)
        assert shipped.read_bytes() == h.read_bytes(), f"{shipped} is stale: make -C guestos"


def test_command_line_shape() -> None:
    """Linking adds crt0, the linker script and the libraries; compiling only adds flags."""
    need_sdk()
    sdk = find_sdk()
    compile_only = cc.command(["-c", "a.c"], sdk, ["gcc"], "/inc")
    assert str(sdk.crt0) not in compile_only and compile_only[-2:] == ["-c", "a.c"]
    link = cc.command(["-o", "g.elf", "a.c", "-lm2"], sdk, ["gcc"], "/inc")
    assert link.index(str(sdk.crt0)) < link.index("a.c") < link.index("-lilwaco")
    assert f"-Wl,-T,{sdk.linker_script}" in link and "-nostdinc" in link and "-m32" in link
    assert not cc.links(["--version"]) and not cc.links(["-o", "x"]) and cc.links(["-o", "x", "y.o"])
    assert cc.output(["-ofoo", "a.c"]) == "foo" and cc.output(["a.c"]) == "a.out"
    assert cc.compiler({"DENALI_CC": "ccache gcc-12"}) == ["ccache", "gcc-12"]


def _copy_sources(dst: Path) -> None:
    """The files git tracks plus the working tree's changes: what a fresh clone would hold."""
    r = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    for rel in filter(None, r.stdout.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.mark.slow
def test_wheel_install_builds_a_guest(tmp_path: Path) -> None:
    """pip wheel, pip install into a venv, then denali new + make + denali boot elsewhere."""
    if importlib.util.find_spec("wheel") is None:  # pip's --no-build-isolation build needs it
        pytest.fail("the wheel package is not installed; pip install -e '.[dev]'")
    src, dist, env_dir, work = (tmp_path / d for d in ("src", "dist", "venv", "work"))
    for d in (src, work):
        d.mkdir()
    _copy_sources(src)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    [whl] = dist.glob("denali-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for f in (
        "denali/sdk/include/ilwaco.h",
        "denali/sdk/include/denali/abi.h",
        "denali/sdk/lib/crt0.o",
        "denali/sdk/lib/denali.ld",
        "denali/sdk/lib/libilwaco.a",
        "denali/sdk/lib/toolchain",
        "denali/images/hello.elf",
    ):
        assert f in names, f
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # The new venv sees the packages of the environment running the tests (denali's
    # dependencies, whether that is the system's Python or a venv) as plain paths: their
    # .pth files (this tree's editable install among them) are not processed there.
    [site_dir] = env_dir.glob("lib/python*/site-packages")
    outer = [*site.getsitepackages(), site.getusersitepackages()]
    (site_dir / "outer-env.pth").write_text("".join(f"{d}\n" for d in outer if os.path.isdir(d)))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(whl)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    r = subprocess.run(
        [str(py), "-c", "import denali; print(denali.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    where = r.stdout
    assert where.startswith(str(env_dir)), where  # the wheel, not this tree or another install
    for cmd in (["denali", "new", "hello"], ["make", "-C", "hello"]):
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        ["denali", "boot", "./hello/hello.elf"], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "Hello, world! This is hello" in r.stdout


def _doc_block(text: str, lang: str) -> str:
    start = text.index(f"```{lang}\n") + len(lang) + 4
    return text[start : text.index("```", start)]


def test_the_documented_bare_guest_builds_and_boots(tmp_path: Path) -> None:
    """docs/sdk.md's minimal start file and linker script, as written there."""
    doc = (ROOT / "docs" / "sdk.md").read_text()
    (tmp_path / "bare.S").write_text(_doc_block(doc, "asm"))
    (tmp_path / "guest.ld").write_text(_doc_block(doc, "ld"))
    for cmd in (
        ["gcc", "-m32", "-c", "bare.S", "-o", "bare.o"],
        [
            "ld",
            "-m",
            "elf_i386",
            "-T",
            "guest.ld",
            "-z",
            "max-page-size=4096",
            "--build-id=none",
            "-o",
            "bare.elf",
            "bare.o",
        ],
    ):
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    r = denali("boot", "./bare.elf", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "hello from a bare guest\n", "")
