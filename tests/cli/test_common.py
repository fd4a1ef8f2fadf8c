"""What the subcommands share (denali/cli/common.py): stderr lines that leave whole."""

from __future__ import annotations

import os
import subprocess
import sys
import time

WRITER = """
import sys, time
from denali.cli.common import whole_line_stderr
if sys.argv[1] == "whole":
    whole_line_stderr()
tag, start = sys.argv[2], float(sys.argv[3])
while time.time() < start:
    pass
i = 0
while time.time() < start + 0.3:
    print(f"denali: gdb: VM {tag} listening on 127.0.0.1:{i}", file=sys.stderr, flush=True)
    i += 1
"""


def interleaved(mode: str) -> list[str]:
    """Two processes printing to one stderr pipe at the same time, as a host's kernels
    do: the lines that came out."""
    r, w = os.pipe()
    start = str(time.time() + 1.0)  # both past their start-up by then
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, mode, tag, start], stderr=w) for tag in "12"]
    os.close(w)
    with open(r, "rb") as f:
        data = f.read()
    for p in procs:
        assert p.wait() == 0
    return data.decode().splitlines()


def test_two_processes_sharing_stderr_never_split_a_line() -> None:
    lines = interleaved("whole")
    assert {line.split()[3] for line in lines} == {"1", "2"}  # both wrote, at once
    assert all(line.startswith("denali: gdb: VM ") and line.count("denali") == 1 for line in lines)
