"""Live migration (denali/migration.py) between two kernels over real sockets: a guest
that keeps rewriting its memory moves mid-run and prints the checksum it prints when it
never moves; the faults (no destination, a peer that dies half-way, a link that drops
during the stop-and-copy, a peer that goes quiet, a refusal) leave it running at the
source with the same result; malformed streams to either side get one error and touch
nothing. The test with a Linux client (two ``denali boot`` processes joined by VXLAN,
curl and ping in a namespace) is tests/net/test_migration_lan.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from denali import abi, api
from denali.errors import MigrationError, VmKilledError, VmMigratedError
from denali.kernel import Kernel
from denali.migration import MAX_MESSAGE, PROTOCOL, ROUTE, migrate
from denali.monitor import HypercallEvent, Monitor
from denali.monitor.base import Verdict
from denali.vm import VmState
from tests.conftest import need_image

ROOT = Path(__file__).resolve().parent.parent
SUM = "kib=1024 rounds=60"
"""test-swapsum rewrites 1 MiB 60 times with 1 ms sleeps: every pre-copy round finds it dirty."""


LONG = "kib=512 rounds=400"
"""The same for longer: it still runs when a failed migration returns."""


_REFERENCE: dict[str, str] = {}


async def _reference(cmdline: str = SUM) -> str:
    """What the guest prints when it never moves (computed once per command line)."""
    if cmdline not in _REFERENCE:
        async with Kernel() as k:
            vm = await k.spawn("test-swapsum", cmdline=cmdline, memory="4M")
            assert await vm.wait() == 0
            _REFERENCE[cmdline] = vm.console.text()
    return _REFERENCE[cmdline]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Kernel, Kernel, str]]:
    """Two kernels in this process; the second serves its control API (the migration
    route) on a Unix socket."""
    need_image("test-swapsum")
    sock = str(tmp_path / "b.sock")
    async with Kernel(mac_tag=7) as a, Kernel(mac_tag=7) as b:
        endpoint = await api.serve(b, sock)
        try:
            yield a, b, sock
        finally:
            await endpoint.close()


@pytest.mark.parametrize("workers", [0, 2], ids=["loop", "workers2"])
async def test_a_guest_rewriting_its_memory_moves_mid_run_and_computes_the_same(
    tmp_path: Path, workers: int
) -> None:
    need_image("test-swapsum")
    want = await _reference()
    sock = str(tmp_path / "b.sock")
    async with Kernel(mac_tag=7, workers=workers) as a, Kernel(mac_tag=7) as b:
        endpoint = await api.serve(b, sock)
        try:
            vm = await a.spawn("test-swapsum", cmdline=SUM, memory="4M")
            await asyncio.sleep(0.1)
            assert not vm.done
            info = await migrate(a, vm, sock)
            assert info.live and info.rounds >= 1 and info.pages_sent >= 256
            assert vm.state is VmState.MIGRATED and vm.id not in a.vms
            with pytest.raises(VmMigratedError):
                await vm.wait()
            moved = b.vms[vm.id]
            assert moved.mac == vm.mac and moved.cmdline == vm.cmdline
            assert await moved.wait() == 0
            assert moved.console.text().strip() == want.strip()
        finally:
            await endpoint.close()


async def test_an_idle_server_moves_and_keeps_its_identity(pair: tuple[Kernel, Kernel, str]) -> None:
    a, b, sock = pair
    need_image("httpd")
    vm = await a.spawn("httpd", cmdline="ip=10.9.0.1/24")
    await vm.until_idle()
    info = await migrate(a, vm, sock)
    moved = b.vms[vm.id]
    assert info.live and moved.mac == vm.mac
    await asyncio.sleep(0.05)
    assert moved.state is VmState.IDLE  # it listens on, waiting in IDLE
    assert b.switch.lookup(vm.mac) is moved.nic and a.switch.lookup(vm.mac) is None


async def test_a_paused_vm_moves_by_stop_and_copy_and_stays_paused(pair: tuple[Kernel, Kernel, str]) -> None:
    a, b, sock = pair
    want = await _reference()
    vm = await a.spawn("test-swapsum", cmdline=SUM, memory="4M")
    await asyncio.sleep(0.05)
    await vm.pause()
    info = await migrate(a, vm, sock)
    assert not info.live and info.rounds == 0 and info.pages_final >= 256
    moved = b.vms[vm.id]
    assert moved.state is VmState.PAUSED
    moved.resume()
    assert await moved.wait() == 0
    assert moved.console.text().strip() == want.strip()


# ---------------------------------------------------------------- faults: the VM runs on


async def _runs_on(vm_wait: Awaitable[int], console: Callable[[], str], want: str) -> None:
    assert await vm_wait == 0
    assert console().strip() == want.strip()


async def test_no_destination_leaves_the_vm_running(tmp_path: Path) -> None:
    need_image("test-swapsum")
    want = await _reference()
    async with Kernel() as a:
        vm = await a.spawn("test-swapsum", cmdline=SUM, memory="4M")
        await asyncio.sleep(0.02)
        with pytest.raises(MigrationError, match="cannot connect") as err:
            await migrate(a, vm, str(tmp_path / "nobody.sock"))
        assert "\n" not in str(err.value)
        await _runs_on(vm.wait(), vm.console.text, want)


Script = Callable[[web.WebSocketResponse], Awaitable[None]]


@pytest.fixture
async def fake_peer(tmp_path: Path) -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """A hostile or failing destination: a WebSocket on the migration route that runs a
    script; returns its socket path."""
    runners: list[web.AppRunner] = []

    async def start(script: Script) -> str:
        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
            await ws.prepare(request)
            await script(ws)
            return ws

        app = web.Application()
        app.router.add_get(ROUTE, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        path = str(tmp_path / f"fake{len(runners)}.sock")
        await web.UnixSite(runner, path).start()
        runners.append(runner)
        return path

    yield start
    for r in runners:
        await r.cleanup()


async def _accept_then(ws: web.WebSocketResponse, until: bytes, then: str) -> None:
    """Play destination until a message of kind ``until`` arrives, then fail as ``then``."""
    async for msg in ws:
        kind = msg.data[:1]
        if kind == b"I" or kind == b"H":
            if kind == b"H":
                hello = json.loads(msg.data[1:])
                ws.image_left = hello["image_size"]  # type: ignore[attr-defined]
            else:
                ws.image_left -= len(msg.data) - 1  # type: ignore[attr-defined]
            if ws.image_left <= 0:  # type: ignore[attr-defined]
                await ws.send_bytes(b"A")
        if kind == until:
            break
    if then == "close":
        await ws.close()
    elif then == "drop":  # the process dies: the socket goes without a close frame
        transport = ws._req.transport if ws._req is not None else None  # type: ignore[union-attr]
        if transport is not None:
            transport.abort()
    elif then == "quiet":
        await asyncio.sleep(3)
    elif then == "garbage":
        await ws.send_bytes(b"\xff" * 100)
        await asyncio.sleep(1)
    elif then == "prepared-then-drop":  # says PREPARED, takes GO, then vanishes
        await ws.send_bytes(b"D")
        async for msg in ws:
            if msg.data[:1] == b"G":
                break
        transport = ws._req.transport if ws._req is not None else None  # type: ignore[union-attr]
        if transport is not None:
            transport.abort()
    elif then == "refuse":
        await ws.send_bytes(b"E" + json.dumps({"message": "no room \x1b[31mhere"}).encode())
        await asyncio.sleep(1)


@pytest.mark.parametrize(
    "until,then,why",
    [
        (b"P", "drop", "dropped|closed"),  # the peer dies half-way through the pre-copy
        (b"P", "close", "closed|dropped"),  # the peer closes half-way
        (b"S", "drop", "dropped|closed"),  # the link drops during the stop-and-copy
        (b"S", "quiet", "sent nothing"),  # the peer goes quiet
        (b"S", "garbage", "sent b'\\\\xff'"),  # the peer answers nonsense
        (b"H", "refuse", "refused: no room \\?\\[31mhere"),
    ],
    ids=[
        "dies-in-precopy",
        "closes-in-precopy",
        "drops-in-stop-and-copy",
        "goes-quiet",
        "garbage",
        "refuses",
    ],
)
async def test_a_failing_peer_leaves_the_vm_running_with_nothing_lost(
    fake_peer: Callable[[Script], Awaitable[str]], until: bytes, then: str, why: str
) -> None:
    need_image("test-swapsum")
    want = await _reference(LONG)
    sock = await fake_peer(lambda ws: _accept_then(ws, until, then))
    async with Kernel() as a:
        vm = await a.spawn("test-swapsum", cmdline=LONG, memory="4M")
        await asyncio.sleep(0.02)
        with pytest.raises(MigrationError, match=why) as err:
            await migrate(a, vm, sock, timeout_s=0.5)
        assert "runs on here" in str(err.value) and "\n" not in str(err.value)
        assert vm.state is not VmState.PAUSED and a.vms.get(vm.id) is vm
        assert a.switch.lookup(vm.mac) is vm.nic
        assert vm.evictable() or vm.state is not VmState.IDLE or not vm._migrating
        await _runs_on(vm.wait(), vm.console.text, want)


async def test_a_link_lost_after_go_keeps_the_vm_paused_and_off_the_lan(
    fake_peer: Callable[[Script], Awaitable[str]],
) -> None:
    """GO went out, the confirmation never came: the destination may run the VM, so the
    source neither resumes it nor puts it back on its LAN (never two of it), and says so."""
    need_image("test-swapsum")
    sock = await fake_peer(lambda ws: _accept_then(ws, b"S", "prepared-then-drop"))
    async with Kernel() as a:
        vm = await a.spawn("test-swapsum", cmdline=LONG, memory="4M")
        await asyncio.sleep(0.02)
        with pytest.raises(MigrationError, match="did not confirm") as err:
            await migrate(a, vm, sock, timeout_s=0.5)
        assert "kept paused here and off the LAN" in str(err.value)
        assert vm.state is VmState.PAUSED and a.switch.lookup(vm.mac) is None
        vm.kill()


async def test_a_source_lost_after_prepared_leaves_nothing_at_the_destination(
    pair: tuple[Kernel, Kernel, str],
) -> None:
    """The source's link drops after PREPARED, before GO: the held VM goes."""
    _a, b, sock = pair
    good = _valid_prefix_sync()
    async with Kernel(mac_tag=9) as src:
        vm = await src.spawn("test-swapsum", cmdline=SUM, memory="4M")
        await asyncio.sleep(0.02)
        await vm.pause()
        state = await vm.snapshot_state()
        from denali.snapshot import encode_meta

        meta = encode_meta({**state.meta, "vm": {**state.meta["vm"], "id": 5}})
        session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock))
        ws = await session.ws_connect(f"http://denali{ROUTE}", max_msg_size=MAX_MESSAGE)
        good[0] = _hello(image_size=len(good[1]) - 1, image="test-swapsum", mac=vm.mac.hex())
        for m in good:
            await ws.send_bytes(m)
        assert (await ws.receive()).data == b"A"
        await ws.send_bytes(b"S" + struct.pack("<I", len(meta)) + meta + state.cpu.pack())
        assert (await ws.receive()).data == b"D"
        assert b.vms[5].state is VmState.PAUSED
        await session.close()  # the link drops: no close handshake
        vm.kill()
    async with asyncio.timeout(5):
        while 5 in b.vms:  # noqa: ASYNC110 (the destination notices the drop)
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not b.switch.ports


