"""Pause, snapshot, restore and clone (denali/snapshot.py, Vm.pause/resume, Kernel.snapshot/
restore/clone): a long computation snapshotted mid-way ten times and restored here and in
another process ends with the same result; clones of a listening httpd each answer HTTP
at their own address and share the snapshot's pages; every bad snapshot is refused."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from denali import abi, snapshot
from denali.errors import ConfigError, SnapshotFormatError, SnapshotWriteError, VmKilledError, VmStateError
from denali.kernel import Kernel
from denali.monitor import HypercallEvent, Monitor
from denali.monitor.base import Verdict
from denali.vm import Vm, VmState
from tests.conftest import need_image

ROOT = Path(__file__).resolve().parent.parent
SUM = "kib=2048 rounds=200"
"""test-swapsum: 2 MiB of memory checksummed and mutated 200 times (~1.5 s), with a 1 ms
sleep between rounds, so snapshots land both mid-computation and in IDLE."""

_RESTORE_ELSEWHERE = """
import asyncio, sys
from denali.kernel import Kernel

async def main(paths):
    async with Kernel() as k:
        for p in paths:
            vm = await k.restore(p)
            status = await vm.wait()
            print(status, vm.console.text().strip().splitlines()[-1], flush=True)

asyncio.run(main(sys.argv[1:]))
"""


def _leftovers(directory: Path) -> list[Path]:
    return list(directory.glob(".*.tmp"))


def _last_line(vm: Vm) -> str:
    return vm.console.text().strip().splitlines()[-1]


async def test_ten_snapshots_mid_way_restore_to_the_uninterrupted_result(tmp_path: Path) -> None:
    need_image("test-swapsum")
    async with Kernel() as k:
        ref = await k.spawn("test-swapsum", cmdline=SUM, memory="4M")
        assert await ref.wait() == 0
        expected = _last_line(ref)
        assert expected.startswith("checksum=")

        vm = await k.spawn("test-swapsum", cmdline=SUM, memory="4M")
        paths = []
        for i in range(10):
            await asyncio.sleep(0.05)
            if i % 3 == 0:
                await vm.until_idle()  # paused inside IDLE: the deadline must survive
            await vm.pause()
            assert vm.state is VmState.PAUSED
            slices = vm.stats["slices"]
            await asyncio.sleep(0.01)
            assert vm.stats["slices"] == slices  # paused: no guest code runs
            path = tmp_path / f"sum{i}.snap"
            info = await k.snapshot(vm, path)
            assert info.stored_pages > 512 and info.abi_version == abi.ABI_VERSION
            paths.append(str(path))
            vm.resume()
        assert await vm.wait() == 0
        assert _last_line(vm) == expected

        opened = [await snapshot.open_snapshot(p) for p in paths]
        assert opened[0].meta["vm"]["idle_arg"] is not None  # the first was taken in IDLE
        counts = [s.meta["vm"]["stats"]["slices"] for s in opened]
        for s in opened:
            s.close()
        assert counts == sorted(counts) and len(set(counts)) == 10  # ten different points

        # four in another process, at the same time as six here
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _RESTORE_ELSEWHERE,
            *paths[6:],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for p in paths[:6]:
            restored = await k.restore(p)
            assert restored.id == vm.id and restored.mac == vm.mac
            assert await asyncio.wait_for(restored.wait(), 60) == 0
            assert _last_line(restored) == expected
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        assert out.decode().splitlines() == [f"0 {expected}"] * 4


async def test_pause_keeps_an_idle_deadline_and_queues_interrupts() -> None:
    need_image("test-swapsum")
    async with Kernel() as k:
        vm = await k.spawn("test-swapsum", cmdline="kib=64 rounds=3", memory="1M")
        await vm.until_idle()
        await vm.pause()
        assert vm.state is VmState.PAUSED
        await asyncio.sleep(0.05)  # the 1 ms deadline passes while paused: nothing runs
        slices = vm.stats["slices"]
        vm.interrupt()
        await asyncio.sleep(0.01)
        assert vm.stats["slices"] == slices and vm.state is VmState.PAUSED
        vm.resume()
        assert await vm.wait() == 0
        with pytest.raises(VmStateError, match="exited"):
            await vm.pause()


async def test_snapshot_needs_a_paused_vm_of_this_kernel(tmp_path: Path) -> None:
    async with Kernel() as k, Kernel() as other:
        vm = await k.spawn("test-swapsum", cmdline="kib=64 rounds=100", memory="1M")
        with pytest.raises(VmStateError, match="pause it"):
            await k.snapshot(vm, tmp_path / "x.snap")
        await vm.pause()
        with pytest.raises(VmStateError, match="not a live VM of this kernel"):
            await other.snapshot(vm, tmp_path / "x.snap")
        await k.snapshot(vm, tmp_path / "x.snap")
        with pytest.raises(ConfigError, match="in use in this kernel"):
            await k.restore(tmp_path / "x.snap")  # the original still runs
        vm.resume()
        assert await vm.wait() == 0
        assert not _leftovers(tmp_path)


async def test_snapshot_of_a_swapped_out_vm_and_its_clock(tmp_path: Path) -> None:
    """A VM paused while swapped out is snapshotted from its swap file; restored later,
    its clock continues from the snapshot, so its 600 ms sleep still lasts ~600 ms of its
    own time however long the snapshot sat on disk."""
    need_image("test-idle")
    async with Kernel(memory_budget=3 << 20) as k:
        vms = [await k.spawn("test-idle", cmdline="ms=600", memory="1M") for _ in range(5)]
        for _ in range(2000):
            swapped = [v for v in vms if v.swapped]
            if swapped:
                break
            await asyncio.sleep(0.001)
        assert swapped, "no VM was swapped out"
        victim = swapped[0]
        await victim.pause()
        assert victim.swapped and victim.state is VmState.PAUSED
        await k.snapshot(victim, tmp_path / "swapped.snap")
        victim.resume()
        for v in vms:
            assert await v.wait() == 0
        await asyncio.sleep(0.5)  # the snapshot sits; the restored VM must not notice
        restored = await k.restore(tmp_path / "swapped.snap")
        assert await restored.wait() == 0
        slept_us = int(_last_line(restored).split("slept_us=")[1].split()[0])
        assert 600_000 <= slept_us < 1_000_000, _last_line(restored)


async def test_frames_queued_in_a_paused_nic_are_delivered_after_restore(tmp_path: Path) -> None:
    """Datagrams that reached a paused udpecho's NIC travel in its snapshot: restored in
    another kernel with nobody else on its LAN, it answers them (its ARP request for the
    sender, who it never heard from before, is the proof)."""
    need_image("udpecho")
    need_image("test-netudp")
    from tests.net.helpers import Recorder

    path = tmp_path / "echo.snap"
    async with Kernel() as k:
        srv = await k.spawn("udpecho", cmdline="ip=10.0.0.1/24")
        await srv.until_idle()
        await asyncio.sleep(0.05)
        await srv.pause()
        cli = await k.spawn("test-netudp", cmdline="ip=10.0.0.2/24 dst=10.0.0.1 count=1")
        assert srv.nic is not None
        for _ in range(500):
            if srv.nic.rx_pending:
                break
            await asyncio.sleep(0.01)
        queued = srv.nic.rx_pending
        assert queued >= 1
        await k.snapshot(srv, path)
        srv.kill()
        cli.kill()
    async with Kernel() as k2:
        peer = Recorder("peer")
        k2.switch.attach(peer)
        restored = await k2.restore(path)
        wanted = socket.inet_aton("10.0.0.2")
        for _ in range(500):
            if any(f[12:14] == b"\x08\x06" and f[38:42] == wanted for f in peer.frames):
                break
            await asyncio.sleep(0.01)
        arps = [f for f in peer.frames if f[12:14] == b"\x08\x06" and f[38:42] == wanted]
        assert arps, [f.hex() for f in peer.frames]
        assert restored.nic is not None and restored.nic.rx_pending == 0


# ---------------------------------------------------------------- clones


def _mapped(path: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith(path))


async def _http_ok(k: Kernel, ip: str, src: str) -> str:
    getter = await k.spawn("httpget", cmdline=f"ip={src}/24 url=http://{ip}/bytes/2258 count=2 conc=1")
    status = await asyncio.wait_for(getter.wait(), 60)
    out = getter.console.text()
    assert status == 0, out
    return out


def _guest_symbol(image: str, name: str) -> int:
    """The address of the static ``name`` in a built-in guest image (its symbol table)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    from denali.images import builtin_images

    with open(builtin_images()[image], "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if isinstance(sec, SymbolTableSection):
                for sym in sec.get_symbol_by_name(name) or ():
                    return int(sym["st_value"])
    raise AssertionError(f"{image} has no symbol {name}")


def _u32_at(vm: Vm, addr: int) -> int:
    mem = vm._memory
    assert mem is not None, f"VM {vm.id} is not resident"
    return int(struct.unpack_from("<I", mem.buf, addr)[0])


async def _until_timers_done(vm: Vm) -> None:
    """Wait until ``vm`` idles with no deadline (its TCP and ARP timers have all run), so
    its clones are restored asleep until something wakes them."""
    for _ in range(1000):
        if vm.state is VmState.IDLE and vm._idle_deadline == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"VM {vm.id} still has a timer: {vm._idle_deadline}")


