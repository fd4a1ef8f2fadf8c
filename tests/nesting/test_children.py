"""Recursive VMs on real guests: nesting to depth 3, the two example monitors, quotas,
a destroyed subtree, a faulting child reported to its parent (docs/virtual-architecture.md,
"Child VMs"; denali/devices/children.py, denali/nesting.py)."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from denali import lowlevel
from denali.devices.disk import DiskSpec
from denali.errors import SubtreeError, VmKilledError, VmStateError
from denali.images import resolve
from denali.kernel import Kernel
from denali.vm import Vm, VmState
from tests.conftest import need_image

M = 2 << 20


def disk_of(image: str, path: Path) -> str:
    """The ELF of ``image`` padded to whole disk blocks: a child image on a disk."""
    data = Path(resolve(image).path).read_bytes()
    path.write_bytes(data + b"\0" * (-len(data) % 4096))
    return str(path)


async def _nest(k: Kernel, tmp_path: Path, cmdline: str, grant: int) -> tuple[int | None, str]:
    img = disk_of("test-nest", tmp_path / "nest.img")
    vm = await k.spawn(
        "test-nest",
        cmdline=cmdline,
        child_memory=grant,
        nic=False,
        disks=[DiskSpec(img, name="img", mode="ro")],
    )
    status = await vm.wait()
    return status, vm.console.text()


async def test_nesting_to_depth_3_gives_the_right_result_at_each_level(tmp_path: Path) -> None:
    need_image("test-nest")
    seen: list[tuple[int, int]] = []
    async with Kernel() as k:
        orig = k._children._publish

        def publish(vm: Vm) -> None:
            seen.append((vm.id, vm.group))
            orig(vm)

        k._children._publish = publish
        status, text = await _nest(k, tmp_path, f"depth=3 mem={M} quota={3 * M}", 3 * M)
        assert status == 4, text
        for depth in (1, 2, 3):
            assert f"nest: depth={depth} child vm ended status={depth} console_writes=2 ok" in text
            # each parent wrote into its child's memory before the child started
            assert f"nest: depth={depth - 1} loaded=0xa500000{depth}\n" in text
        assert "nest: depth=0 leaf vm=" in text and "FAIL" not in text
        assert len(seen) == 3 and {g for _, g in seen} == {1}  # one CPU group: the root's
        assert len(k.vms) == 0


async def test_a_grant_too_small_for_the_tree_is_refused_at_the_level_that_hits_it(tmp_path: Path) -> None:
    need_image("test-nest")
    async with Kernel() as k:
        # the root may grant 3 levels, but its child passes 2M too little down: depth 1 is refused
        status, text = await _nest(k, tmp_path, f"depth=3 mem={M} quota={2 * M}", 2 * M)
        assert "nest: FAIL depth=1 child_create (code 6)" in text, text  # FULL
        assert status == 102
        status, text = await _nest(k, tmp_path, f"depth=1 mem={M} quota={M}", M - 4096)
        assert "nest: FAIL depth=1 child_create (code 6)" in text and status == 100


async def test_destroying_a_parent_destroys_its_subtree(tmp_path: Path) -> None:
    need_image("test-nest")
    img = disk_of("test-nest", tmp_path / "nest.img")
    async with Kernel() as k:
        other = await k.spawn("test-idle", memory="1M", cmdline="ms=3600000", nic=False)
        root = await k.spawn(
            "test-nest",
            cmdline=f"depth=3 mem={M} quota={3 * M} sleep=1",
            child_memory=3 * M,
            nic=False,
            disks=[DiskSpec(img, name="img", mode="ro")],
        )
        for _ in range(2000):
            if "depth=0 leaf" in root.console.text():
                break
            await asyncio.sleep(0.005)
        kids = [vm for vm in k.vms.values() if vm.group == root.id and vm is not root]
        assert len(kids) == 3
        root.kill()
        with pytest.raises(VmKilledError):
            await root.wait()
        for vm in kids:
            assert vm.state is VmState.KILLED and vm.done
        assert set(k.vms) == {other.id} and other.state is VmState.IDLE


async def test_a_faulting_child_is_reported_to_its_parent_and_stops_nothing_else(tmp_path: Path) -> None:
    need_image("test-nest")
    async with Kernel() as k:
        sentinel = await k.spawn("test-idle", memory="1M", cmdline="ms=3600000", nic=False)
        await sentinel.until_idle()
        before = hashlib.sha256(lowlevel.guest_memory(sentinel).buf).hexdigest()
        status, text = await _nest(k, tmp_path, f"depth=2 mem={M} quota={2 * M} fault=1", 2 * M)
        assert "nest: depth=1 child fault eip=" in text and "address=0x4 " in text, text
        assert "nest: depth=1 child faulted at eip=" in text
        assert status == 51  # level 1 exits 50, the root 51
        assert sentinel.state is VmState.IDLE
        assert hashlib.sha256(lowlevel.guest_memory(sentinel).buf).hexdigest() == before


def _monitor_disks(tmp_path: Path) -> tuple[list[DiskSpec], Path, bytes]:
    data = tmp_path / "data.img"
    content = bytes(range(256)) * 16 * 16
    data.write_bytes(content)
    return (
        [
            DiskSpec(disk_of("test-disk", tmp_path / "child.img"), name="child", mode="ro"),
            DiskSpec(str(data), name="data", mode="rw"),
        ],
        data,
        content,
    )


async def test_the_security_monitor_denies_its_child_disk_writes(tmp_path: Path) -> None:
    need_image("secmon")
    need_image("test-disk")
    disks, data, content = _monitor_disks(tmp_path)
    async with Kernel() as k:
        vm = await k.spawn(
            "secmon", cmdline="-- ops=write,verify count=2", child_memory="8M", disks=disks, nic=False
        )
        status = await vm.wait()
        text = vm.console.text()
    assert "FAIL: disk_write (code 2)" in text  # the child saw INVAL
    assert "secmon: denied 1 disk writes; child exited 1" in text and status == 1
    assert data.read_bytes() == content  # nothing reached the disk


async def test_a_monitor_reads_only_its_own_words_and_passes_the_rest_whole(tmp_path: Path) -> None:
    """The words after "--" are the child's: keys there that the monitors also read
    (quiet, mem, image) are not theirs, and the child gets all of them."""
    need_image("dbgmon")
    need_image("secmon")
    need_image("test-disk")
    theirs = "ops=write,verify count=2 quiet=1 mem=4096 image=nothing"
    ends = {"dbgmon": "dbgmon: child exited 0 after", "secmon": "secmon: denied 1 disk writes"}
    for monitor, want in ends.items():
        disks, _, _ = _monitor_disks(tmp_path)
        async with Kernel() as k:
            vm = await k.spawn(monitor, cmdline=f"-- {theirs}", child_memory="8M", disks=disks, nic=False)
            kids: list[Vm] = []
            for _ in range(2000):
                kids = [c for c in k.vms.values() if c is not vm]
                if kids:
                    break
                await asyncio.sleep(0.001)
            await vm.wait()
            text = vm.console.text()
        (child,) = kids
        assert want in text, text  # its image from disk "child", its 4 MiB default
        assert child.cmdline == theirs
        if monitor == "dbgmon":
            assert any(line.startswith("dbgmon: #") for line in text.splitlines()), text  # not quiet


async def test_the_debugging_monitor_traces_every_hypercall_of_its_child(tmp_path: Path) -> None:
    need_image("dbgmon")
    need_image("test-disk")
    disks, data, content = _monitor_disks(tmp_path)
    async with Kernel() as k:
        vm = await k.spawn(
            "dbgmon", cmdline="-- ops=write,verify count=2", child_memory="8M", disks=disks, nic=False
        )
        kids: list[int] = []
        for _ in range(2000):
            kids = [c for c in k.vms if c != vm.id]
            if kids:
                break
            await asyncio.sleep(0.001)
        child = k.vms[kids[0]]
        status = await vm.wait()
        text = vm.console.text()
    assert status == 0 and "SUCCESS" in text
    traced = [line for line in text.splitlines() if line.startswith("dbgmon: #")]
    assert len(traced) == child.hypercalls  # every one, none twice
    assert f"dbgmon: child exited 0 after {child.hypercalls} hypercalls" in text
    assert "dbgmon: nr=12 count=1" in text  # the one DISK_WRITE
    assert data.read_bytes() != content  # passed through: the write happened


def test_denali_boot_runs_a_monitor_with_its_child_image_on_a_disk(tmp_path: Path) -> None:
    need_image("dbgmon")
    need_image("test-disk")
    child = disk_of("test-disk", tmp_path / "child.img")
    data = tmp_path / "data.img"
    data.write_bytes(bytes(4096 * 4))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "denali",
            "boot",
            "dbgmon",
            "--child-memory",
            "8M",
            "--disk",
            f"child={child}:ro",
            "--disk",
            f"data={data}",
            "-c",
            "quiet=1 -- ops=write count=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "SUCCESS" in r.stdout and "dbgmon: nr=12 count=1" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "denali", "boot", "dbgmon", "--disk", f"child={child}:ro"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 125 and "dbgmon: child_create: code 6" in r.stdout  # no grant: FULL


async def test_a_snapshot_refuses_a_vm_with_children_and_a_child(tmp_path: Path) -> None:
    """A snapshot does not carry a subtree: it is refused with one line naming the
    children (SubtreeError, a VmStateError), and so is one of a child; the VM runs on."""
    need_image("test-nest")
    img = disk_of("test-nest", tmp_path / "nest.img")
    async with Kernel() as k:
        root = await k.spawn(
            "test-nest",
            cmdline=f"depth=1 mem={M} quota={M} sleep=1",
            child_memory=M,
            nic=False,
            disks=[DiskSpec(img, name="img", mode="ro")],
        )
        for _ in range(4000):
            if "depth=0 leaf" in root.console.text():
                break
            await asyncio.sleep(0.005)
        (child,) = [vm for vm in k.vms.values() if vm is not root]
        await root.pause()
        with pytest.raises(SubtreeError) as info:
            await k.snapshot(root, tmp_path / "root.snap")
        msg = str(info.value)
        assert "\n" not in msg and f"live child VM(s) ({child.id})" in msg and "destroy them first" in msg
        assert isinstance(info.value, VmStateError)
        await child.pause()
        with pytest.raises(SubtreeError, match="is a child VM"):
            await k.snapshot(child, tmp_path / "child.snap")
        assert not (tmp_path / "root.snap").exists() and not (tmp_path / "child.snap").exists()
        child.resume()
        root.resume()
        assert root.state is not VmState.PAUSED and not child.done
        root.kill()
        with pytest.raises(VmKilledError):
            await root.wait()