async def test_an_id_in_use_at_the_destination_is_refused(pair: tuple[Kernel, Kernel, str]) -> None:
    a, b, sock = pair
    want = await _reference()
    await b.spawn("test-swapsum", cmdline="kib=4 rounds=1000", memory="2M")  # VM 1 there
    vm = await a.spawn("test-swapsum", cmdline=SUM, memory="4M")
    with pytest.raises(MigrationError, match="VM id 1 is in use"):
        await migrate(a, vm, sock)
    await _runs_on(vm.wait(), vm.console.text, want)


async def test_writable_disks_are_not_migrated(pair: tuple[Kernel, Kernel, str], tmp_path: Path) -> None:
    from denali.devices.disk import parse_disk_arg
    from denali.devices.disk.tools import create_image  # noqa: F401  (the tool exists)

    a, _b, sock = pair
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    vm = await a.spawn("test-swapsum", cmdline=SUM, memory="4M", disks=[parse_disk_arg(f"{img}:rw")])
    with pytest.raises(MigrationError, match="writable"):
        await migrate(a, vm, sock)
    assert await vm.wait() == 0


# ---------------------------------------------------------------- malformed streams


def _hello(**over: object) -> bytes:
    h: dict[str, object] = {
        "protocol": PROTOCOL,
        "abi": abi.ABI_VERSION,
        "id": 5,
        "image": "x",
        "mem_size": 4 << 20,
        "mac": "02aa00000005",
        "image_size": 100,
    }
    h.update(over)
    return b"H" + json.dumps(h).encode()