async def test_clones_of_a_listening_httpd_answer_at_their_own_address(tmp_path: Path) -> None:
    need_image("httpd")
    need_image("httpget")
    path = str(tmp_path / "httpd.snap")
    async with Kernel() as k:
        origin = await k.spawn("httpd", cmdline="ip=10.0.0.1/24")
        await origin.until_idle()
        await _http_ok(k, "10.0.0.1", "10.0.0.200")
        await _until_timers_done(origin)
        await origin.pause()
        await k.snapshot(origin, path)
        secret = _guest_symbol("httpd", "iss_secret")
        origin_secret = _u32_at(origin, secret)
        origin.kill()
        clones = await k.clone(path, 4, cmdlines=[f"ip=10.0.0.{10 + i}/24" for i in range(4)])
        assert len({c.id for c in clones}) == 4 and origin.id not in {c.id for c in clones}
        assert len({c.mac for c in clones}) == 4 and origin.mac not in {c.mac for c in clones}
        assert all(c.generation == 1 for c in clones)
        await asyncio.sleep(0.1)
        # restored into IDLE, they sleep on without memory or an engine until woken
        assert all(c.stats["slices"] == 0 and c.state is VmState.IDLE for c in clones)
        assert _mapped(path) == 0
        for i, c in enumerate(clones):
            out = await _http_ok(k, f"10.0.0.{10 + i}", f"10.0.0.{201 + i}")
            assert "ok=2 fail=0 bytes=4516" in out
            assert c.state is VmState.IDLE
        # the clones' memories are private mappings of the one snapshot file
        assert _mapped(path) == 4
        # each re-keyed its TCP (Irq.CLONE): an ISN secret of its own, not the snapshot's
        secrets = {_u32_at(c, secret) for c in clones}
        assert len(secrets) == 4 and origin_secret not in secrets
        # a clone of a clone: generation 2
        await clones[0].pause()
        await k.snapshot(clones[0], tmp_path / "gen1.snap")
        clones[0].resume()
        (grand,) = await k.clone(tmp_path / "gen1.snap", cmdlines=["ip=10.0.0.30/24"])
        assert grand.generation == 2
        await _http_ok(k, "10.0.0.30", "10.0.0.210")
        await _http_ok(k, "10.0.0.10", "10.0.0.211")  # its parent still answers too


