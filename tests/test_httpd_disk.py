"""httpd serves the files of a packed directory from its disk, byte-exact."""

from __future__ import annotations

import asyncio
import random
import re
import zlib
from pathlib import Path

from denali.devices.disk import DiskSpec
from denali.devices.disk.tools import pack_directory
from denali.kernel import Kernel
from tests.conftest import need_image


async def test_httpd_serves_packed_files(tmp_path: Path) -> None:
    need_image("httpd")
    need_image("httpget")
    site = tmp_path / "site"
    (site / "docs").mkdir(parents=True)
    rng = random.Random(5)
    files = {
        "index.html": b"<h1>denali</h1>\n",
        "docs/a.txt": b"a" * 2258,
        "docs/big.bin": bytes(rng.randrange(256) for _ in range(150_000)),
    }
    for name, data in files.items():
        (site / name).write_bytes(data)
    image = tmp_path / "site.img"
    await pack_directory(str(site), str(image))
    async with Kernel() as k:
        srv = await k.spawn(
            "httpd", cmdline="ip=10.0.0.1/24", disks=[DiskSpec(str(image), name="site", mode="ro")]
        )
        while "listening" not in srv.console.text():
            assert not srv.done, srv.console.text()
            await asyncio.sleep(0.01)
        for path, name in (
            ("/", "index.html"),
            ("/docs/big.bin", "docs/big.bin"),
            ("/docs/a.txt", "docs/a.txt"),
        ):
            cli = await k.spawn("httpget", cmdline=f"ip=10.0.0.2/24 url=http://10.0.0.1{path} count=2 conc=1")
            assert await asyncio.wait_for(cli.wait(), 60) == 0, cli.console.text()
            m = re.search(r"bytes=(\d+) .*crc=([0-9a-f]{8})", cli.console.text())
            assert m and int(m.group(1)) == 2 * len(files[name])
            assert int(m.group(2), 16) == zlib.crc32(files[name])  # the bytes themselves
        assert "serving 3 files from disk site" in srv.console.text()