def _image_bytes() -> bytes:
    from denali.images import resolve

    return Path(resolve("test-swapsum").path).read_bytes()


def _valid_prefix_sync() -> list[bytes]:
    image = _image_bytes()
    return [_hello(image_size=len(image), image="test-swapsum"), b"I" + image]


async def _valid_prefix() -> list[bytes]:
    return _valid_prefix_sync()


@pytest.mark.parametrize(
    "case,why",
    [
        ("not-hello", "does not begin with a migration hello"),
        ("bad-json", "hello is not valid JSON"),
        ("deep-json", "hello is not valid JSON"),
        ("protocol", "migration protocol 99"),
        ("abi", "ABI version 1"),
        ("no-id", "lacks the VM's id"),
        ("memory", "memory size 12345"),
        ("image-size", "image size or MAC"),
        ("image-overflow", "image does not arrive"),
        ("not-elf", "image"),
        ("page-range", "page message is malformed"),
        ("page-short", "page message is malformed"),
        ("page-truncated", "page message is truncated"),
        ("unknown-kind", "unknown kind"),
        ("state-json", "state is not valid JSON"),
        ("state-length", "state message is malformed"),
        ("state-other-vm", "another VM"),
        ("state-bad", "saved VM state is not valid"),
        ("monitor-list", "monitor list is not a list"),
        ("monitors-here-none", "this kernel has none"),
        ("text", "not part of a migration"),
    ],
)
async def test_a_malformed_stream_gets_one_error_and_leaves_nothing(
    pair: tuple[Kernel, Kernel, str], caplog: pytest.LogCaptureFixture, case: str, why: str
) -> None:
    _a, b, sock = pair
    good = await _valid_prefix()
    page = struct.pack("<II", 100, 1) + bytes(abi.PAGE_SIZE)
    meta_ok = {"vm": {"id": 5, "mem_size": 4 << 20}}
    msgs: dict[str, list[bytes]] = {
        "not-hello": [b"Pxx"],
        "bad-json": [b"H{nope"],
        "deep-json": [b"H" + b"[" * 100_000 + b"]" * 100_000],
        "protocol": [_hello(protocol=99)],
        "abi": [_hello(abi=1)],
        "no-id": [b"H" + json.dumps({"protocol": PROTOCOL, "abi": abi.ABI_VERSION}).encode()],
        "memory": [_hello(mem_size=12345)],
        "monitor-list": [_hello(monitors="Policy")],
        "monitors-here-none": [_hello(monitors=["Policy"])],
        "image-size": [_hello(image_size=0)],
        "image-overflow": [_hello(image_size=10), b"I" + bytes(11)],
        "not-elf": [_hello(image_size=10), b"I" + bytes(10)],
        "page-range": [*good, b"P" + struct.pack("<II", 1023, 2) + bytes(2 * abi.PAGE_SIZE)],
        "page-short": [*good, b"P" + page[:-1]],
        "page-truncated": [*good, b"P\x01"],
        "unknown-kind": [*good, b"Z"],
        "state-json": [*good, b"P" + page, b"S" + struct.pack("<I", 3) + b"{x}"],
        "state-length": [*good, b"S" + struct.pack("<I", 1 << 30)],
        "state-other-vm": [*good, b"S" + struct.pack("<I", 17) + json.dumps({"vm": {"id": 6}}).encode()],
        "state-bad": [
            *good,
            b"S" + struct.pack("<I", len(json.dumps(meta_ok))) + json.dumps(meta_ok).encode() + b"cpu",
        ],
    }
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as s,
        s.ws_connect(f"http://denali{ROUTE}", max_msg_size=MAX_MESSAGE) as ws,
    ):
        if case == "text":
            await ws.send_str("hello")
        for m in msgs.get(case, []):
            await ws.send_bytes(m)
        answer = b""
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"E":
                answer = msg.data
                break
        assert answer, "no error answer"
        text = json.loads(answer[1:])["message"]
        assert why in text or pytest.fail(f"{text!r} does not say {why!r}")
        assert "\n" not in text and "Traceback" not in text
    await asyncio.sleep(0.05)
    assert len(b.vms) == 0 and not b.switch.ports
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_source_given_up_before_go_leaves_nothing_at_the_destination(
    pair: tuple[Kernel, Kernel, str],
) -> None:
    """The source says E after PREPARED: the VM held paused at the destination goes."""
    _a, b, sock = pair
    good = await _valid_prefix()
    async with Kernel(mac_tag=9) as src:
        vm = await src.spawn("test-swapsum", cmdline=SUM, memory="4M")
        await asyncio.sleep(0.02)
        await vm.pause()
        state = await vm.snapshot_state()
        from denali.snapshot import encode_meta

        meta = encode_meta({**state.meta, "vm": {**state.meta["vm"], "id": 5}})
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as s,
            s.ws_connect(f"http://denali{ROUTE}", max_msg_size=MAX_MESSAGE) as ws,
        ):
            good[0] = _hello(image_size=len(good[1]) - 1, image="test-swapsum", mac=vm.mac.hex())
            for m in good:
                await ws.send_bytes(m)
            assert (await ws.receive()).data == b"A"
            await ws.send_bytes(b"S" + struct.pack("<I", len(meta)) + meta + state.cpu.pack())
            assert (await ws.receive()).data == b"D"
            assert b.vms[5].state is VmState.PAUSED
            await ws.send_bytes(b"E" + json.dumps({"message": "changed my mind"}).encode())
            await asyncio.sleep(0.1)
        vm.resume()
        vm.kill()
    await asyncio.sleep(0.05)
    assert 5 not in b.vms and not b.switch.ports


