"""denali top: a frame that fits 80 and 160 columns with no cell cut, top's keys, a pluggable source."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest

from denali import metrics, top
from denali.endpoint import Endpoint
from denali.kernel import Kernel
from denali.top import View, fmt_bytes, fmt_count, fmt_ns, render
from tests.conftest import need_image

ROOT = Path(__file__).resolve().parent.parent


def _vm(vid: int, image: str, state: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": vid,
        "image": image,
        "state": state,
        "swapped": False,
        "pending": 0,
        "hypercalls": 0,
        "slices": 0,
        "cpu_ns": 0,
        "preemptions": 0,
        "idles": 0,
        "irqs_raised": 0,
        "irq_batches": 0,
        "irq_bits_delivered": 0,
        "console_bytes": 0,
        "cpu_pct": 0.0,
        "nic": None,
    }
    row.update(kw)
    return row


ROWS = [
    _vm(
        17,
        "httpd",
        "running",
        cpu_pct=99.6,
        cpu_ns=1_600_000_000,
        slices=123_456,
        hypercalls=12_345_678,
        irqs_raised=42,
        console_bytes=12 << 20,
        preemptions=5,
        idles=100_000,
        irq_batches=77,
        irq_bits_delivered=78,
        nic={"rx_frames": 1_234_567, "tx_frames": 9_876, "drops": 3},
    ),
    _vm(
        10000,
        "test-swapsum",
        "idle",
        swapped=True,
        cpu_ns=754_000,
        slices=9,
        console_bytes=1536,
        idles=9,
        nic={"rx_frames": 0, "tx_frames": 0, "drops": 0},
    ),
    _vm(
        3,
        "bench-alu",
        "runnable",
        cpu_pct=45.25,
        cpu_ns=725_000_000_000,
        slices=999_999,
        hypercalls=2_000_000_000,
        irqs_raised=10_000,
        console_bytes=999,
        preemptions=123_456_789,
    ),
]
"""Each VM's expected cell in every column, written out by hand."""
EXPECTED = [
    {
        "VM": "17",
        "NAME": "httpd",
        "STATE": "running",
        "CPU%": "99.6",
        "TIME": "1.6s",
        "SLICES": "123k",
        "HCALLS": "12.3M",
        "IRQS": "42",
        "RX": "1.2M",
        "TX": "9876",
        "CONS": "12M",
        "PREEMPT": "5",
        "IDLES": "100k",
        "BATCH": "77",
        "BITS": "78",
        "DROPS": "3",
    },
    {
        "VM": "10000",
        "NAME": "test-swapsum",
        "STATE": "swapped",
        "CPU%": "0.0",
        "TIME": "0.8ms",
        "SLICES": "9",
        "HCALLS": "0",
        "IRQS": "0",
        "RX": "0",
        "TX": "0",
        "CONS": "1.5K",
        "PREEMPT": "0",
        "IDLES": "9",
        "BATCH": "0",
        "BITS": "0",
        "DROPS": "0",
    },
    {
        "VM": "3",
        "NAME": "bench-alu",
        "STATE": "runnable",
        "CPU%": "45.2",
        "TIME": "12m05s",
        "SLICES": "1.0M",
        "HCALLS": "2.0G",
        "IRQS": "10.0k",
        "RX": "-",
        "TX": "-",
        "CONS": "999",
        "PREEMPT": "123M",
        "IDLES": "0",
        "BATCH": "0",
        "BITS": "0",
        "DROPS": "-",
    },
]
KERNEL = {
    "vms": 10000,
    "vm_states": {"idle": 9000, "running": 2, "runnable": 998},
    "cpu_switches": 123_456_789,
    "swap": {"swap_outs": 12_345, "swap_ins": 12_000},
    "switch": {"frames": 98_765_432},
}
SNAP = {"kernel": KERNEL, "vms": ROWS}


