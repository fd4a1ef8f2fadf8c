"""The denali command line, run as a real process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from denali.cli.signals import SHUTDOWN_GRACE_S
from tests.conftest import need_image

CMD = [sys.executable, "-m", "denali"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=timeout)


def test_boot_hello_prints_greeting_and_exits_zero() -> None:
    need_image("hello")
    r = run("boot", "hello")
    assert r.returncode == 0, r.stderr
    assert "Hello from denali!" in r.stdout


def test_a_plain_boot_loads_no_http_or_terminal_libraries() -> None:
    """aiohttp, prometheus_client and rich take ~0.25 s to import: a boot without --api,
    --metrics or a terminal display must not pay for them (also not in an error path)."""
    need_image("hello")
    code = (
        "import sys\n"
        "from denali.cli import main\n"
        "rc = main(['boot', 'hello', '-q'])\n"
        "print(sorted(m for m in ('aiohttp', 'prometheus_client', 'rich') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


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


BAD_VALUES = [
    ("boot", "hello", "--count", "x"),
    ("boot", "hello", "--slice-us", "fast"),
    ("boot", "hello", "--workers", "1.5"),
    ("boot", "hello", "--metrics", "127.0.0.1:99999"),
    ("boot", "hello", "--metrics", "127.0.0.1:http"),
    ("boot", "hello", "--metrics", "127.0.0.1"),
    ("boot", "hello", "--cmdline", "{ip:notanip}"),
    ("boot", "hello", "--cmdline", "ip={ip:10.0.0}"),
    ("boot", "hello", "--count", "99999999999"),
    ("boot", "hello", "--count", "100001"),
    ("boot", "hello", "--mac-tag", "256"),
    ("boot", "hello", "--nonsense"),
    ("boot", "hello", "--log-level", "loud"),
    ("--log-level", "loud", "images"),
    ("boot",),
    (),
    ("frobnicate",),
    ("top", "127.0.0.1:99999"),
    ("top", "127.0.0.1"),
    ("top", "127.0.0.1:9100", "--interval", "0"),
    ("top", "127.0.0.1:9100", "--interval", "soon"),
    ("disk",),
    ("disk", "frobnicate"),
    ("disk", "create", "{tmp}/x.img"),
    ("disk", "create", "{tmp}/x.img", "--size", "12Q"),
    ("disk", "create", "{tmp}/x.img", "--size", "1000"),
    ("disk", "create", "{tmp}/no-such-dir/x.img", "--size", "1M"),
    ("disk", "ls", "{tmp}/missing.img"),
    ("disk", "ls", "/etc/hostname"),
    ("disk", "ls", "{tmp}"),
    ("disk", "pack", "{tmp}/missing-dir", "{tmp}/x.img"),
    ("disk", "pack", "{tmp}", "{tmp}/x.img", "--label", "L" * 40),
]


@pytest.mark.parametrize("args", BAD_VALUES, ids=" ".join)
def test_every_bad_value_is_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    r = run(*(a.replace("{tmp}", str(tmp_path)) for a in args), timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("denali: "), r.stderr
    assert r.stdout == ""


def test_help_and_version() -> None:
    import denali

    for args in (("-h",), ("boot", "-h"), ("disk", "-h"), ("disk", "create", "-h"), ("top", "--help")):
        r = run(*args)
        assert r.returncode == 0 and r.stdout.startswith("usage: denali"), (args, r.stdout, r.stderr)
    v = run("--version")
    assert (v.returncode, v.stdout, v.stderr) == (0, f"denali {denali.__version__}\n", "")


@pytest.mark.parametrize("args", [("images",), ("disk", "ls", "{img}")])
def test_output_into_a_closed_pipe_is_no_traceback(tmp_path: Path, args: tuple[str, ...]) -> None:
    img = tmp_path / "big.img"
    assert run("disk", "create", str(img), "--size", "1M").returncode == 0
    p = subprocess.Popen(
        [*CMD, *(a.replace("{img}", str(img)) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # no reader left before it writes a byte: every write fails (EPIPE)
    err = p.stderr.read()
    p.wait(timeout=30)
    p.stderr.close()
    assert err == "", err


def test_logging_options() -> None:
    need_image("hello")
    assert run("boot", "hello").stderr == ""  # warning and above only, and there is none
    for args in (("-vv", "boot", "hello"), ("boot", "hello", "--log-level", "DEBUG")):
        r = run(*args)
        assert r.returncode == 0, r.stderr
        assert re.search(r"^denali: debug: denali\.loader: .*hello\.elf: entry 0x", r.stderr, re.M), r.stderr
    port = free_port()
    r = run("boot", "hello", "-v", "--metrics", f"127.0.0.1:{port}")
    assert f"denali: info: denali.metrics: serving metrics at http://127.0.0.1:{port}/metrics" in r.stderr
    assert "debug" not in r.stderr
    warned = run("boot", "hello", "--pcap", "/dev/full")  # every write fails
    assert "denali: warning: denali.net.pcap: capture to /dev/full failed" in warned.stderr
    quiet = run("-q", "boot", "hello", "--pcap", "/dev/full")
    assert quiet.returncode == 2
    assert quiet.stderr == "denali: writing pcap file /dev/full failed: [Errno 28] No space left on device\n"
    for args in (("-v", "disk", "ls", "/dev/null"), ("disk", "ls", "/dev/null", "-v"), ("images", "-q")):
        r = run(*args)
        assert r.returncode in (0, 2) and "unrecognized" not in r.stderr, (args, r.stderr)


def test_one_faulting_vm_of_several_makes_the_status_125() -> None:
    need_image("test-fault")
    r = run("boot", "test-fault", "--count", "3", "--cmdline", "kind=ud2 at=2 vm={i}")
    assert r.returncode == 125, r.stderr
    assert "[vm1] no fault here" in r.stdout and "[vm3] no fault here" in r.stdout
    assert r.stderr.count("faulted: invalid instruction") == 1, r.stderr
    others = run("boot", "test-exit", "--count", "2", "--cmdline", "status={i}")  # no fault: 1
    assert others.returncode == 1, others.stderr


def test_user_errors_are_one_line() -> None:
    for args in (
        ("boot", "no-such-image"),
        ("boot", "hello", "--memory", "12Q"),
        ("boot", "hello", "--count", "0"),
        ("boot", "/etc/passwd"),
    ):
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
    assert (
        r.stderr == f"denali: {fifo}: a FIFO, not a regular file: a disk image must be a "
        "regular file (see docs/disk-format.md)\n"
    )
    assert "Hello" not in r.stdout


def test_images_lists_what_users_boot_and_marks_the_rest() -> None:
    r = run("images")
    assert r.returncode == 0
    assert "hello" in r.stdout and "httpd" in r.stdout
    assert "test-fault" not in r.stdout and "denali images --all" in r.stdout
    r = run("images", "--all")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("hello") or lines[0].split()[0] in (
        "dbgmon",
        "hello",
        "httpd",
        "httpget",
        "secmon",
        "udpecho",
    )
    fault = next(line for line in lines if line.startswith("test-fault"))
    assert fault.endswith("(test guest)")
    assert any(line.startswith("bench-alu") and line.endswith("(benchmark guest)") for line in lines)


def test_ctrl_c_shuts_down_cleanly() -> None:
    need_image("test-spin")
    p = subprocess.Popen(
        [*CMD, "boot", "test-spin", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert p.stdout is not None
    deadline = time.monotonic() + 30
    seen = ""
    while "spinning" not in seen and time.monotonic() < deadline:
        seen += p.stdout.readline()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "Traceback" not in err


FIFO_OPEN = ("fifo_open", "wait_for_partner")
"""Kernel functions a thread opening a FIFO with no partner sleeps in (by kernel version)."""
PIPE_WRITE = ("pipe_write", "anon_pipe_write", "pipe_wait_writable")
"""... and a thread writing to a full pipe."""


@contextlib.contextmanager
def denali(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``denali ARGS`` as a process with stdout and stderr piped; killed if the test leaves early."""
    p = subprocess.Popen([*CMD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()


def blocked_in(pid: int, *functions: str) -> bool:
    """True when a thread of process ``pid``, or of a process it started (the kernels of
    a host of several), sleeps in one of these kernel functions."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    children: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/wchan") as f:
                if f.read().strip() in functions:
                    return True
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += map(int, f.read().split())
        except OSError:
            pass
    return any(blocked_in(c, *functions) for c in children)


def wait_until(cond: Callable[[], bool], p: subprocess.Popen[str], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert p.poll() is None, f"denali ended before {what}: {p.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stopped_by(p: subprocess.Popen[str], sig: int, within: float) -> tuple[int, str, float]:
    """Send ``sig``; (status, stderr, seconds until it ended). Kills it if it does not end."""
    t0 = time.monotonic()
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"denali did not stop within {within} s of signal {sig}") from None
    return p.returncode, err, time.monotonic() - t0


def test_sigterm_shuts_down_cleanly() -> None:
    need_image("test-spin")
    with denali("boot", "test-spin", "--count", "2") as p:
        assert p.stdout is not None
        assert "spinning" in p.stdout.readline()
        status, err, _ = stopped_by(p, signal.SIGTERM, 30)
    assert status == 130 and err == "", err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_boot_stuck_opening_a_capture_fifo(tmp_path: Path, sig: int) -> None:
    """The pcap file is a FIFO nobody reads: opening it blocks a thread for ever."""
    need_image("hello")
    fifo = tmp_path / "lan.pcap"
    os.mkfifo(fifo)
    with denali("boot", "hello", "--pcap", str(fifo)) as p:
        wait_until(lambda: blocked_in(p.pid, *FIFO_OPEN), p, "the capture's open to block")
        status, err, took = stopped_by(p, sig, 10)
    assert status == 130, err
    assert "Traceback" not in err and took < 3, (took, err)


@contextlib.contextmanager
def capture_nobody_reads(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Three VMs ping on a LAN captured to a FIFO whose reader never reads: once the pipe
    is full the capture's writes block, and so would a clean shutdown (it flushes them)."""
    need_image("test-netudp")
    fifo = tmp_path / "lan.pcap"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with denali(
            "boot",
            "test-netudp",
            "--count",
            "3",
            "--pcap",
            str(fifo),
            "--cmdline",
            "ip=10.0.0.{i}/24 dst=10.0.0.1 ping=1 count=100000",
        ) as p:
            wait_until(lambda: blocked_in(p.pid, *PIPE_WRITE), p, "the capture's writes to block")
            yield p
    finally:
        os.close(reader)


def test_a_shutdown_that_cannot_finish_ends_after_the_grace_period(tmp_path: Path) -> None:
    """... and the same signal twice at once (timeout(1) signals its child, then the child's
    process group) is one request: it does not cut the grace period short."""
    with capture_nobody_reads(tmp_path) as p:
        p.send_signal(signal.SIGINT)
        time.sleep(0.05)  # the echo comes a moment later, as the signal thread handles the first
        status, err, took = stopped_by(p, signal.SIGINT, SHUTDOWN_GRACE_S + 10)
    assert status == 130, err
    assert err.endswith(
        f"denali: shutdown did not finish within {SHUTDOWN_GRACE_S:g} s; stopped without it\n"
    ), err
    assert "Traceback" not in err and SHUTDOWN_GRACE_S - 0.5 < took < SHUTDOWN_GRACE_S + 5, took


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    with capture_nobody_reads(tmp_path) as p:
        p.send_signal(signal.SIGINT)  # starts a shutdown that cannot finish
        status, err, took = stopped_by(p, signal.SIGTERM, 5)
    assert status == 130 and took < 2, (took, err)
    assert err.endswith("denali: stopped at once (second signal)\n"), err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def console_bytes(port: int) -> int:
    """Console bytes the guests wrote, from the kernel's metrics endpoint (5 s at most)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/vms.json", timeout=5) as r:
        return sum(vm["console_bytes"] for vm in json.load(r)["vms"])


def test_a_boot_whose_stdout_nobody_reads_keeps_running() -> None:
    """Two VMs flood a stdout pipe that is never read: the loop keeps serving metrics, the
    guests keep printing and end, the output beyond the bound is dropped and counted."""
    need_image("test-print")
    port = free_port()
    with denali(
        "boot", "test-print", "--count", "2", "--cmdline", "lines=100000", "--metrics", f"127.0.0.1:{port}"
    ) as p:
        wait_until(lambda: blocked_in(p.pid, *PIPE_WRITE), p, "stdout to fill up")
        first = console_bytes(port)
        wait_until(lambda: console_bytes(port) > first, p, "the guests to print more")
        assert p.stderr is not None
        err = p.stderr.read()  # to its end: denali exits without anyone reading stdout
        assert p.wait(timeout=60) == 0, err
    assert re.fullmatch(
        r"denali: [\d,]+ bytes of console output dropped "
        r"\(stdout was not read fast enough\)\n",
        err,
    ), err


def test_a_signal_stops_a_boot_whose_stdout_is_full() -> None:
    need_image("test-print")
    with denali("boot", "test-print", "--cmdline", "lines=100000000") as p:
        wait_until(lambda: blocked_in(p.pid, *PIPE_WRITE), p, "stdout to fill up")
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        status = p.wait(timeout=10)  # stdout still unread
        took = time.monotonic() - t0
        assert p.stderr is not None
        err = p.stderr.read()
    assert status == 130 and took < 3, (took, err)
    assert re.fullmatch(
        r"denali: [\d,]+ bytes of console output dropped "
        r"\(stdout was not read fast enough\)\n",
        err,
    ), err


def test_a_boot_whose_stdout_is_closed_runs_to_its_end() -> None:
    need_image("test-print")
    p = subprocess.Popen(
        [*CMD, "boot", "test-print", "--cmdline", "lines=20000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # like "| head -0": every write fails (EPIPE)
    err = p.stderr.read()
    assert p.wait(timeout=60) == 0, err
    p.stderr.close()
    every_byte = 20000 * len(f"line {1:10d} of the flood {'.' * 37}\n") + len("printed 20000 lines\n")
    assert err == f"denali: {every_byte:,} bytes of console output dropped (stdout was closed)\n", err


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
