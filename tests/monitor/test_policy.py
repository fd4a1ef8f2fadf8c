"""The policy monitor: its file format (every mistake one ConfigError), hypercalls
refused or VMs stopped, NIC and disk limits, violations logged and counted."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from denali import metrics
from denali.abi import Hc, Result
from denali.devices.disk import DiskSpec, create_image
from denali.errors import ConfigError, VmKilledError
from denali.kernel import Kernel
from denali.monitor.policy import Policy, load_policy, parse_policy
from tests.conftest import need_image

CMD = [sys.executable, "-m", "denali"]


def test_a_full_policy_parses(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text(
        '[hypercalls]\nallow = ["terminate", "console_write"]\n'
        "[nic]\ntx_frames_per_s = 10\nrx_bytes_per_s = 1e6\nburst_s = 0.5\n"
        '[disk]\nread_only = true\nops_per_s = 5\naction = "stop"\n'
        '[violation]\nresult = "FULL"\n'
    )
    spec = load_policy(p)
    assert spec.allow == {Hc.TERMINATE, Hc.CONSOLE_WRITE}
    assert spec.limits == {"tx_frames": 10.0, "rx_bytes": 1e6, "disk_ops": 5.0}
    assert spec.burst_s["tx_frames"] == 0.5
    assert spec.violation("nic").result == Result.FULL and spec.violation("nic").action == "refuse"
    assert spec.violation("disk").action == "stop"
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"hypercalls": {"deny": ["disk_write"]}}))
    assert load_policy(j).deny == {Hc.DISK_WRITE}
    m = Policy(load_policy(j))
    assert m.kinds == {"hypercall"} and m.hypercalls == {Hc.DISK_WRITE}


@pytest.mark.parametrize(
    "doc, words",
    [
        ({"nosuch": {}}, "unknown section"),
        ({"nic": {"tx_frame_per_s": 1}}, "unknown keys"),
        ({"hypercalls": {"allow": [], "deny": []}}, "not both"),
        ({"hypercalls": {"allow": ["fork"]}}, "unknown hypercalls"),
        ({"hypercalls": {"allow": "terminate"}}, "list of hypercall names"),
        ({"violation": {"action": "explode"}}, "action"),
        ({"violation": {"result": "MAYBE"}}, "result must be"),
        ({"nic": {"tx_bytes_per_s": -1}}, "above 0"),
        ({"nic": {"tx_bytes_per_s": True}}, "above 0"),
        ({"disk": {"read_only": "yes"}}, "true or false"),
        ({"disk": 3}, "table"),
    ],
)
def test_every_mistake_is_one_config_error(doc: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_policy(doc)


def test_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[hypercalls\n")
    for path in (bad, tmp_path / "missing.toml"):
        with pytest.raises(ConfigError, match="policy file"):
            load_policy(path)


async def test_refused_hypercalls_are_counted_and_logged(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    need_image("test-print")
    spec = parse_policy({"hypercalls": {"deny": ["console_write"]}, "violation": {"result": "IO"}})
    with caplog.at_level(logging.DEBUG, logger="denali.monitor.policy"):
        vm = await kernel.spawn("test-print", cmdline="lines=50", monitors=[Policy(spec)])
        assert await vm.wait() == 0
    assert vm.console.text() == ""
    stats = kernel.vm_stats(vm)["monitors"]
    assert stats["policy_violations"] >= 1 and stats["stack"] == ["Policy"]
    assert kernel.stats()["monitors"]["policy_violations"] == stats["policy_violations"]
    text = await metrics.prometheus(kernel)
    assert f"denali_monitor_policy_violations_total {float(stats['policy_violations'])}" in text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "console_write" in warnings[0].getMessage()


async def test_allow_list_and_stop(kernel: Kernel) -> None:
    need_image("hello")
    spec = parse_policy(
        {"hypercalls": {"allow": ["terminate", "idle", "clock"]}, "violation": {"action": "stop"}}
    )
    vm = await kernel.spawn("hello", monitors=[Policy(spec)])
    with pytest.raises(VmKilledError, match="console_write is not allowed"):
        await vm.wait()
    assert vm.console.text() == ""


async def test_nic_limits(kernel: Kernel) -> None:
    need_image("test-netudp")
    need_image("udpecho")
    echo = await kernel.spawn("udpecho", cmdline="ip=10.0.0.5/24")
    spec = parse_policy({"nic": {"tx_frames_per_s": 2, "burst_s": 1}, "violation": {"result": "FULL"}})
    pol = Policy(spec)
    t0 = kernel.now_ns()
    client = await kernel.spawn("test-netudp", cmdline="ip=10.0.0.6/24 dst=10.0.0.5 count=4", monitors=[pol])
    await client.wait()
    elapsed = (kernel.now_ns() - t0) / 1e9
    assert client.nic is not None
    sent = client.nic.stats.tx_frames
    assert pol.violations.get("tx_frames", 0) >= 1  # the guest sent faster, was refused, retried
    assert sent <= 2 + 2 * elapsed + 1, (sent, elapsed)  # a bucket of 2 frames, 2 more per second
    echo.kill()


async def test_disk_limits(kernel: Kernel, tmp_path: Path) -> None:
    need_image("test-disk")
    img = tmp_path / "d.img"
    await create_image(str(img), 1 << 20)
    disk = [DiskSpec(str(img), name="data", overlay_dir=str(tmp_path))]
    pol = Policy(parse_policy({"disk": {"read_only": True}}))
    vm = await kernel.spawn("test-disk", nic=False, cmdline="ops=write count=1", disks=disk, monitors=[pol])
    assert await vm.wait() != 0 and "FAIL" in vm.console.text()
    assert pol.violations == {"read_only": 1}
    pol = Policy(parse_policy({"disk": {"write_bytes_per_s": 4096, "action": "stop"}}))
    vm = await kernel.spawn("test-disk", nic=False, cmdline="ops=write count=8", disks=disk, monitors=[pol])
    with pytest.raises(VmKilledError, match="write_bytes"):
        await vm.wait()
    pol = Policy(parse_policy({"disk": {"ops_per_s": 1000, "read_bytes_per_s": 1e9}}))
    vm = await kernel.spawn(
        "test-disk", nic=False, cmdline="ops=write,verify count=4", disks=disk, monitors=[pol]
    )
    assert await vm.wait() == 0, vm.console.text()  # within the limits: nothing refused
    assert pol.violations == {}


def test_cli_policy(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('[hypercalls]\ndeny = ["console_write"]\n[violation]\naction = "stop"\n')
    r = subprocess.run(
        [*CMD, "boot", "hello", "--policy", str(p)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 125 and "stopped by policy: hypercall console_write is not allowed" in r.stderr
    assert r.stdout == ""
    p.write_text('[hypercalls]\ndeny = ["console_write"]\n')
    r = subprocess.run(
        [*CMD, "boot", "test-exit", "-c", "status=6", "--policy", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 6 and r.stdout == ""
    p.write_text('[hypercalls]\ndeny = ["fork"]\n')
    r = subprocess.run(
        [*CMD, "boot", "hello", "--policy", str(p)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown hypercalls" in r.stderr