def test_units_are_short_and_exact_enough() -> None:
    assert [
        fmt_ns(n)
        for n in (
            400_000,
            320_000_000,
            1_600_000_000,
            59_900_000_000,
            725_000_000_000,
            3 * 3600 * 10**9 + 7 * 60 * 10**9,
            12 * 86400 * 10**9,
        )
    ] == ["0.4ms", "320ms", "1.6s", "59.9s", "12m05s", "3h07m", "12d00h"]
    assert [fmt_count(n) for n in (9999, 12_345, 123_456, 999_999, 45_600_000, 7_800_000_000)] == [
        "9999",
        "12.3k",
        "123k",
        "1.0M",
        "45.6M",
        "7.8G",
    ]
    assert [fmt_bytes(n) for n in (512, 1536, 12 << 10, 12 << 20, 3 << 30)] == [
        "512",
        "1.5K",
        "12K",
        "12M",
        "3.0G",
    ]
    for n in (0, 9, 99_999, 10**9 - 1, 10**12, 10**15 - 1):
        assert len(fmt_count(n)) <= 5 and len(fmt_bytes(n)) <= 5 and len(fmt_ns(n)) <= 6, n


def _table(lines: list[str], screen: top.Screen) -> tuple[list[str], list[list[str]]]:
    header = lines[screen.header].split()
    return header, [ln.split() for ln in lines[screen.header + 1 :]]


@pytest.mark.parametrize("width", [80, 160])
def test_every_cell_shown_is_whole_at_80_and_160_columns(width: int) -> None:
    screen = render(SNAP, width, View(sort="id"), label="127.0.0.1:9100")
    assert all(len(line) <= width for line in screen.lines), max(map(len, screen.lines))
    header, rows = _table(screen.lines, screen)
    assert header[:4] == ["VM", "NAME", "STATE", "CPU%"] and len(header) == len(screen.columns)
    by_id = {e["VM"]: e for e in EXPECTED}
    assert [r[0] for r in rows] == ["3", "17", "10000"]  # sorted by id
    for cells in rows:
        want = by_id[cells[0]]
        assert cells == [want[h] for h in header], (cells, want)
    text = "\n".join(screen.lines)
    assert "~" not in text and "…" not in text
    assert "10,000 VMs" in text and "swap out/in 12.3k/12.0k" in text and "q quit" in text
    if width == 80:
        assert header == [
            "VM",
            "NAME",
            "STATE",
            "CPU%",
            "TIME",
            "SLICES",
            "HCALLS",
            "IRQS",
            "RX",
            "TX",
            "CONS",
        ]
    else:
        assert header[-5:] == ["PREEMPT", "IDLES", "BATCH", "BITS", "DROPS"]


def test_narrow_terminals_drop_columns_not_digits() -> None:
    for width in (20, 40, 60):
        screen = render(SNAP, width)
        assert all(len(line) <= width for line in screen.lines), width
        header, rows = _table(screen.lines, screen)
        if width >= 40:
            for cells in rows:
                want = next(e for e in EXPECTED if e["VM"] == cells[0])
                assert cells == [want[h] for h in header]


def test_only_an_overlong_name_is_shortened_and_marked() -> None:
    long = _vm(5, "a-guest-image-with-a-very-long-name-indeed", "idle", cpu_ns=2_000_000_000)
    screen = render({"kernel": KERNEL, "vms": [*ROWS, long]}, 80)
    assert all(len(line) <= 80 for line in screen.lines)
    row = next(ln for ln in screen.lines if ln.lstrip().startswith("5 "))
    name = row.split()[1]
    assert name.endswith("~") and "a-guest-image-with-a-very-long-name-indeed".startswith(name[:-1])
    assert "2.0s" in row.split()
    assert "test-swapsum" in "\n".join(screen.lines)


def test_sort_keys_like_top() -> None:
    v = View()
    assert [r["id"] for r in top.sort_rows(ROWS, v)] == [17, 3, 10000]  # CPU%, highest first
    assert v.key("q") is None and v.key("\x03") is None
    t = v.key("T")
    assert t is not None and [r["id"] for r in top.sort_rows(ROWS, t)] == [3, 17, 10000]
    n = v.key("N")
    assert n is not None and [r["id"] for r in top.sort_rows(ROWS, n)] == [3, 17, 10000]
    rn = n.key("R")
    assert rn is not None and [r["id"] for r in top.sort_rows(ROWS, rn)] == [10000, 17, 3]
    shown = ["id", "name", "state", "cpu", "time"]
    assert v.key(">", shown) == View(sort="time") and v.key("<", shown) == View(sort="state")
    assert View(sort="id").key("<", shown) == View(sort="id")  # stops at the edge
    assert v.key("x") == v
    screen = render(SNAP, 80, View(sort="time"))
    head = screen.lines[screen.header]
    assert head[slice(*screen.sort_span)].strip() == "TIME"
    short = render(SNAP, 80, height=6)  # only the rows that fit the height
    assert len(short.lines) == 6 and [ln.split()[0] for ln in short.lines[short.header + 1 :]] == ["17", "3"]


