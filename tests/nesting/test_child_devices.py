"""A child's devices are only what its parent passes down, on real guests: a NIC on the
parent's LAN (CHILD_F_NIC) or none, to any depth, and the parent's disks (which ones,
read-only or not) (docs/virtual-architecture.md, "Child VMs"; denali/nesting.py)."""

from __future__ import annotations

import re
from pathlib import Path

from denali import abi
from denali.devices.disk import DiskSpec
from denali.devices.nic import NicConfig, NicPort
from denali.images import resolve
from denali.kernel import Kernel
from denali.monitor.policy import Policy, parse_policy
from denali.nesting import ChildVm
from denali.net.ethernet import mac_for_vm
from denali.net.impair import LinkSpec
from denali.vm import Vm
from tests.conftest import need_image
from tests.nesting.test_children import disk_of

M = 2 << 20
NODEV = 5
ZERO_MAC = "00:00:00:00:00:00"


def _disks(tmp_path: Path, *extra: tuple[str, str]) -> list[DiskSpec]:
    """Disk "img" holds test-nestnet (read-only); ``extra`` more (name, image) disks."""
    out = [DiskSpec(disk_of("test-nestnet", tmp_path / "nestnet.img"), name="img", mode="ro")]
    for name, image in extra:
        out.append(DiskSpec(disk_of(image, tmp_path / f"{name}.img"), name=name, mode="ro"))
    return out


def _image_bytes(name: str) -> bytes:
    return Path(resolve(name).path).read_bytes()


def _leaf(text: str) -> dict[str, str]:
    """The fields of the leaf's "nestnet: leaf vm=V info=R send=R sent=N mac=M" line."""
    m = re.search(r"nestnet: leaf vm=(\d+) info=(\d+) send=(\d+) sent=(\d+) mac=(\S+)", text)
    assert m is not None, text
    return dict(zip(("vm", "info", "send", "sent", "mac"), m.groups(), strict=True))


def _probe(k: Kernel) -> NicPort:
    """A NIC port of the test's own on the kernel's LAN: it sees every broadcast frame."""
    port = NicPort("probe", "06:ee:00:00:00:01")  # never a VM's (02:TAG:...), whatever the tag
    k.switch.attach(port)
    return port


async def _seen(k: Kernel, probe: NicPort, vm_id: int) -> bool:
    """Whether the probe received the leaf's broadcast frame (EtherType 0x88b5) of VM ``vm_id``."""
    await k.switch.join()
    want = f"nestnet vm={vm_id}\0".encode()
    return any(f[12:14] == b"\x88\xb5" and f[14:].startswith(want) for f in probe.pending_frames())


async def test_a_child_given_a_nic_reaches_another_vm_on_the_lan(tmp_path: Path) -> None:
    need_image("test-nestnet")
    need_image("test-netudp")
    need_image("udpecho")
    async with Kernel() as k:
        srv = await k.spawn("udpecho", cmdline="ip=10.0.0.1/24")
        parent = await k.spawn(
            "test-nestnet",
            cmdline="image=net nic=1 -- ip=10.0.0.2/24 dst=10.0.0.1 count=3 ping=1",
            child_memory=M,
            disks=_disks(tmp_path, ("net", "test-netudp")),
        )
        status = await parent.wait()
        text = parent.console.text()
        assert status == 0, text  # the child's status: every ping and datagram came back
        assert "ping: 3/3 replies" in text and "udp: 3/3 echoed" in text, text
        m = re.search(r"nestnet: vm=\d+ child mac=(\S+)", text)
        assert m is not None, text
        # its own MAC, the kernel's for its VM id: not its parent's
        (child_id,) = [
            i for i in range(parent.id + 1, parent.id + 4) if mac_for_vm(i, k.mac_tag).hex(":") == m[1]
        ]
        assert m[1] != parent.mac.hex(":")
        assert k.switch.lookup(mac_for_vm(child_id, k.mac_tag)) is None  # detached as it ended
        assert srv.nic is not None and srv.nic.stats.rx_frames >= 6


