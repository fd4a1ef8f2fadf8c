"""Base images and every other disk file: anything but a regular file is refused before it
is opened (a FIFO would block the opening thread for ever), with a ``DiskError``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from denali.devices.disk import DiskSpec, list_image
from denali.devices.disk import overlay as O
from denali.devices.disk.backend import open_backend
from denali.devices.disk.base import acquire_base, open_base_count
from denali.errors import DiskError
from tests.devices.disk.conftest import make_image

KINDS = {
    "fifo": "a FIFO",
    "socket": "a socket",
    "char-device": "a character device",
    "block-device": "a block device",
    "directory": "a directory",
}


@contextlib.contextmanager
def special_file(tmp_path: Path, kind: str) -> Iterator[Path]:
    """A file of ``kind`` at a fresh path. A FIFO is opened read-write (it then has a reader
    and a writer) when the test ends, so that an open stuck on it returns."""
    path = tmp_path / f"special-{kind}.img"
    held: socket.socket | None = None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held.bind(str(path))
    elif kind == "char-device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero: reads never end
    elif kind == "block-device":
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 0))  # a loop device
    else:
        path.mkdir()
    try:
        yield path
    finally:
        if kind == "fifo":
            os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        if held is not None:
            held.close()


async def refused(make: Callable[[], Awaitable[object]], path: Path) -> DiskError:
    """The DiskError ``make()`` raises, which must come at once (2 s: a stuck open fails)."""
    with pytest.raises(DiskError) as info:
        await asyncio.wait_for(make(), 2.0)
    assert info.value.path == str(path)
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("kind", KINDS)
async def test_a_disk_image_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    with special_file(tmp_path, kind) as path:
        for mode in ("ro", "rw", "overlay-discard", "overlay-keep"):
            spec = DiskSpec(
                str(path),
                mode=mode,  # type: ignore[arg-type]
                overlay=str(tmp_path / "x.ovl") if mode == "overlay-keep" else None,
            )
            err = await refused(lambda s=spec: open_backend(s), path)  # type: ignore[misc]
            assert f"{KINDS[kind]}, not a regular file" in str(err), err
        await refused(lambda: acquire_base(str(path)), path)
        await refused(lambda: list_image(str(path)), path)
        await refused(lambda: O.inspect(str(path)), path)
    assert open_base_count() == 0
    assert not (tmp_path / "x.ovl").exists()


@pytest.mark.parametrize("kind", ("fifo", "char-device", "socket"))
async def test_a_kept_overlay_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    base = make_image(tmp_path / "base.img", 8, seed=1)
    with special_file(tmp_path, kind) as ov:
        spec = DiskSpec(str(base), mode="overlay-keep", overlay=str(ov))
        err = await refused(lambda: open_backend(spec), ov)
        assert "not a regular file" in str(err), err
    assert open_base_count() == 0


async def test_a_regular_file_behind_a_symbolic_link_is_accepted(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.img", 8, seed=2)
    link = tmp_path / "link.img"
    link.symlink_to(base)
    b = await open_backend(DiskSpec(str(link), mode="ro"))
    try:
        assert await b.read(0, 1) == base.read_bytes()[:4096]
    finally:
        await b.close()
