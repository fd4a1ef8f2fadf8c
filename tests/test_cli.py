"""The denali command line, run as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import need_image

CMD = [sys.executable, "-m", "denali"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=timeout)


def test_boot_hello_prints_greeting_and_exits_zero() -> None:
    need_image("hello")
    r = run("boot", "hello")
    assert r.returncode == 0, r.stderr
    assert "Hello from denali!" in r.stdout


def test_exit_status_is_the_guests() -> None:
    need_image("test-exit")
    assert run("boot", "test-exit", "--cmdline", "status=7").returncode == 7


def test_many_vms_prefixed_and_indexed() -> None:
    need_image("test-cmdline")
    r = run("boot", "test-cmdline", "--count", "3", "--cmdline", "key=vm{i}")
    assert r.returncode == 0, r.stderr
    for i in (1, 2, 3):
        assert f"[vm{i}] key=vm{i}" in r.stdout


def test_fault_report_and_status() -> None:
    need_image("test-fault")
    r = run("boot", "test-fault", "--cmdline", "kind=null-write")
    assert r.returncode == 125
    assert "access to page 0" in r.stderr and "registers:" in r.stderr
    assert "Traceback" not in r.stderr


def test_one_faulting_vm_of_several_makes_the_status_125() -> None:
    need_image("test-fault")
    r = run("boot", "test-fault", "--count", "3", "--cmdline", "kind=ud2 at=2 vm={i}")
    assert r.returncode == 125, r.stderr
    assert "[vm1] no fault here" in r.stdout and "[vm3] no fault here" in r.stdout
    assert r.stderr.count("faulted: invalid instruction") == 1, r.stderr
    others = run("boot", "test-exit", "--count", "2", "--cmdline", "status={i}")  # no fault: 1
    assert others.returncode == 1, others.stderr


def test_user_errors_are_one_line() -> None:
    for args in (("boot", "no-such-image"), ("boot", "hello", "--memory", "12Q"),
                 ("boot", "hello", "--count", "0"), ("boot", "/etc/passwd")):
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("denali: "), r.stderr
        assert "Traceback" not in r.stderr


def test_a_disk_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    need_image("hello")
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    try:
        r = run("boot", "hello", "--disk", f"{fifo}:ro", timeout=20)
    finally:
        os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))  # lets a stuck open return
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"denali: {fifo}: a FIFO, not a regular file: a disk image must be a " \
                       "regular file (see docs/disk-format.md)\n"
    assert "Hello" not in r.stdout


def test_images_lists_builtins() -> None:
    r = run("images")
    assert r.returncode == 0
    assert "hello" in r.stdout and "test-fault" in r.stdout


def test_ctrl_c_shuts_down_cleanly() -> None:
    need_image("test-spin")
    p = subprocess.Popen([*CMD, "boot", "test-spin", "--count", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.stdout is not None
    deadline = time.monotonic() + 30
    seen = ""
    while "spinning" not in seen and time.monotonic() < deadline:
        seen += p.stdout.readline()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "Traceback" not in err


def test_progress_of_a_long_boot_goes_to_stderr() -> None:
    need_image("test-idle")
    r = run("boot", "test-idle", "--count", "150", "--progress", "--cmdline", "ms=1")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("denali: spawned")]
    assert lines and "spawned 150/150, started 150/150" in lines[-1], r.stderr
    assert "spawned" not in r.stdout  # consoles stay clean
    quiet = run("boot", "test-idle", "--count", "150", "--cmdline", "ms=1")  # not a terminal
    assert quiet.returncode == 0 and "spawned" not in quiet.stderr


def test_cmdline_ip_field_counts_from_a_base_address() -> None:
    need_image("test-cmdline")
    r = run("boot", "test-cmdline", "--count", "3", "--cmdline", "key={ip:10.64.0.254}")
    assert r.returncode == 0, r.stderr
    for i, addr in ((1, "10.64.0.255"), (2, "10.64.1.0"), (3, "10.64.1.1")):
        assert f"[vm{i}] key={addr}" in r.stdout
    bad = run("boot", "test-cmdline", "--cmdline", "key={ip:255.255.255.255}")
    assert bad.returncode == 2 and "not a base address" in bad.stderr
