"""The pure-Python path (``KernelConfig.native`` False, ``DENALI_NATIVE=0``) keeps the
contract too: the suites of the CPU's neighbourhood run again on it, in a child pytest
(the rest of the suite runs on the default, native path)."""

from __future__ import annotations

import os
import signal
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
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # on a timeout its whole group goes, what it started too
    )
    try:
        out, _ = child.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        pytest.fail("the pure-Python run took over 420 s:\n" + out[-4000:])
    assert child.returncode == 0, out[-6000:]
    assert " passed" in out.splitlines()[-1]