async def test_api_and_ctl_errors_are_one_line(pair: tuple[Kernel, Kernel, str], tmp_path: Path) -> None:
    a, _b, _sock = pair
    sock_a = str(tmp_path / "a.sock")
    endpoint = await api.serve(a, sock_a)
    try:
        vm = await a.spawn("test-touch", cmdline="kib=64", memory="4M")  # idles until told
        proc = await asyncio.create_subprocess_exec(
            "python3",
            "-m",
            "denali",
            "ctl",
            sock_a,
            "migrate",
            str(vm.id),
            "--to",
            str(tmp_path / "none.sock"),
            cwd=str(ROOT),
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ},
        )
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1 and "cannot connect" in lines[0] and "(HTTP 502)" in lines[0], lines
        assert "it runs on here" in lines[0]
        assert a.vms.get(vm.id) is vm and not vm.done and a.switch.lookup(vm.mac) is vm.nic
    finally:
        await endpoint.close()


async def test_the_destination_announces_the_vm_so_the_source_lan_relearns_at_once(tmp_path: Path) -> None:
    """Two kernels whose LANs are joined by VXLAN over loopback: right after the move, the
    source's switch sends frames for the VM's MAC over VXLAN, though the (idle) VM itself
    sent nothing: the destination's gratuitous ARP taught it."""
    from denali.net.vxlan import VxlanPort

    need_image("httpd")
    base = 30000 + os.getpid() % 20000
    sock = str(tmp_path / "b.sock")
    async with Kernel(mac_tag=7) as a, Kernel(mac_tag=7) as b:
        va = VxlanPort(77, [("127.0.0.1", base + 1)], ("127.0.0.1", base))
        vb = VxlanPort(77, [("127.0.0.1", base)], ("127.0.0.1", base + 1))
        await va.open()
        await vb.open()
        a.switch.attach(va)
        b.switch.attach(vb)
        endpoint = await api.serve(b, sock)
        try:
            vm = await a.spawn("httpd", cmdline="ip=10.9.0.1/24")
            await vm.until_idle()
            assert a.switch.lookup(vm.mac) is vm.nic
            await migrate(a, vm, sock)
            moved = b.vms[vm.id]
            async with asyncio.timeout(5):
                while a.switch.lookup(vm.mac) is not va:  # noqa: ASYNC110 (the ARP crosses UDP)
                    await asyncio.sleep(0.001)
            assert b.switch.lookup(vm.mac) is moved.nic
            assert moved.stats["slices"] == vm.stats["slices"] or moved.state is VmState.IDLE
        finally:
            await endpoint.close()
            va.close()
            vb.close()