async def test_a_child_without_a_nic_cannot_send_and_one_with_it_can(tmp_path: Path) -> None:
    need_image("test-nestnet")
    async with Kernel() as k:
        probe = _probe(k)
        for nic in (0, 1):
            parent = await k.spawn(
                "test-nestnet", cmdline=f"nic={nic} disks=0 -- ", child_memory=M, disks=_disks(tmp_path)
            )
            assert await parent.wait() == 0
            text = parent.console.text()
            leaf = _leaf(text)
            if nic:
                assert (leaf["info"], leaf["send"], leaf["sent"]) == ("0", "0", "1"), text
                assert leaf["mac"] == mac_for_vm(int(leaf["vm"]), k.mac_tag).hex(":")
                assert await _seen(k, probe, int(leaf["vm"]))
            else:  # no NIC: NET_INFO and NET_SEND answer NODEV, nothing reaches the LAN
                assert (leaf["info"], leaf["send"], leaf["sent"]) == (str(NODEV), str(NODEV), "0"), text
                assert f"child mac={ZERO_MAC}" in text and leaf["mac"] == ZERO_MAC
                assert not await _seen(k, probe, int(leaf["vm"]))


async def test_a_child_nic_has_its_parents_cable_and_queue_bounds(tmp_path: Path) -> None:
    need_image("test-nestnet")
    async with Kernel() as k:
        probe = _probe(k)
        ports: list[NicPort] = []
        orig = k._children._child_port

        def child_port(parent: Vm, vm_id: int) -> NicPort:
            ports.append(orig(parent, vm_id))
            return ports[-1]

        k._children._child_port = child_port  # type: ignore[method-assign]
        parent = await k.spawn(
            "test-nestnet",
            cmdline="nic=1 disks=0 -- ",
            child_memory=M,
            disks=_disks(tmp_path),
            nic_config=NicConfig(rx_capacity=7, tx_capacity=9),
            link=LinkSpec(loss=1.0, direction="out"),  # the parent's cable loses every frame it sends
        )
        assert await parent.wait() == 0
        leaf = _leaf(parent.console.text())
        assert (leaf["info"], leaf["send"], leaf["sent"]) == ("0", "0", "1")  # sent, as on a real cable
        assert not await _seen(k, probe, int(leaf["vm"]))  # ... and lost on the child's cable too
        (port,) = ports
        assert port.stats.drop_impaired == 1 and port.stats.tx_frames == 0
        assert (port.rx_capacity, port.ingress_capacity) == (7, 9)


async def test_a_parent_without_a_nic_cannot_pass_one_down(tmp_path: Path) -> None:
    need_image("test-nestnet")
    async with Kernel() as k:
        parent = await k.spawn(
            "test-nestnet", cmdline="nic=1 -- ", child_memory=M, disks=_disks(tmp_path), nic=False
        )
        assert await parent.wait() == 100 + NODEV
        assert f"child_create code={NODEV}" in parent.console.text()


async def test_a_grandchild_gets_only_what_its_parent_passed(tmp_path: Path) -> None:
    need_image("test-nestnet")
    async with Kernel() as k:
        probe = _probe(k)
        grant = f"quota={M}"
        # the root passes its NIC, the child passes it on: the grandchild is on the LAN
        root = await k.spawn(
            "test-nestnet", cmdline=f"{grant} nic=1 -- nic=1 -- ", child_memory=2 * M, disks=_disks(tmp_path)
        )
        assert await root.wait() == 0
        leaf = _leaf(root.console.text())
        assert (leaf["info"], leaf["send"], leaf["sent"]) == ("0", "0", "1")
        assert await _seen(k, probe, int(leaf["vm"]))
        # the child passes nothing: the grandchild has no NIC
        root = await k.spawn(
            "test-nestnet", cmdline=f"{grant} nic=1 -- nic=0 -- ", child_memory=2 * M, disks=_disks(tmp_path)
        )
        assert await root.wait() == 0
        leaf = _leaf(root.console.text())
        assert (leaf["info"], leaf["send"]) == (str(NODEV), str(NODEV))
        assert not await _seen(k, probe, int(leaf["vm"]))
        # the root passes nothing: its child cannot give the grandchild a NIC
        root = await k.spawn(
            "test-nestnet", cmdline=f"{grant} nic=0 -- nic=1 -- ", child_memory=2 * M, disks=_disks(tmp_path)
        )
        assert await root.wait() == 100 + NODEV
        assert f"child_create code={NODEV}" in root.console.text()
        assert "nestnet: leaf" not in root.console.text()


