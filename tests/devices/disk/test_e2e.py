"""Guests using disks end to end: the test-disk guest under a real kernel, real files."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import zlib
from pathlib import Path

import pytest

from denali import abi
from denali.devices.disk import DiskSpec, create_image, pack_directory
from denali.devices.disk.backend import open_backend
from denali.kernel import Kernel
from tests.devices.disk.conftest import fd_count, names_in
from tests.devices.disk.guest import (
    ConsoleWatch,
    disk_test_image,
    finish,
    guest_pattern,
    run_guest,
    spawn_with_disks,
)

BLOCK = abi.DISK_BLOCK_SIZE


@pytest.fixture
def guest_elf() -> Path:
    return disk_test_image()


@pytest.fixture
async def images(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "index.html").write_bytes(b"<h1>denali</h1>\n" * 300)
    (src / "docs" / "big.bin").write_bytes(os.urandom(300_000))
    (src / "empty").write_bytes(b"")
    root = tmp_path / "root.img"
    await pack_directory(str(src), str(root), label="root")
    data = tmp_path / "data.img"
    await create_image(str(data), 1 << 20)
    return {"root": root, "data": data, "src": src}


async def test_everything_on_one_vm(
    kernel: Kernel, guest_elf: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    big = (images["src"] / "docs" / "big.bin").read_bytes()
    before = images["data"].read_bytes()
    out = await run_guest(
        kernel,
        guest_elf,
        [
            DiskSpec(str(images["data"]), overlay_dir=str(tmp_path)),
            DiskSpec(str(images["root"]), mode="ro"),
        ],
        "ops=list,write,verify,flush,async,hostile,readonly,absent,ls,file "
        f"count=40 seed=3 path=/docs/big.bin crc={zlib.crc32(big):08x}",
    )
    assert out.status == 0, out.console
    assert "SUCCESS" in out.console
    assert "disk 0 data 256 0" in out.console and "disk 1 root" in out.console
    assert f"file /docs/big.bin size {len(big)} crc32 {zlib.crc32(big):08x}" in out.console
    assert "ls empty 0 00000000" in out.console and "label 'root', 3 files" in out.console
    assert images["data"].read_bytes() == before  # the overlay took the writes
    assert [n for n in names_in(tmp_path) if n.startswith("denali-overlay")] == []


async def test_kept_overlay_persists_discarded_does_not(
    kernel: Kernel, guest_elf: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    ovl = tmp_path / "vm1.overlay"
    keep = DiskSpec(str(images["data"]), mode="overlay-keep", overlay=str(ovl))
    out = await run_guest(kernel, guest_elf, [keep], "ops=write,flush seed=5 start=100 count=20")
    assert out.status == 0, out.console
    out = await run_guest(kernel, guest_elf, [keep], "ops=verify seed=5 start=100 count=20")
    assert out.status == 0, out.console
    discard = DiskSpec(str(images["data"]), mode="overlay-discard", overlay_dir=str(tmp_path))
    out = await run_guest(kernel, guest_elf, [discard], "ops=write seed=6 start=100 count=20")
    assert out.status == 0, out.console
    out = await run_guest(kernel, guest_elf, [discard], "ops=zeros start=100 count=20")
    assert out.status == 0, out.console
    assert images["data"].read_bytes() == bytes(1 << 20)


async def test_vms_sharing_a_base_never_see_each_others_writes(
    kernel: Kernel, guest_elf: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    n = 6
    specs = [
        DiskSpec(str(images["data"]), name="data", mode="overlay-keep", overlay=str(tmp_path / f"vm{i}.ovl"))
        if i % 2
        else DiskSpec(str(images["data"]), name="data", overlay_dir=str(tmp_path))
        for i in range(n)
    ]
    vms = [
        await spawn_with_disks(
            kernel, guest_elf, [specs[i]], f"ops=write,verify,async seed={100 + i} start=7 count=33"
        )
        for i in range(n)
    ]
    outs = await asyncio.gather(*(finish(vm) for vm in vms))
    for o in outs:
        assert o.status == 0, o.console
    for i in range(1, n, 2):  # each kept overlay holds its own VM's writes only
        out = await run_guest(kernel, guest_elf, [specs[i]], f"ops=verify seed={100 + i} start=7 count=33")
        assert out.status == 0, out.console
    assert images["data"].read_bytes() == bytes(1 << 20)


async def test_rw_disk_and_flush_reach_the_image(
    kernel: Kernel, guest_elf: Path, images: dict[str, Path]
) -> None:
    out = await run_guest(
        kernel,
        guest_elf,
        [DiskSpec(str(images["data"]), mode="rw")],
        "ops=write,flush seed=9 start=250 count=6",
    )
    assert out.status == 0, out.console
    raw = images["data"].read_bytes()
    for b in range(250, 256):
        assert raw[b * BLOCK : (b + 1) * BLOCK] == guest_pattern(9, b)
    assert raw[: 250 * BLOCK] == bytes(250 * BLOCK)


async def test_flush_makes_overlay_writes_durable_before_the_vm_ends(
    kernel: Kernel, guest_elf: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    ovl = tmp_path / "k.ovl"
    watch = ConsoleWatch()
    vm = await spawn_with_disks(
        kernel,
        guest_elf,
        [DiskSpec(str(images["data"]), mode="overlay-keep", overlay=str(ovl))],
        "ops=write,flush,watch seed=11 start=3 count=5",
        console=watch,
    )
    await watch.wait_for("watching", vm)
    shutil.copyfile(ovl, tmp_path / "snapshot.ovl")  # the file as the host would find it now
    vm.kill()
    with pytest.raises(Exception, match="stopped by the host"):
        await finish(vm)
    be = await open_backend(
        DiskSpec(str(images["data"]), mode="overlay-keep", overlay=str(tmp_path / "snapshot.ovl"))
    )
    try:
        for b in range(3, 8):
            assert await be.read(b, 1) == guest_pattern(11, b)
    finally:
        await be.close()


@pytest.mark.parametrize(
    "cut", ["truncate-rw", "remove-rw", "truncate-base", "truncate-overlay", "remove-overlay"]
)
async def test_disk_file_cut_under_a_running_vm(
    kernel: Kernel, guest_elf: Path, images: dict[str, Path], tmp_path: Path, cut: str
) -> None:
    ovl = tmp_path / "k.ovl"
    if cut.endswith("-rw"):
        spec = DiskSpec(str(images["data"]), mode="rw")
    elif cut == "truncate-base":
        spec = DiskSpec(str(images["data"]), overlay_dir=str(tmp_path))
    else:
        spec = DiskSpec(str(images["data"]), mode="overlay-keep", overlay=str(ovl))
    bystander = await spawn_with_disks(
        kernel,
        guest_elf,
        [DiskSpec(str(images["root"]), name="data", mode="ro")],
        "ops=verify,zeros count=1 start=9",
    )
    watch = ConsoleWatch()
    start = 200 if cut.endswith("overlay") else 10
    vm = await spawn_with_disks(
        kernel, guest_elf, [spec], f"ops=write,watch start={start} count=1", console=watch
    )
    await watch.wait_for("watching", vm)
    if cut in ("truncate-rw", "truncate-base"):
        os.truncate(images["data"], BLOCK * 5)
    elif cut == "remove-rw":
        os.unlink(images["data"])
    elif cut == "truncate-overlay":
        os.truncate(ovl, BLOCK * 100)
    else:
        os.unlink(ovl)
    out = await finish(vm)
    other = await finish(bystander)
    assert out.status == 0, out.console
    assert f"io-error {int(abi.Result.IO)}" in out.console and "SUCCESS" in out.console
    errors = vm.close_errors
    if cut.endswith("overlay"):  # its bitmap could not be saved: Vm.wait() raises it
        assert len(errors) == 1 and "bitmap not saved" in str(errors[0])
        assert out.close_error is not None and "bitmap not saved" in str(out.close_error)
    else:
        assert errors == [] and out.close_error is None
    assert other.status == 1 and "block does not hold the pattern" in other.console  # ran normally


async def test_guest_refuses_a_corrupt_file_system(
    kernel: Kernel, guest_elf: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    raw = bytearray(images["root"].read_bytes())
    raw[BLOCK + 100] ^= 1  # a directory byte
    bad = tmp_path / "bad.img"
    bad.write_bytes(bytes(raw))
    out = await run_guest(
        kernel, guest_elf, [DiskSpec(str(bad), name="root", mode="ro")], "ops=file path=index.html"
    )
    assert out.status == 1
    assert "mount: not a DNLFS image, or a corrupt one" in out.console
    out = await run_guest(
        kernel, guest_elf, [DiskSpec(str(images["data"]), name="root", mode="ro")], "ops=ls"
    )
    assert out.status == 1 and "mount: not a DNLFS image" in out.console


@pytest.mark.parametrize(("threads", "count"), [(40, 1), (6, 300)])
async def test_guest_threads_share_a_disk(
    kernel: Kernel, guest_elf: Path, tmp_path: Path, threads: int, count: int
) -> None:
    """More blocked writers than the queue holds (FULL, retried), and requests split in two."""
    big = tmp_path / "big.img"
    await create_image(str(big), 8 << 20)
    out = await run_guest(
        kernel,
        guest_elf,
        [DiskSpec(str(big), name="data", overlay_dir=str(tmp_path))],
        f"ops=threads,threads,verify threads={threads} count={count} start=5 seed=21",
    )
    assert out.status == 0, out.console
    assert f"threads {threads} x {count} blocks" in out.console


async def test_vm_without_disks(kernel: Kernel, guest_elf: Path) -> None:
    out = await run_guest(kernel, guest_elf, [], "ops=absent,list absent=data")
    assert out.status == 0, out.console
    assert "disk 0" not in out.console


async def test_closing_the_kernel_closes_every_disk(
    guest_elf: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    """Kernel.spawn(disks=...) owns the disks: closing the kernel mid-I/O leaves nothing open."""
    if "disks" not in inspect.signature(Kernel.spawn).parameters:
        pytest.skip("Kernel.spawn has no disks= parameter yet (kernel wiring pending)")
    before = fd_count()
    ovl = tmp_path / "k.ovl"
    async with Kernel(slice_us=2000) as k:
        watches = []
        for i in range(4):
            watch = ConsoleWatch()
            spec = (
                DiskSpec(str(images["data"]), mode="overlay-keep", overlay=str(ovl))
                if i == 0
                else DiskSpec(str(images["data"]), overlay_dir=str(tmp_path))
            )
            vm = await k.spawn(
                str(guest_elf),
                cmdline="ops=write,watch count=3 seed=2",
                nic=False,
                disks=[spec],
                console=watch,
            )  # type: ignore[call-arg]
            watches.append((watch, vm))
        for watch, vm in watches:
            await watch.wait_for("watching", vm)
    assert fd_count() == before
    assert [n for n in names_in(tmp_path) if n.startswith("denali-overlay")] == []
    be = await open_backend(DiskSpec(str(images["data"]), mode="overlay-keep", overlay=str(ovl)))
    try:  # the kept overlay's bitmap was saved when the kernel closed it
        assert await be.read(0, 1) == guest_pattern(2, 0)
    finally:
        await be.close()
