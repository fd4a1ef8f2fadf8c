"""Monitor events as messages: a monitor answered from another task over a bounded
channel (the form a parent VM's monitor takes), JSON round trips, bad answers."""

from __future__ import annotations

import asyncio

import pytest

from denali.abi import Hc, Irq, Result
from denali.errors import ConfigError, GuestFault, VmKilledError
from denali.kernel import Kernel
from denali.monitor.protocol import MessageChannel, MessageMonitor, Request, Response
from tests.conftest import need_image


def test_messages_are_plain_data() -> None:
    req = Request(3, 1, "hypercall", 12, "disk_write", 0x1000, {"handle": 0, "count": 1})
    assert Request.from_json(req.to_json()) == req
    resp = Response(3, "answer", int(Result.INVAL), out={"status": 2}, writes=((0x2000, "00ff"),))
    assert Response.from_json(resp.to_json()) == resp
    with pytest.raises(ConfigError):
        Response(1, "explode")


async def answer_with(channel: MessageChannel, decide: object, seen: list[Request]) -> None:
    """A 'parent' answering every request from the channel (each message goes through JSON)."""
    assert callable(decide)
    while True:
        req = Request.from_json((await channel.get()).to_json())
        seen.append(req)
        resp = Response.from_json(decide(req).to_json())
        assert channel.answer(req.vm, resp)


async def test_a_monitor_in_another_task_answers_every_hypercall(kernel: Kernel) -> None:
    need_image("test-exit")
    channel = MessageChannel(capacity=2)
    seen: list[Request] = []

    def decide(req: Request) -> Response:
        if req.name == "console_write":  # swallow the write, claim success
            return Response(req.seq, "answer", int(Result.OK))
        if req.name == "terminate":  # change the exit status on the way down
            return Response(req.seq, "pass", args={"status": 77})
        return Response(req.seq, "pass")

    parent = asyncio.ensure_future(answer_with(channel, decide, seen))
    try:
        vm = await kernel.spawn("test-exit", cmdline="status=5", monitors=[MessageMonitor(channel.ask)])
        assert await vm.wait() == 77
        assert vm.console.text() == ""
        assert [r.name for r in seen] == ["console_write", "terminate"]
        assert seen[1].args == {"status": 5}
        assert channel.pending == 0
    finally:
        parent.cancel()


async def test_only_the_numbers_asked_for_become_messages(kernel: Kernel) -> None:
    need_image("test-idle")
    channel = MessageChannel()
    seen: list[Request] = []

    def decide(req: Request) -> Response:  # answer IDLE: "the host interrupt arrived"
        return Response(req.seq, "answer", int(Result.OK), out={"pending": int(Irq.HOST), "now_ns": 5})

    parent = asyncio.ensure_future(answer_with(channel, decide, seen))
    try:
        vm = await kernel.spawn(
            "test-idle",
            cmdline="ms=100000 wait=host",
            monitors=[MessageMonitor(channel.ask, hypercalls=frozenset({int(Hc.IDLE)}))],
        )
        assert await vm.wait() == 0
        assert {r.name for r in seen} == {"idle"}
    finally:
        parent.cancel()


async def test_faults_as_messages_and_a_stop(kernel: Kernel) -> None:
    need_image("test-fault")
    channel = MessageChannel()
    seen: list[Request] = []

    def decide(req: Request) -> Response:
        if req.kind == "fault":
            assert req.fault is not None and req.fault["kind"] == "divide"
            return Response(req.seq, "stop", reason="the parent says no")
        return Response(req.seq, "pass")

    parent = asyncio.ensure_future(answer_with(channel, decide, seen))
    try:
        vm = await kernel.spawn(
            "test-fault", cmdline="kind=div0", monitors=[MessageMonitor(channel.ask, hypercalls=frozenset())]
        )
        with pytest.raises(VmKilledError, match="the parent says no"):
            await vm.wait()
        assert [r.kind for r in seen] == ["fault"]

        def let_it_fault(req: Request) -> Response:
            return Response(req.seq, "pass")

        parent.cancel()
        parent = asyncio.ensure_future(answer_with(channel, let_it_fault, seen))
        vm = await kernel.spawn(
            "test-fault", cmdline="kind=div0", monitors=[MessageMonitor(channel.ask, hypercalls=frozenset())]
        )
        with pytest.raises(GuestFault):
            await vm.wait()
    finally:
        parent.cancel()


async def test_a_bad_answer_stops_the_vm(kernel: Kernel) -> None:
    need_image("test-exit")
    channel = MessageChannel()

    def decide(req: Request) -> Response:  # writes into the kernel page: refused
        return Response(req.seq, "answer", writes=((0x2000, "00"),))

    parent = asyncio.ensure_future(answer_with(channel, decide, []))
    try:
        mon = MessageMonitor(channel.ask)
        vm = await kernel.spawn("test-exit", cmdline="status=1", monitors=[mon])
        with pytest.raises(VmKilledError, match="not writable"):
            await vm.wait()
        assert mon.bad_responses == 1
    finally:
        parent.cancel()