def _disk_lines(text: str) -> dict[str, tuple[str, str]]:
    """{disk name: (ro, write result)} from the leaf's lines, after checking its count."""
    found = dict(
        (name, (ro, w))
        for name, ro, w in re.findall(r"nestnet: leaf vm=\d+ disk (\S+) ro=(\d) write=(\d+)", text)
    )
    m = re.search(r"nestnet: leaf vm=\d+ disks=(\d+)", text)
    assert m is not None and int(m[1]) == len(found), text
    return found


async def test_a_child_has_only_the_disks_its_parent_passes_read_only_when_asked(tmp_path: Path) -> None:
    need_image("test-nestnet")
    data = tmp_path / "data.img"
    data.write_bytes(bytes(range(256)) * 64)
    before = data.read_bytes()
    disks = [*_disks(tmp_path), DiskSpec(str(data), name="data", mode="rw")]
    async with Kernel() as k:

        async def run(cmdline: str) -> dict[str, tuple[str, str]]:
            vm = await k.spawn("test-nestnet", cmdline=cmdline, child_memory=2 * M, disks=disks, nic=False)
            assert await vm.wait() == 0, vm.console.text()
            return _disk_lines(vm.console.text())

        assert await run("disks=0 -- ") == {}  # none passed: none
        # only disk 1 ("data"), read-only by CHILD_F_DISK_RO: the write is refused
        ro = await run("disks=2 -- ")
        assert list(ro) == ["data"] and ro["data"][0] == "1" and ro["data"][1] != "0"
        # as the parent has them: "img" read-only (it is, here), "data" writable
        both = await run("disks=3 rw=1 -- ")
        assert both == {"img": ("1", both["img"][1]), "data": ("0", "0")} and both["img"][1] != "0"
        # a grandchild gets at most what its parent got: "data" read-only for the child
        # stays read-only below it, whatever the child asks; writable if it was passed so
        deep = await run(f"quota={M} disks=3 -- rw=1 -- ")
        assert {n: ro for n, (ro, _) in deep.items()} == {"img": "1", "data": "1"}
        assert "0" not in {w for _, w in deep.values()}
        deep = await run(f"quota={M} disks=3 rw=1 -- disks=2 rw=1 -- ")
        assert deep == {"data": ("0", "0")}
    assert data.read_bytes() == before  # every write rewrote what was there


