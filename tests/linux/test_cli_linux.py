"""``denali linux`` end to end: a subprocess of the CLI, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.linux.helpers import build_prog, make_tree, need_busybox, pack


@pytest.fixture(scope="module")
def misc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_prog("misc", tmp_path_factory.mktemp("cliprogs"))


def denali(*args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "denali", "linux", *args], input=stdin, capture_output=True, timeout=timeout
    )


def test_stdin_stdout_stderr_and_status(misc: Path) -> None:
    r = denali(str(misc), "stdin", stdin=b"abc\n" * 1000)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"abc\n" * 1000, b"read 4000 bytes\n")
    r = denali(str(misc), "exit", "9")
    assert r.returncode == 9


def test_stdin_from_a_file_and_env_and_count(misc: Path, tmp_path: Path) -> None:
    f = tmp_path / "in.txt"
    f.write_bytes(b"payload")
    r = denali("--count", "2", "--stdin", str(f), str(misc), "stdin")
    assert r.returncode == 0
    assert sorted(r.stdout.splitlines()) == [b"[vm1] payload", b"[vm2] payload"]
    assert sorted(r.stderr.splitlines()) == [b"[vm1] read 7 bytes", b"[vm2] read 7 bytes"]
    r = denali("--env", "X=1", "--env", "Y=two", str(misc), "args", "{i}")
    assert b"argv[2]=1\nenv X=1\nenv Y=two\n" in r.stdout


def test_busybox_on_a_disk_with_cwd(tmp_path: Path) -> None:
    busybox = need_busybox()
    make_tree(tmp_path / "tree")
    img = pack(tmp_path / "tree", tmp_path / "t.img")
    r = denali("--disk", f"root={img}", "--cwd", "/dir", str(busybox), "ls", "sub")
    assert (r.returncode, r.stdout) == (0, b"c.txt\ndeep\n"), r.stderr
    r = denali("--disk", str(img), str(busybox), "cat", "/nope")
    assert r.returncode == 1 and r.stderr == b"cat: can't open '/nope': No such file or directory\n"


def test_report_and_trace(misc: Path) -> None:
    r = denali("--report", str(misc), "fork")
    assert r.returncode == 0 and b"denali-linux: enosys execve (11) x1" in r.stderr
    r = denali("--trace", str(misc), "exit", "0")
    assert b"[lx] brk(45)" in r.stderr


def test_bad_program_is_one_clear_line(tmp_path: Path) -> None:
    r = denali(str(tmp_path / "missing"))
    assert r.returncode == 2
    assert r.stderr.decode().count("\n") == 1 and "missing" in r.stderr.decode()
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    r = denali(str(script))
    assert r.returncode == 2 and r.stderr == f"denali: {script}: not an ELF file\n".encode()
    r = denali("--count", "0", str(script))
    assert r.returncode == 2
    r = denali("--cwd", "/nowhere", str(script))
    assert r.returncode == 2  # not an ELF file comes first


def test_a_missing_working_directory_is_status_127(misc: Path) -> None:
    r = denali("--cwd", "/nowhere", str(misc), "exit", "0")
    assert (r.returncode, r.stderr) == (127, b"denali-linux: cannot change to directory /nowhere\n")


def test_a_fault_is_reported_with_status_125(misc: Path) -> None:
    r = denali(str(misc), "segv")
    assert r.returncode == 125
    assert r.stdout == b"about to fault\n"
    assert b"null pointer" in r.stderr and b"Traceback" not in r.stderr


def test_a_forbidden_instruction_faults_even_before_a_system_call(misc: Path) -> None:
    """The fault wins over the routed exit_group(0) right after it: status 125, the
    report on stderr (the interrupt hook routes no call once a fault is recorded)."""
    r = denali(str(misc), "inport")
    assert r.returncode == 125, r.stderr
    assert r.stdout == b"about to fault\n"
    assert b"in" in r.stderr and b"Traceback" not in r.stderr