async def test_a_clone_sees_its_identity_in_the_registers(tmp_path: Path) -> None:
    """The clone's virtual registers carry its new vm_id, MAC and generation."""
    need_image("test-swapsum")
    async with Kernel() as k:
        vm = await k.spawn("test-swapsum", cmdline="kib=64 rounds=1000", memory="1M")
        await vm.pause()
        await k.snapshot(vm, tmp_path / "a.snap")
        vm.kill()
        (c,) = await k.clone(tmp_path / "a.snap")
        await asyncio.sleep(0.05)
        await c.pause()
        assert c.pending & abi.Irq.CLONE or c.stats["irq_bits_delivered"] >= 1
        mem = c._memory
        assert mem is not None
        fields = abi.VREGS.codec().unpack_from(mem.buf, abi.Layout.VREGS)
        regs = dict(zip((f.name for f in abi.VREGS.fields), fields, strict=True))
        assert regs["vm_id"] == c.id and regs["mac"] == c.mac and regs["generation"] == 1
        c.resume()
        assert await c.wait() == 0


async def test_clones_refuse_disks_they_cannot_share(tmp_path: Path) -> None:
    from denali.devices.disk import DiskSpec

    img = tmp_path / "d.img"
    img.write_bytes(bytes(64 * 4096))
    async with Kernel() as k:
        vm = await k.spawn(
            "test-swapsum", cmdline="kib=64 rounds=1000", memory="1M", disks=[DiskSpec(str(img), mode="rw")]
        )
        await vm.pause()
        await k.snapshot(vm, tmp_path / "rw.snap")
        with pytest.raises(ConfigError, match="cannot be shared by clones"):
            await k.clone(tmp_path / "rw.snap", 2)
        vm.kill()


