"""Debian's busybox-static for i386, unmodified, in Denali VMs: every applet's output and
exit status must equal the same command's under qemu-i386 (the reference).

Each case is a list of steps, each step one VM booted on the same kept overlay of a
packed test tree (so a later step sees what an earlier one wrote: the personality's
file-system record persisted it), and, for qemu, one run in a host copy of the tree.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from denali.devices.disk import DiskSpec
from denali.kernel import Kernel
from denali.linux import run_linux
from tests.linux.helpers import ENV, make_tree, need_busybox, need_qemu, pack, qemu_run

Step = tuple[list[str], bytes]  # argv after "busybox", stdin

# (name, steps, compare sorted lines?)
CASES: list[tuple[str, list[Step], bool]] = [
    ("sha256sum", [(["sha256sum", "data.bin", "words.txt"], b"")], False),
    ("md5sum", [(["md5sum", "data.bin", "small.bin"], b"")], False),
    ("sha1sum", [(["sha1sum", "words.txt"], b"")], False),
    ("wc", [(["wc", "words.txt", "nums.txt"], b"")], False),
    ("wc-stdin", [(["wc", "-l"], b"a\nb\nc\n")], False),
    ("sort", [(["sort", "words.txt"], b"")], False),
    ("sort-n", [(["sort", "-n", "-r", "nums.txt"], b"")], False),
    ("uniq", [(["uniq", "-c", "sorted.txt"], b"")], False),
    ("grep", [(["grep", "-n", "foo", "words.txt"], b"")], False),
    ("grep-nomatch", [(["grep", "zzz", "words.txt"], b"")], False),
    ("grep-cv", [(["grep", "-c", "-v", "a", "words.txt"], b"")], False),
    ("sed", [(["sed", "-e", "s/a/A/g", "-e", "3d", "words.txt"], b"")], False),
    ("awk-sum", [(["awk", "{s += $1} END {print s, NR, s / NR}", "nums.txt"], b"")], False),
    ("awk-fields", [(["awk", "-F:", '{printf "%s %d %.2f\\n", $1, NF, $3 * 2}', "colon.txt"], b"")], False),
    ("tr", [(["tr", "a-z", "A-Z"], b"hello world\nfoo bar\n")], False),
    ("cut", [(["cut", "-d", " ", "-f", "2", "words.txt"], b"")], False),
    ("head", [(["head", "-n", "5", "words.txt"], b"")], False),
    ("tail", [(["tail", "-n", "3", "words.txt"], b"")], False),
    ("ls", [(["ls", "dir", "dir/sub"], b"")], False),
    ("cat", [(["cat", "dir/a.txt", "dir/b.log"], b"")], False),
    ("cat-missing", [(["cat", "nope.txt"], b"")], False),
    (
        "cp",
        [
            (["cp", "words.txt", "copy.txt"], b""),
            (["cmp", "words.txt", "copy.txt"], b""),
            (["sha256sum", "copy.txt"], b""),
        ],
        False,
    ),
    (
        "mv",
        [
            (["mv", "nums.txt", "dir/moved.txt"], b""),
            (["ls", ".", "dir"], b""),
            (["tail", "-n", "2", "dir/moved.txt"], b""),
        ],
        False,
    ),
    ("rm", [(["rm", "small.bin", "dir/a.txt"], b""), (["ls", ".", "dir"], b"")], False),
    ("mkdir", [(["mkdir", "-p", "new/a/b"], b""), (["find", "new"], b"")], False),
    ("find", [(["find", "dir", "-name", "*.txt"], b"")], True),
    ("find-type", [(["find", ".", "-type", "d"], b"")], True),
    ("tar-t", [(["tar", "-tvf", "archive.tar"], b"")], False),
    (
        "tar-x",
        [
            (["tar", "-xf", "archive.tar"], b""),
            (["cat", "pkg/readme.txt", "pkg/lib/code.c"], b""),
            (["find", "pkg"], b""),
        ],
        True,
    ),
    ("tar-c", [(["tar", "-cf", "out.tar", "dir/sub"], b""), (["tar", "-tf", "out.tar"], b"")], True),
    ("gzip", [(["gzip", "-c", "words.txt"], b"")], False),
    (
        "gzip-file",
        [
            (["gzip", "-k", "words.txt"], b""),
            (["gunzip", "-c", "words.txt.gz"], b""),
            (["sha256sum", "words.txt.gz"], b""),
        ],
        False,
    ),
    ("gunzip", [(["gunzip", "-c", "words.gz"], b"")], False),
    ("date", [(["date", "-u", "-d", "@1234567890"], b"")], False),
    ("date-fmt", [(["date", "-u", "-d", "@1700000000", "+%Y-%m-%d %H:%M:%S %j %a"], b"")], False),
    ("printf", [(["printf", "%s-%d-%5.2f|%x\\n", "abc", "42", "3.14159", "255"], b"")], False),
    ("seq", [(["seq", "1", "3", "20"], b"")], False),
    ("seq-down", [(["seq", "5", "-1", "1"], b"")], False),
    ("expr", [(["expr", "3", "+", "4", "*", "5"], b"")], False),
    ("expr-false", [(["expr", "0", "+", "0"], b"")], False),
    ("od", [(["od", "-A", "x", "-t", "x1z", "small.bin"], b"")], False),
    ("basename", [(["basename", "/a/b/c.txt", ".txt"], b"")], False),
    ("dirname", [(["dirname", "/a/b/c.txt"], b"")], False),
    ("env", [(["env"], b"")], True),  # qemu-i386 passes the environment reversed
    ("true", [(["true"], b"")], False),
    ("false", [(["false"], b"")], False),
    ("echo", [(["echo", "-e", "a\\tb"], b"")], False),
    ("base64", [(["base64", "small.bin"], b"")], False),
    ("rev", [(["rev", "dir/b.log"], b"")], False),
    ("nl", [(["nl", "dir/sub/c.txt"], b"")], False),
    ("stat", [(["stat", "-c", "%s %F %a %n", "words.txt", "dir"], b"")], False),
    (
        "dd",
        [
            (["dd", "if=data.bin", "of=part.bin", "bs=1024", "count=7", "skip=3"], b""),
            (["md5sum", "part.bin"], b""),
        ],
        False,
    ),
    (
        "touch-ln",
        [
            (["touch", "empty"], b""),
            (["ln", "-s", "words.txt", "link"], b""),
            (["readlink", "link"], b""),
            (["wc", "-c", "link", "empty"], b""),
        ],
        False,
    ),
    (
        "truncate",
        [
            (["truncate", "-s", "5000", "dir/a.txt"], b""),
            (["wc", "-c", "dir/a.txt"], b""),
            (["md5sum", "dir/a.txt"], b""),
        ],
        False,
    ),
    ("cksum", [(["cksum", "data.bin"], b"")], False),
    ("hexdump", [(["hexdump", "-C", "small.bin"], b"")], False),
    ("xxd", [(["xxd", "small.bin"], b"")], False),
    ("comm", [(["comm", "-12", "sorted.txt", "sorted.txt"], b"")], False),
    ("fold", [(["fold", "-w", "7", "dir/sub/deep/d.txt"], b"")], False),
    ("paste", [(["paste", "-d", ",", "dir/a.txt", "dir/b.log"], b"")], False),
    ("tac", [(["tac", "dir/sub/c.txt"], b"")], False),
    ("sum", [(["sum", "words.txt"], b"")], False),
    ("strings", [(["strings", "-n", "6", "data.bin"], b"")], False),
    ("diff", [(["diff", "words.txt", "sorted.txt"], b"")], False),
    (
        "sh",
        [
            (
                [
                    "sh",
                    "-c",
                    'for i in 1 2 3; do echo "n=$i"; done; echo $((6 * 7)); read l; echo "got $l"; '
                    "test -f words.txt && echo yes; cd dir; echo ${PWD##*/}; exit 3",
                ],
                b"a line\n",
            )
        ],
        False,
    ),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bbtree")
    src = base / "tree"
    make_tree(src)
    return src, pack(src, base / "tree.img")


@pytest.fixture
async def kernel() -> AsyncIterator[Kernel]:
    async with Kernel() as k:
        yield k


def _norm(data: bytes, sort: bool) -> bytes:
    return b"\n".join(sorted(data.split(b"\n"))) if sort else data


@pytest.mark.parametrize(("name", "steps", "sort"), CASES, ids=[c[0] for c in CASES])
async def test_applet_matches_qemu(
    kernel: Kernel, tree: tuple[Path, Path], tmp_path: Path, name: str, steps: list[Step], sort: bool
) -> None:
    busybox = need_busybox()
    qemu = need_qemu()
    src, image = tree
    host = tmp_path / "host"
    shutil.copytree(src, host, symlinks=True)
    overlay = tmp_path / "vm.overlay"
    disk = DiskSpec(str(image), name="root", mode="overlay-keep", overlay=str(overlay))
    for argv, stdin in steps:
        full = ["busybox", *argv]
        ref = qemu_run(qemu, busybox, full, host, stdin)
        got = await run_linux(busybox, full, kernel=kernel, env=ENV, disks=[disk], cwd="/", stdin=stdin)
        assert (got.status, _norm(got.stdout, sort)) == (ref.status, _norm(ref.stdout, sort)), (
            f"{name}: {argv}: stderr: vm={got.stderr!r} qemu={ref.stderr!r}"
        )
        assert got.stderr == ref.stderr, f"{name}: {argv}"


def test_at_least_thirty_applets() -> None:
    applets = {argv[0] for _, steps, _ in CASES for argv, _ in steps}
    assert len(applets) >= 30, sorted(applets)