async def test_a_swapped_out_vm_moves_from_its_swap_file(tmp_path: Path) -> None:
    """A VM swapped out while it waits moves by stop-and-copy of its swap file's pages
    and answers its interrupt at the destination."""
    from denali import lowlevel

    need_image("test-touch")
    sock = str(tmp_path / "b.sock")
    async with Kernel(mac_tag=7, memory_budget=64 << 20) as a, Kernel(mac_tag=7) as b:
        endpoint = await api.serve(b, sock)
        try:
            vm = await a.spawn("test-touch", cmdline="kib=512", memory="4M")
            await vm.until_idle()
            assert await lowlevel.swap_out(vm) and vm.swapped
            info = await migrate(a, vm, sock)
            assert not info.live and info.pages_final >= 128
            moved = b.vms[vm.id]
            moved.interrupt()  # test-touch ends on the host interrupt
            assert await moved.wait() == 0
        finally:
            await endpoint.close()


async def test_one_migration_of_a_vm_at_a_time(pair: tuple[Kernel, Kernel, str]) -> None:
    a, b, sock = pair
    want = await _reference()
    vm = await a.spawn("test-swapsum", cmdline=SUM, memory="4M")
    await asyncio.sleep(0.02)
    first = asyncio.ensure_future(migrate(a, vm, sock))
    await asyncio.sleep(0)
    with pytest.raises(MigrationError, match="being migrated already"):
        await migrate(a, vm, sock)
    await first
    moved = b.vms[vm.id]
    assert await moved.wait() == 0 and moved.console.text().strip() == want.strip()