async def test_what_a_descendant_sends_and_writes_meets_its_ancestors_policy(tmp_path: Path) -> None:
    """A root under a policy (no frames sent, disks read-only) passes its NIC and a
    writable disk down two levels: the grandchild's frame and write are refused by the
    root's policy and counted there, as the root's own would be."""
    need_image("test-nestnet")
    data = tmp_path / "data.img"
    data.write_bytes(bytes(range(256)) * 64)
    before = data.read_bytes()
    disks = [*_disks(tmp_path), DiskSpec(str(data), name="data", mode="rw")]
    spec = parse_policy({"nic": {"tx_bytes_per_s": 10}, "disk": {"read_only": True}})
    cmdline = f"quota={M} nic=1 disks=3 rw=1 -- nic=1 disks=2 rw=1 -- "
    async with Kernel() as k:
        probe = _probe(k)
        free = await k.spawn("test-nestnet", cmdline=cmdline, child_memory=2 * M, disks=disks)
        assert await free.wait() == 0, free.console.text()
        leaf = _leaf(free.console.text())
        assert (leaf["send"], leaf["sent"]) == ("0", "1") and _disk_lines(free.console.text()) == {
            "data": ("0", "0")
        }
        assert await _seen(k, probe, int(leaf["vm"]))
        policy = Policy(spec)
        root = await k.spawn(
            "test-nestnet", cmdline=cmdline, child_memory=2 * M, disks=disks, monitors=[policy]
        )
        assert await root.wait() == 0, root.console.text()
        text = root.console.text()
        leaf = _leaf(text)
        assert (leaf["info"], leaf["sent"]) == ("0", "0") and leaf["send"] == str(int(abi.Result.INVAL)), text
        assert not await _seen(k, probe, int(leaf["vm"]))
        ((ro, write),) = _disk_lines(text).values()
        assert ro == "0" and write != "0", text  # writable as passed, refused above
        assert policy.violations.get("tx_bytes") == 1 and policy.violations.get("read_only") == 1
    assert data.read_bytes() == before


async def test_a_parent_writes_an_unstarted_child_exactly_as_a_running_one() -> None:
    """``memory_before_start`` is checked like a running child's memory: the same page
    map, the same refusals (page 0, the kernel fields and kernel page, code, the stack
    guard, beyond the memory, kernel space, wrapping), and what was written is what the
    child starts with."""
    need_image("test-idle")
    image = _image_bytes("test-idle")
    size = 1 << 20
    async with Kernel() as k:
        parent = await k.spawn("test-idle", memory="1M", cmdline="ms=3600000", nic=False, child_memory=size)
        assert parent.children is not None
        child = k._children.create(parent.children, image, size, 0, "ms=3600000", (), False)
        assert isinstance(child, ChildVm)
        img = child.vm.image
        heap = img.end
        top = size - abi.STACK_SIZE - 4096 - 64  # the heap's end, where the child's malloc is not
        probes = [
            (0, 4),
            (0xFFC, 8),
            (abi.Layout.VREGS, 4),  # the kernel fields: never written
            (abi.Layout.VREGS + 0x40, 16),
            (abi.Layout.VREGS + abi.CMDLINE_OFFSET, 8),
            (abi.Layout.KERNEL_PAGE, 4),
            (0x3000, 4),
            (img.segments[0].vaddr, 4),  # code
            (heap, 64),
            (size - abi.STACK_SIZE - 4096, 4),  # the stack guard page
            (size - abi.STACK_SIZE - 8, 16),  # heap end into the guard
            (size - 4, 4),
            (size - 4, 8),
            (size, 1),
            (0xC0000000, 4),
            (0xFFFFFFFF, 2),
            (heap, 0),
        ]

        def results() -> list[tuple[int, int]]:
            """(write result, read result) per probe; a write puts back what was read."""
            out: list[tuple[int, int]] = []
            for addr, n in probes:
                r = child.read(addr, n)
                data = r if isinstance(r, bytes) else bytes(n)
                out.append((child.write(addr, data), r if isinstance(r, int) else 0))
            return out

        before = results()
        assert child.write(top, b"loaded before the start") == 0
        child.start()
        await child.vm.until_idle()
        assert child.read(top, 23) == b"loaded before the start"
        after = results()
        assert before == after
        refused = {p for p, (w, _) in zip(probes, before, strict=True) if w != 0}
        assert (abi.Layout.VREGS, 4) in refused and (abi.Layout.KERNEL_PAGE, 4) in refused
        assert (0, 4) in refused and (size, 1) in refused and (0xFFFFFFFF, 2) in refused
        assert (abi.Layout.VREGS + 0x40, 16) not in refused and (size - 4, 4) not in refused
        child.destroy()
        await child.ended()
