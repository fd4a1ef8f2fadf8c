"""The pure-Python path (``KernelConfig.native`` False, ``DENALI_NATIVE=0``) keeps the
contract too: the suites of the CPU's neighbourhood run again on it, in a child pytest
(the rest of the suite runs on the default, native path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need_image

ROOT = Path(__file__).resolve().parents[1]
SUITES = (
    "tests/test_vm.py",
    "tests/test_contract.py",
    "tests/test_hypercalls.py",
    "tests/test_workers.py",
    "tests/test_snapshot.py",
    "tests/devices",
    "tests/monitor",
)


PROBE = """
import asyncio
from denali.kernel import Kernel

async def main():
    async with Kernel() as k:
        vm = await k.spawn("bench-hcall", cmdline="n=2000")
        await vm.wait()
        print(vm.hypercalls, vm.native_hypercalls)

asyncio.run(main())
"""


@pytest.mark.slow
def test_the_cpu_suites_pass_on_the_pure_python_path() -> None:
    need_image("bench-hcall")
    env = dict(os.environ, DENALI_NATIVE="0")
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert probe.stdout.split() == ["2001", "0"], probe.stdout + probe.stderr  # no CLOCK took the C path
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1]
