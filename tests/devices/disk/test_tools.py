"""denali disk create / pack / ls, and the DNLFS format: valid images and refused ones."""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from pathlib import Path

import pytest

from denali.cli.disk import run
from denali.devices.disk import create_image, list_image, pack_directory
from denali.devices.disk import fsformat as F
from denali.errors import DiskError
from tests.devices.disk.conftest import BLOCK, names_in


def tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"hello\n",
        "empty": b"",
        "sub/b.bin": bytes(range(256)) * 40,
        "sub/deeper/exact.blk": b"\x5a" * BLOCK,
        "zz": os.urandom(3 * BLOCK + 17),
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


async def test_create_is_sparse_and_blank(tmp_path: Path) -> None:
    img = tmp_path / "blank.img"
    await create_image(str(img), 64 << 20)
    st = img.stat()
    assert st.st_size == 64 << 20
    assert st.st_blocks * 512 < 1 << 20  # sparse
    listing = await list_image(str(img))
    assert listing.kind == "blank"
    with pytest.raises(DiskError, match="already exists"):
        await create_image(str(img), 4096)
    await create_image(str(img), 8192, force=True)
    assert img.stat().st_size == 8192


@pytest.mark.parametrize("size", [0, 1000, 4097, -4096, (1 << 40) + 4096])
async def test_create_bad_size(tmp_path: Path, size: int) -> None:
    with pytest.raises(DiskError, match="multiple of 4096"):
        await create_image(str(tmp_path / "x.img"), size)
    assert not (tmp_path / "x.img").exists()


async def test_pack_and_ls_roundtrip(tmp_path: Path) -> None:
    files = tree(tmp_path / "src")
    img = tmp_path / "fs.img"
    entries = await pack_directory(str(tmp_path / "src"), str(img), label="root")
    assert [e.path for e in entries] == sorted(files, key=str.encode)
    listing = await list_image(str(img), verify=True)
    assert listing.kind == "dnlfs"
    assert listing.superblock is not None and listing.superblock.label == "root"
    raw = img.read_bytes()
    for e in listing.entries:
        data = files[e.path]
        assert e.size == len(data)
        assert e.crc32 == zlib.crc32(data)
        if data:
            assert raw[e.first_block * BLOCK : e.first_block * BLOCK + e.size] == data
        else:
            assert e.first_block == 0
    # smallest image that holds it: superblock + 1 directory block + the data
    data_blocks = sum((len(d) + BLOCK - 1) // BLOCK for d in files.values())
    assert len(raw) == (2 + data_blocks) * BLOCK


async def test_pack_with_size_and_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    img = tmp_path / "e.img"
    await pack_directory(str(tmp_path / "empty"), str(img), size=1 << 20)
    listing = await list_image(str(img))
    assert listing.kind == "dnlfs" and listing.entries == ()
    assert img.stat().st_size == 1 << 20
    tree(tmp_path / "src")
    with pytest.raises(DiskError, match="need"):
        await pack_directory(str(tmp_path / "src"), str(tmp_path / "small.img"), size=2 * BLOCK)
    assert not (tmp_path / "small.img").exists()


async def test_many_files_span_directory_blocks(tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(70):  # 70 * 128 bytes = 3 directory blocks
        (src / f"f{i:03d}").write_bytes(b"%d" % i)
    img = tmp_path / "m.img"
    await pack_directory(str(src), str(img))
    listing = await list_image(str(img), verify=True)
    assert listing.superblock is not None and listing.superblock.dir_blocks == 3
    assert len(listing.entries) == 70


async def test_pack_refuses_what_it_cannot_store(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / ("x" * 96)).write_bytes(b"long")
    with pytest.raises(DiskError, match="cannot store path"):
        await pack_directory(str(src), str(tmp_path / "o.img"))
    (src / ("x" * 96)).unlink()
    os.mkfifo(src / "fifo")
    with pytest.raises(DiskError, match="regular files"):
        await pack_directory(str(src), str(tmp_path / "o.img"))
    (src / "fifo").unlink()
    (src / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DiskError, match="dangling"):
        await pack_directory(str(src), str(tmp_path / "o.img"))
    with pytest.raises(DiskError, match="not a directory"):
        await pack_directory(str(tmp_path / "nope"), str(tmp_path / "o.img"))
    assert not (tmp_path / "o.img").exists()
    assert [n for n in names_in(tmp_path) if ".tmp-" in n] == []


async def packed(tmp_path: Path) -> tuple[Path, bytearray]:
    tree(tmp_path / "src")
    img = tmp_path / "fs.img"
    await pack_directory(str(tmp_path / "src"), str(img))
    return img, bytearray(img.read_bytes())


def _resign_superblock(raw: bytearray) -> None:
    raw[F.SUPERBLOCK.size : F.SUPERBLOCK.size + 4] = struct.pack("<I", zlib.crc32(raw[: F.SUPERBLOCK.size]))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("truncate-odd", "not a multiple of 4096"),
        ("truncate-block", "spans 11 blocks but the image has 10"),
        ("empty", "empty file"),
        ("magic", "not a DNLFS"),
        ("sb-bit", "superblock is corrupt"),
        ("dir-bit", "directory is corrupt"),
        ("file-bit", "is corrupt \\(CRC-32"),
        ("version", "version 9"),
        ("layout", "inconsistent layout"),
        ("overlap", "outside the data area or overlaps"),
        ("unsorted", "not sorted"),
        ("dotdot", "invalid path"),
    ],
)
async def test_corrupt_images_are_refused(tmp_path: Path, damage: str, match: str) -> None:
    img, raw = await packed(tmp_path)
    sb_fields = list(F.SUPERBLOCK.unpack_from(raw))
    if damage == "truncate-odd":
        raw = raw[:-100]
    elif damage == "truncate-block":
        raw = raw[:-BLOCK]
    elif damage == "empty":
        raw = bytearray()
    elif damage == "magic":
        raw[0:8] = b"NOTDNLFS"
    elif damage == "sb-bit":
        raw[20] ^= 1
    elif damage == "dir-bit":
        raw[BLOCK + 3] ^= 0x40
    elif damage == "file-bit":
        first = F.ENTRY.unpack_from(raw, BLOCK + 4 * 128)[1]  # 'zz'
        raw[first * BLOCK] ^= 1
    elif damage in ("version", "layout"):
        if damage == "version":
            sb_fields[1] = 9
        else:
            sb_fields[5] = 7  # dir_blocks
        raw[: F.SUPERBLOCK.size] = F.SUPERBLOCK.pack(*sb_fields)
        _resign_superblock(raw)
    else:
        entries = [list(F.ENTRY.unpack_from(raw, BLOCK + i * 128)) for i in range(sb_fields[6])]
        if damage == "overlap":
            entries[2][1] -= 1  # sub/b.bin starts one block early
        elif damage == "unsorted":
            entries[0], entries[1] = entries[1], entries[0]
        else:
            entries[0][0] = b"../etc/passwd"
        table = b"".join(F.ENTRY.pack(*e) for e in entries)
        raw[BLOCK : BLOCK + len(table)] = table
        sb_fields[9] = zlib.crc32(table)
        raw[: F.SUPERBLOCK.size] = F.SUPERBLOCK.pack(*sb_fields)
        _resign_superblock(raw)
    img.write_bytes(bytes(raw))
    with pytest.raises(DiskError, match=match):
        await list_image(str(img), verify=True)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = str(tmp_path / "c.img")
    assert run(["create", img, "--size", "1M"]) == 0
    assert run(["ls", img]) == 0
    assert "no file system (blank)" in capsys.readouterr().out
    tree(tmp_path / "src")
    fs = str(tmp_path / "fs.img")
    assert run(["pack", str(tmp_path / "src"), fs, "--label", "L", "--size", "1M"]) == 0
    assert run(["ls", fs, "--verify"]) == 0
    out = capsys.readouterr().out
    hello_crc = zlib.crc32(b"hello\n")
    assert "label 'L'" in out and "sub/deeper/exact.blk" in out and f"{hello_crc:08x}" in out
    assert run(["pack", str(tmp_path / "src"), fs]) == 2
    assert "already exists" in capsys.readouterr().err
    Path(fs).write_bytes(Path(fs).read_bytes()[:5000])
    assert run(["ls", fs]) == 2
    assert "not a multiple of 4096" in capsys.readouterr().err
    assert run(["create", img, "--size", "12Q", "--force"]) == 2
    assert run(["frobnicate"]) == 2
    assert run(["ls", str(tmp_path / "missing.img")]) == 2


