"""The tracer: JSON lines with the documented schema, kinds filtered, a bounded buffer
whose drops are counted, an I/O error that costs the trace but never the VM, the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from denali import abi
from denali.errors import ConfigError, GuestFault, VmKilledError
from denali.kernel import Kernel
from denali.monitor import HypercallEvent, Monitor
from denali.monitor.tracer import TRACE_KINDS, Tracer, TraceWriter, parse_kinds
from tests.conftest import need_image

CMD = [sys.executable, "-m", "denali"]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_schema(recs: list[dict[str, Any]]) -> None:
    """Every line as docs/monitors.md says."""
    assert recs[0]["kind"] == "trace" and recs[0]["schema"] == 1
    assert recs[-1]["kind"] == "end" and recs[-1]["records"] == len(recs) - 1
    for r in recs[1:-1]:
        assert r["kind"] in TRACE_KINDS and isinstance(r["t"], int) and isinstance(r["vm"], int)
        if r["kind"] == "hypercall":
            assert set(r) == {"kind", "t", "vm", "nr", "name", "args", "result", "code", "out"}
            if r["name"] is not None:
                assert abi.HYPERCALL_BY_NR[r["nr"]].name == r["name"]
        elif r["kind"] == "interrupt":
            assert r["bits"] and r["irqs"]
        elif r["kind"] in ("frame_out", "frame_in"):
            assert 60 <= r["len"] <= 1514 and len(r["dst"]) == 17 and r["type"].startswith("0x")
        elif r["kind"] == "fault":
            assert {"fault", "eip", "address", "access", "vector", "summary"} <= set(r)
        elif r["kind"] == "disk":
            assert r["op"] in ("read", "write", "flush")


def test_kinds_parse() -> None:
    assert parse_kinds("hypercall, fault") == {"hypercall", "fault"}
    assert parse_kinds("frame") == {"frame_out", "frame_in"}
    assert parse_kinds("all") == set(TRACE_KINDS)
    for bad in ("", "hypercall,nope", ","):
        with pytest.raises(ConfigError):
            parse_kinds(bad)


async def test_hello_traced_with_decoded_arguments(kernel: Kernel, tmp_path: Path) -> None:
    need_image("test-exit")
    path = tmp_path / "t.jsonl"
    async with TraceWriter(path) as w:
        vm = await kernel.spawn("test-exit", cmdline="status=4", monitors=[Tracer(w)])
        assert await vm.wait() == 4
    recs = lines(path)
    check_schema(recs)
    hcs = [r for r in recs if r["kind"] == "hypercall"]
    write = next(r for r in hcs if r["name"] == "console_write")
    assert write["args"]["len"] == len("exiting with 4\n") and write["code"] == "OK" and write["result"] == 0
    assert hcs[-1]["name"] == "terminate" and hcs[-1]["args"] == {"status": 4} and hcs[-1]["result"] is None
    assert all(r["vm"] == vm.id for r in hcs)
    ts = [r["t"] for r in recs[1:-1]]
    assert ts == sorted(ts)


class Misdirect(Monitor):
    """Points the first ``n`` CLOCK calls at page 0, which the guest cannot touch."""

    def __init__(self, n: int) -> None:
        self.n = n

    def hypercall(self, call: HypercallEvent) -> None:
        if call.nr == abi.Hc.CLOCK and self.n > 0:
            self.n -= 1
            call.arg = 0


async def test_out_only_and_unreadable_structures(kernel: Kernel, tmp_path: Path) -> None:
    """CLOCK's structure has only an out field (args {}); a structure the guest cannot
    read is null in both directions, and the call fails with FAULT."""
    need_image("bench-hcall")
    path = tmp_path / "clock.jsonl"
    async with TraceWriter(path) as w:
        vm = await kernel.spawn("bench-hcall", cmdline="n=20", monitors=[Misdirect(3), Tracer(w)])
        assert await vm.wait() == 0
    recs = lines(path)
    check_schema(recs)
    clocks = [r for r in recs if r.get("name") == "clock"]
    assert len(clocks) == 20
    bad, good = clocks[:3], clocks[3:]
    assert all(r["args"] is None and r["out"] is None and r["code"] == "FAULT" for r in bad)
    assert all(r["args"] == {} and r["code"] == "OK" for r in good)
    nows = [r["out"]["now_ns"] for r in good]
    assert nows == sorted(nows) and nows[0] > 0
    end = next(r for r in recs if r.get("name") == "terminate")
    assert end["args"] == {"status": 0} and end["out"] == {}


async def test_clocks_answered_natively_are_traced_in_order(kernel: Kernel, tmp_path: Path) -> None:
    """The tracer only records CLOCK, so the CPU answers it in C and logs the values
    (a log of 1,024: a busy loop fills it many times a slice); every call is traced
    once, in order, its t the value it returned."""
    need_image("bench-hcall")
    path = tmp_path / "clocks.jsonl"
    async with TraceWriter(path) as w:
        vm = await kernel.spawn("bench-hcall", cmdline="n=20000", monitors=[Tracer(w)])
        assert await vm.wait() == 0
    assert vm.native_hypercalls > 19000 or not kernel.config.native  # DENALI_NATIVE=0: Python
    recs = lines(path)
    check_schema(recs)
    clocks = [r for r in recs if r.get("name") == "clock"]
    assert len(clocks) == 20000 and recs[-2]["name"] == "terminate"
    assert all(r["args"] == {} and r["code"] == "OK" and r["vm"] == vm.id for r in clocks)
    nows = [r["out"]["now_ns"] for r in clocks]
    assert nows == sorted(nows) and len(set(nows)) > 1000
    assert sum(r["t"] == r["out"]["now_ns"] for r in clocks) >= vm.native_hypercalls
    ts = [r["t"] for r in recs[1:-1]]
    assert ts == sorted(ts)


async def test_sends_and_timers_answered_natively_are_traced_in_order(kernel: Kernel, tmp_path: Path) -> None:
    """The tracer only records NET_SEND and TIMER_SET too, so the CPU answers them in C
    and logs a record of each: over HTTP between two traced VMs every hypercall of each
    VM is traced once, in the VM's order, a NET_SEND's arguments and result intact."""
    need_image("httpd")
    need_image("httpget")
    path = tmp_path / "http.jsonl"
    async with TraceWriter(path, capacity=64 << 20) as w:
        server = await kernel.spawn("httpd", cmdline="ip=10.0.0.1/24", monitors=[Tracer(w)])
        client = await kernel.spawn(
            "httpget",
            cmdline="ip=10.0.0.2/24 url=http://10.0.0.1/bytes/3000 count=200 conc=4",
            monitors=[Tracer(w)],
        )
        assert await client.wait() == 0
        server.kill()  # waiting in an IDLE, which is never traced: it never returns
        with pytest.raises(VmKilledError):
            await server.wait()
    assert "ok=200 fail=0" in client.console.text()
    recs = lines(path)
    check_schema(recs)
    for vm, unfinished in ((server, 1), (client, 0)):
        calls = [r for r in recs if r.get("kind") == "hypercall" and r["vm"] == vm.id]
        assert len(calls) == vm.hypercalls - unfinished, (len(calls), vm.hypercalls)
        ts = [r["t"] for r in recs[1:-1] if r.get("vm") == vm.id]
        assert ts == sorted(ts)
        sends = [r for r in calls if r["name"] == "net_send"]
        assert len(sends) > 200
        assert all(r["code"] == "OK" and r["out"]["sent"] == r["args"]["count"] for r in sends)
    if kernel.config.native:  # DENALI_NATIVE=0: every call through the hooks
        natives = server.native_hypercalls + client.native_hypercalls
        logged = sum(
            r["name"] in ("net_send", "timer_set", "clock") for r in recs if r.get("kind") == "hypercall"
        )
        assert natives > logged * 0.9


async def test_a_killed_vm_leaves_every_logged_clock_in_the_trace(kernel: Kernel, tmp_path: Path) -> None:
    need_image("bench-hcall")
    path = tmp_path / "killed.jsonl"
    async with TraceWriter(path, capacity=64 << 20) as w:
        vm = await kernel.spawn("bench-hcall", cmdline="n=1000000000", monitors=[Tracer(w)])
        await asyncio.sleep(0.05)
        vm.kill()
        with pytest.raises(VmKilledError):
            await vm.wait()
    recs = lines(path)
    check_schema(recs)
    assert recs[-1]["dropped"] == 0 and (vm.native_hypercalls > 0 or not kernel.config.native)
    assert len([r for r in recs if r["kind"] == "hypercall"]) == vm.hypercalls


async def test_frames_disk_and_faults(kernel: Kernel, tmp_path: Path) -> None:
    need_image("httpd")
    need_image("httpget")
    path = tmp_path / "net.jsonl"
    async with TraceWriter(path, kinds=TRACE_KINDS) as w:
        srv = await kernel.spawn("httpd", cmdline="ip=10.0.0.1/24", monitors=[Tracer(w, frame_bytes=20)])
        cli = await kernel.spawn(
            "httpget", cmdline="ip=10.0.0.2/24 url=http://10.0.0.1/bytes/2258 count=5", monitors=[Tracer(w)]
        )
        assert await cli.wait() == 0
        srv.kill()
    recs = lines(path)
    check_schema(recs)
    out = [r for r in recs if r["kind"] == "frame_out" and r.get("vm") == srv.id]
    assert out and all(len(r["head"]) == 40 for r in out)
    assert {"0x0800", "0x0806"} & {r["type"] for r in out}
    assert any(r["kind"] == "frame_in" and r.get("vm") == cli.id for r in recs)
    assert not any("head" in r for r in recs if r.get("vm") == cli.id and r["kind"].startswith("frame"))
    sends = [r for r in recs if r.get("name") == "net_send" and r.get("vm") == cli.id]
    assert sends and all(r["out"]["sent"] <= r["args"]["count"] for r in sends)
    assert any(r["kind"] == "interrupt" and "NET_RX" in r["irqs"] for r in recs)
    for vm in (srv, cli):  # each VM's lines in its clock's order, native CLOCKs among them
        ts = [r["t"] for r in recs[1:-1] if r["vm"] == vm.id]
        assert ts == sorted(ts)
    assert cli.native_hypercalls > 0 or not kernel.config.native

    need_image("test-fault")
    path = tmp_path / "fault.jsonl"
    async with TraceWriter(path, kinds={"fault"}) as w:
        vm = await kernel.spawn("test-fault", cmdline="kind=null-write", monitors=[Tracer(w)])
        with pytest.raises(GuestFault):
            await vm.wait()
    recs = lines(path)
    check_schema(recs)
    assert [r["kind"] for r in recs[1:-1]] == ["fault"]
    assert recs[1]["fault"] == "null_pointer" and recs[1]["address"] == 0 and recs[1]["access"] == "write"


async def test_a_full_buffer_drops_and_counts(kernel: Kernel, tmp_path: Path) -> None:
    need_image("test-print")
    path = tmp_path / "small.jsonl"
    w = TraceWriter(path, capacity=4096)
    await w.open()
    vm = await kernel.spawn("test-print", cmdline="lines=3000", monitors=[Tracer(w)])
    assert await vm.wait() == 0
    await w.aclose()
    recs = lines(path)
    assert w.dropped > 0 and recs[-1]["dropped"] == w.dropped
    assert recs[-1]["records"] == len(recs) - 1 == w.records


async def test_a_failing_trace_file_never_fails_the_vm(kernel: Kernel) -> None:
    need_image("test-print")
    w = TraceWriter("/dev/full")
    await w.open()
    vm = await kernel.spawn("test-print", cmdline="lines=200", monitors=[Tracer(w)])
    assert await vm.wait() == 0
    await w.aclose()
    assert w.error is not None and w.dropped > 0
    with pytest.raises(ConfigError, match="trace file"):
        await TraceWriter("/nonexistent-dir/t.jsonl").open()


def test_cli_trace_and_filter(tmp_path: Path) -> None:
    path = tmp_path / "cli.jsonl"
    r = subprocess.run(
        [*CMD, "boot", "test-exit", "-c", "status=3", "--trace", str(path), "--trace-filter", "hypercall"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3, r.stderr
    recs = lines(path)
    check_schema(recs)
    assert {x["kind"] for x in recs[1:-1]} == {"hypercall"}
    r = subprocess.run(
        [*CMD, "boot", "hello", "--trace", str(path), "--trace-filter", "syscalls"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "trace filter" in r.stderr