class _Fixed:
    """A TopSource that serves a fixed snapshot (what a control-API source will look like)."""

    label = "fixed"

    def __init__(self) -> None:
        self.limits: list[int] = []

    async def snapshot(self, limit: int) -> dict[str, Any]:
        self.limits.append(limit)
        return SNAP


async def test_run_takes_any_source(capsys: pytest.CaptureFixture[str]) -> None:
    src = _Fixed()
    await top.run(src, once=True, width=80, limit=25)
    out = capsys.readouterr().out
    assert src.limits == [25]
    assert out.startswith("denali fixed  10,000 VMs") and "test-swapsum" in out
    assert all(len(line) <= 80 for line in out.splitlines())


async def _metrics_kernel() -> tuple[Kernel, Endpoint, int]:
    need_image("test-spin")
    k = Kernel()
    await k.__aenter__()
    await k.spawn("test-spin")
    await k.spawn("test-idle", cmdline="ms=100000")
    server = await metrics.serve(k, "127.0.0.1", 0)
    return k, server, server.port


async def test_cli_once_reads_a_real_kernel_at_80_columns() -> None:
    k, server, port = await _metrics_kernel()
    try:
        await asyncio.sleep(0.1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "denali",
            "top",
            f"127.0.0.1:{port}",
            "--once",
            "--width",
            "80",
            "--sort",
            "id",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await server.close()
        await k.__aexit__(None, None, None)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert all(len(line) <= 80 for line in lines)
    rows = [ln.split() for ln in lines if "test-" in ln]
    assert [r[1] for r in rows] == ["test-spin", "test-idle"]  # --sort id
    assert rows[0][2] in ("running", "runnable") and rows[1][2] == "idle"


def test_cli_errors_are_one_line() -> None:
    def top_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "denali", "top", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )

    bad = top_cli("127.0.0.1:99999", "--once")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    with_socket = __import__("socket").socket()
    with_socket.bind(("127.0.0.1", 0))
    port = with_socket.getsockname()[1]  # bound, never listening: connection refused
    try:
        gone = top_cli(f"127.0.0.1:{port}", "--once")
    finally:
        with_socket.close()
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1
    assert f"is a kernel running with --metrics 127.0.0.1:{port}?" in gone.stderr


async def test_live_screen_on_a_terminal_keys_and_quit() -> None:
    """On a real pseudo-terminal of 80x24: the frame fits, N re-sorts, q quits with 0."""
    k, server, port = await _metrics_kernel()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k_: v for k_, v in os.environ.items() if k_ not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "denali",
        "top",
        f"127.0.0.1:{port}",
        "--interval",
        "0.2",
        cwd=ROOT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()
    loop = asyncio.get_running_loop()
    got = asyncio.Event()

    def readable() -> None:
        try:
            seen.extend(os.read(master, 65536))
        except OSError:
            loop.remove_reader(master)
        got.set()

    loop.add_reader(master, readable)

    async def until(text: bytes) -> None:
        async with asyncio.timeout(20):
            while text not in seen:
                got.clear()
                await got.wait()

    try:
        await until(b"test-spin")
        await until(b"sort CPU% (high first)")
        os.write(master, b"N")
        await until(b"sort VM (low first)")
        os.write(master, b"q")
        status = await asyncio.wait_for(proc.wait(), 20)
    finally:
        loop.remove_reader(master)
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
        os.close(master)
        await server.close()
        await k.__aexit__(None, None, None)
    assert status == 0, bytes(seen)[-2000:]
    assert b"Traceback" not in seen