async def test_pack_and_verify_report_progress(tmp_path: Path) -> None:
    files = tree(tmp_path / "src")
    total = sum(len(d) for d in files.values())
    seen: list[tuple[int, int]] = []
    img = str(tmp_path / "p.img")
    await pack_directory(str(tmp_path / "src"), img, progress=lambda done, tot: seen.append((done, tot)))
    assert seen and seen[-1] == (total, total)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(seen)) and {t for _, t in seen} == {total}
    checked: list[tuple[int, int]] = []
    await list_image(img, verify=True, progress=lambda done, tot: checked.append((done, tot)))
    assert checked[-1] == (total, total)


def test_cli_progress_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    from denali import progress
    from denali.progress import JobProgress

    files = tree(tmp_path / "src")
    total = sum(len(d) for d in files.values())
    img = str(tmp_path / "fs.img")
    assert run(["pack", str(tmp_path / "src"), img]) == 0  # not a terminal, not asked: quiet
    assert capsys.readouterr().err == ""
    # a job that takes "more than a second": no delay, a line per update
    # (the command imports JobProgress when it shows one, so the module's is replaced)
    monkeypatch.setattr(progress, "JobProgress", functools.partial(JobProgress, delay=0.0, interval=0.0))
    assert run(["pack", str(tmp_path / "src"), img, "--force", "--progress"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(ln.startswith(f"denali: packing {img}: ") for ln in lines)
    assert f"/{total / 1024:,.1f} KiB (100%)" in lines[-1]
    assert run(["ls", img, "--verify", "--progress"]) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"denali: verifying {img}: ")
    assert run(["pack", str(tmp_path / "src"), img, "--force", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