# ---------------------------------------------------------------- bad snapshots


@pytest.fixture
async def good(tmp_path: Path) -> str:
    path = str(tmp_path / "good.snap")
    async with Kernel() as k:
        vm = await k.spawn("test-swapsum", cmdline="kib=256 rounds=1000", memory="1M")
        await asyncio.sleep(0.02)
        await vm.pause()
        await k.snapshot(vm, path)
    return path


def _header(path: str) -> list[int | bytes]:
    with open(path, "rb") as f:
        return list(snapshot._HEADER.unpack(f.read(snapshot._HEADER.size)))


def _rewrite_header(path: str, fields: list[int | bytes]) -> None:
    head = snapshot._HEADER.pack(*fields)
    head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
    with open(path, "r+b") as f:
        f.write(head)


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


async def _refused(path: str, match: str) -> None:
    async with Kernel() as k:
        with pytest.raises(SnapshotFormatError, match=match):
            await k.restore(path)
        with pytest.raises(SnapshotFormatError, match=match):
            await k.clone(path, 2)
        assert not k.vms


async def test_snapshot_of_another_abi_version_is_refused(good: str) -> None:
    fields = _header(good)
    fields[2] = abi.ABI_VERSION - 1
    _rewrite_header(good, fields)
    await _refused(good, f"ABI version {abi.ABI_VERSION - 1}; this kernel runs ABI version {abi.ABI_VERSION}")


async def test_snapshot_of_another_format_version_is_refused(good: str) -> None:
    fields = _header(good)
    fields[1] = snapshot.FORMAT_VERSION + 1
    _rewrite_header(good, fields)
    await _refused(good, "format version")


def _truncate(path: str, keep: int) -> None:
    os.truncate(path, keep if keep >= 0 else os.path.getsize(path) + keep)


def _first_stored_page(path: str, runs_off: int) -> int:
    with open(path, "rb") as f:
        f.seek(runs_off)
        return int(struct.unpack("<I", f.read(4))[0])


@pytest.mark.parametrize("keep", [0, 100, 4096, 8192, -4096])
async def test_truncated_snapshot_is_refused(good: str, keep: int) -> None:
    _truncate(good, keep)
    await _refused(good, "truncated|bad magic")