async def test_the_stream_also_runs_over_tcp(tmp_path: Path) -> None:
    """The destination's API served on TCP (as between machines): ``to`` is its URL."""
    from denali.endpoint import Endpoint

    need_image("test-swapsum")
    want = await _reference()
    async with Kernel(mac_tag=7) as a, Kernel(mac_tag=7) as b:
        endpoint = Endpoint(name="api")
        api.routes(endpoint, b)
        await endpoint.start_tcp("127.0.0.1", 0)
        try:
            port = endpoint.port
            vm = await a.spawn("test-swapsum", cmdline=SUM, memory="4M")
            await asyncio.sleep(0.05)
            info = await migrate(a, vm, f"http://127.0.0.1:{port}")
            assert info.live
            moved = b.vms[vm.id]
            assert await moved.wait() == 0 and moved.console.text().strip() == want.strip()
        finally:
            await endpoint.close()


# ---------------------------------------------------------------- monitors and child VMs


class _Counter(Monitor):
    """Counts the hypercalls it sees; its count is its state."""

    def __init__(self) -> None:
        self.count = 0

    def hypercall(self, call: HypercallEvent) -> Verdict:
        self.count += 1
        return None

    def save(self) -> dict[str, int]:
        return {"count": self.count}

    def restore(self, state: dict[str, int]) -> None:  # type: ignore[override]
        self.count = int(state["count"])


class _Other(Monitor):
    def hypercall(self, call: HypercallEvent) -> Verdict:
        return None


async def test_monitors_move_with_the_vm_and_keep_their_state(tmp_path: Path) -> None:
    need_image("test-swapsum")
    want = await _reference()
    sock = str(tmp_path / "b.sock")
    made: list[_Counter] = []

    def host_monitors() -> list[Monitor]:
        made.append(_Counter())
        return [made[-1]]

    async with Kernel(mac_tag=7) as a, Kernel(mac_tag=7) as b:
        endpoint = await api.serve(b, sock, monitors=host_monitors)
        try:
            before = _Counter()
            vm = await a.spawn("test-swapsum", cmdline=SUM, memory="4M", monitors=[before])
            await asyncio.sleep(0.1)
            info = await migrate(a, vm, sock)
            assert info.live and vm.state is VmState.MIGRATED
            counted = before.count
            assert counted > 0 and len(made) == 1
            moved = b.vms[vm.id]
            stack = b.monitors_of(moved)
            assert stack.monitors == (made[0],)
            assert made[0].count >= counted  # given its state before the VM ran there
            assert await moved.wait() == 0
            assert moved.console.text().strip() == want.strip()
            assert made[0].count > counted
        finally:
            await endpoint.close()


