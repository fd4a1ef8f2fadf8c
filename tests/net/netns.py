"""Helpers for network tests: run Linux tools (ip, ping, curl) from asyncio tests."""

from __future__ import annotations

import asyncio
import shutil

import pytest


async def run(*cmd: str) -> tuple[int, bytes]:
    """Run a command (30 s at most); its exit status and combined output."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out


def need_tools(*tools: str) -> None:
    """Fail (never skip) when a tool the test drives is missing."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; run tools/install-test-deps.sh")