@pytest.mark.parametrize("where", ["header", "meta", "cpu", "image", "memory"])
async def test_corrupted_snapshot_is_refused(good: str, where: str) -> None:
    fields = _header(good)
    if where == "header":
        offset, match = 40, "header is corrupt"
    elif where == "memory":
        first_page = _first_stored_page(good, int(fields[14]))
        offset, match = int(fields[17]) + first_page * 4096 + 123, "memory is corrupt"
    else:
        i = snapshot._SECTIONS.index(where)
        offset, match = int(fields[5 + 3 * i]) + 7, f"{where} section is corrupt"
    _flip(good, offset)
    await _refused(good, match)


async def test_a_file_that_is_not_a_snapshot_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.snap"
    p.write_bytes(os.urandom(10000))
    await _refused(str(p), "not a denali snapshot")
    await _refused(str(tmp_path / "missing.snap"), "cannot open")
    await _refused(str(tmp_path), "not a regular file|cannot open")


@pytest.fixture
def small_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 1 MiB tmpfs (root: the suite's network tests need it too)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("this test mounts a tmpfs: run the suite as root")
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


async def test_snapshot_to_a_full_disk_fails_cleanly(small_dir: Path) -> None:
    need_image("test-swapsum")
    async with Kernel() as k:
        ref = await k.spawn("test-swapsum", cmdline="kib=2048 rounds=20", memory="4M")
        assert await ref.wait() == 0
        vm = await k.spawn("test-swapsum", cmdline="kib=2048 rounds=20", memory="4M")
        await asyncio.sleep(0.02)
        await vm.pause()
        with pytest.raises(SnapshotWriteError, match="No space left on device"):
            await k.snapshot(vm, small_dir / "vm.snap")
        assert os.listdir(small_dir) == []  # nothing left behind, not even the temporary file
        assert vm.state is VmState.PAUSED
        vm.resume()
        assert await vm.wait() == 0 and _last_line(vm) == _last_line(ref)


async def test_clones_swap_out_and_back_in_intact(tmp_path: Path) -> None:
    """Clones under a memory budget are swapped out and back in (their memory mapped from
    the snapshot again, their own pages read over it) and still compute the original's
    result."""
    need_image("test-swapsum")
    cmd = "kib=1536 rounds=60"
    async with Kernel() as k:
        ref = await k.spawn("test-swapsum", cmdline=cmd, memory="4M")
        assert await ref.wait() == 0
        expected = _last_line(ref)
        vm = await k.spawn("test-swapsum", cmdline=cmd, memory="4M")
        await asyncio.sleep(0.05)
        await vm.pause()
        await k.snapshot(vm, tmp_path / "mid.snap")
        vm.kill()
    async with Kernel(memory_budget=8 << 20) as k:
        clones = await k.clone(tmp_path / "mid.snap", 6)
        results = await asyncio.gather(*(c.wait() for c in clones))
        swap = k.stats()["swap"]
    assert results == [0] * 6
    assert all(_last_line(c) == expected for c in clones)
    assert swap["swap_outs"] >= 3 and swap["swap_ins"] >= 3, swap


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


async def test_monitors_keep_their_state_across_snapshot_and_restore(tmp_path: Path) -> None:
    need_image("test-swapsum")
    path = tmp_path / "watched.snap"
    async with Kernel() as k:
        before = _Counter()
        vm = await k.spawn("test-swapsum", cmdline="kib=64 rounds=50", memory="1M", monitors=[before])
        await vm.until_idle()
        await vm.pause()
        await k.snapshot(vm, path)
        counted = before.count
        assert counted > 0
        vm.kill()
        with pytest.raises(VmKilledError):
            await vm.wait()
        with pytest.raises(ConfigError, match="does not match"):
            await k.restore(path, monitors=[_Other()])
        after = _Counter()
        again = await k.restore(path, monitors=[after])
        assert after.count >= counted  # given back before the VM ran again
        assert await again.wait() == 0
        assert after.count > counted
        clones_seen: list[_Counter] = []

        def fresh() -> list[Monitor]:
            clones_seen.append(_Counter())
            return [clones_seen[-1]]

        clones = await k.clone(path, 2, monitors=fresh)
        for c in clones:
            assert await c.wait() == 0
        assert len(clones_seen) == 2 and all(m.count > counted for m in clones_seen)