@pytest.mark.parametrize("host", ["none", "other"])
async def test_a_vm_under_monitors_is_refused_where_it_would_shed_them(tmp_path: Path, host: str) -> None:
    need_image("test-swapsum")
    want = await _reference()
    sock = str(tmp_path / "b.sock")
    factory = None if host == "none" else (lambda: [_Other()])
    async with Kernel(mac_tag=7) as a, Kernel(mac_tag=7) as b:
        endpoint = await api.serve(b, sock, monitors=factory)
        try:
            watcher = _Counter()
            vm = await a.spawn("test-swapsum", cmdline=SUM, memory="4M", monitors=[watcher])
            await asyncio.sleep(0.02)
            why = "this kernel has none" if host == "none" else r"this kernel's are \(_Other\)"
            with pytest.raises(MigrationError, match=why) as err:
                await migrate(a, vm, sock)
            assert "\n" not in str(err.value) and "runs on here" in str(err.value)
            assert not b.vms and vm.state is not VmState.MIGRATED
            assert a.monitors_of(vm).monitors == (watcher,)
            await _runs_on(vm.wait(), vm.console.text, want)
        finally:
            await endpoint.close()


async def test_a_vm_without_monitors_gets_the_destinations(tmp_path: Path) -> None:
    need_image("httpd")
    sock = str(tmp_path / "b.sock")
    async with Kernel(mac_tag=7) as a, Kernel(mac_tag=7) as b:
        endpoint = await api.serve(b, sock, monitors=lambda: [_Counter()])
        try:
            vm = await a.spawn("httpd", cmdline="ip=10.9.0.1/24")
            await vm.until_idle()
            await migrate(a, vm, sock)
            assert [type(m) for m in b.monitors_of(b.vms[vm.id]).monitors] == [_Counter]
        finally:
            await endpoint.close()


async def test_a_parent_of_child_vms_and_a_child_vm_are_not_migrated(
    pair: tuple[Kernel, Kernel, str], tmp_path: Path
) -> None:
    from denali.devices.disk import DiskSpec
    from tests.nesting.test_children import M, disk_of

    need_image("test-nest")
    a, b, sock = pair
    img = disk_of("test-nest", tmp_path / "nest.img")
    root = await a.spawn(
        "test-nest",
        cmdline=f"depth=2 mem={M} quota={2 * M} sleep=1",
        child_memory=2 * M,
        nic=False,
        disks=[DiskSpec(img, name="img", mode="ro")],
    )
    for _ in range(2000):
        if "depth=0 leaf" in root.console.text():
            break
        await asyncio.sleep(0.005)
    kids = [vm for vm in a.vms.values() if vm.group == root.id and vm is not root]
    assert len(kids) == 2
    with pytest.raises(MigrationError, match="has child VMs") as err:
        await migrate(a, root, sock)
    assert "\n" not in str(err.value)
    for kid in kids:
        with pytest.raises(MigrationError, match="is a child VM"):
            await migrate(a, kid, sock)
    assert not b.vms
    assert root.state is not VmState.MIGRATED and not root.done
    assert all(not k.done and k.state is not VmState.MIGRATED for k in kids)
    root.kill()
    with pytest.raises(VmKilledError):
        await root.wait()


async def test_a_vm_with_a_child_grant_and_no_children_moves_with_its_grant(
    pair: tuple[Kernel, Kernel, str],
) -> None:
    need_image("test-idle")
    a, b, sock = pair
    vm = await a.spawn("test-idle", memory="1M", cmdline="ms=3600000", nic=False, child_memory="4M")
    await vm.until_idle()
    await migrate(a, vm, sock)
    moved = b.vms[vm.id]
    assert moved.children is not None and moved.children.quota == 4 << 20
