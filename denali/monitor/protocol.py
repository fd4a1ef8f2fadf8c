"""The monitor protocol as messages: each interposed event is a ``Request``, each verdict a
``Response``, both plain data (JSON-safe), so a monitor need not be Python in this process.

This is the form a monitor takes when it lives elsewhere: another task, another
process, or a parent VM (recursive VMs deliver a child's events to its parent as
these messages and apply the parent's answers). ``MessageMonitor`` turns the events
it interposes on into requests and applies the responses; ``MessageChannel`` is a
bounded queue of requests with a response slot for each, for a monitor that answers
from another task. The VM that made a request waits for its answer (others run).

Requests (``kind``):

- ``"hypercall"``: ``nr``, ``name``, ``arg`` (EBX) and ``args`` (the argument structure,
  decoded; bytes as hex strings), before the call goes down.
- ``"fault"``: ``fault`` (kind, eip, address, access, vector, summary).

Responses (``action``):

- ``"pass"``: let the event go down; for a hypercall, ``args`` first overwrites fields of
  its structure and ``writes`` guest memory (both checked);
- ``"answer"`` (hypercalls): complete it with ``result``; ``out`` fields and ``writes``
  are written first;
- ``"resume"`` (faults): the VM goes on;
- ``"stop"``: stop the VM (``reason``).

A monitor that sees frames, disk requests or interrupts of its VM through messages does
so through the hypercalls that carry them (NET_SEND, NET_RECV, DISK_*, IDLE).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from denali.errors import ConfigError
from denali.monitor.base import (
    Answer,
    Delay,
    FaultEvent,
    FaultVerdict,
    HypercallEvent,
    Monitor,
    Resume,
    Stop,
    Value,
    Verdict,
)

ACTIONS: Final = frozenset(("pass", "answer", "resume", "stop"))


def _plain(v: Any) -> Any:
    return v.hex() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class Request:
    """One interposed event as a message (see the module docstring)."""

    seq: int
    vm: int
    kind: str
    nr: int = 0
    name: str | None = None
    arg: int = 0
    args: Mapping[str, Any] | None = None
    fault: Mapping[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Request:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Response:
    """A monitor's answer to one ``Request`` (see the module docstring)."""

    seq: int
    action: str = "pass"
    result: int = 0
    out: Mapping[str, int | str] = field(default_factory=dict)
    args: Mapping[str, int | str] = field(default_factory=dict)
    writes: tuple[tuple[int, str], ...] = ()
    """(guest address, bytes as hex) pairs."""
    reason: str = ""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"monitor response: unknown action {self.action!r}")

    def to_json(self) -> str:
        return json.dumps(
            {
                "seq": self.seq,
                "action": self.action,
                "result": self.result,
                "out": dict(self.out),
                "args": dict(self.args),
                "writes": [list(w) for w in self.writes],
                "reason": self.reason,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Response:
        d = json.loads(text)
        d["writes"] = tuple((int(a), str(h)) for a, h in d.get("writes", ()))
        return cls(**d)


def _values(fields: Mapping[str, int | str]) -> dict[str, Value]:
    return {k: bytes.fromhex(v) if isinstance(v, str) else int(v) for k, v in fields.items()}


Handler = Callable[[Request], Awaitable[Response]]


class MessageMonitor(Monitor):
    """A monitor whose decisions are made by ``handler(request) -> response`` (a coroutine:
    another task, a process, a parent VM). Interposes on the hypercalls numbered in
    ``hypercalls`` (None: all) and, with ``faults``, on faults."""

    def __init__(
        self, handler: Handler, hypercalls: frozenset[int] | None = None, faults: bool = True
    ) -> None:
        self.handler = handler
        self.hypercalls = hypercalls
        self.kinds = frozenset(("hypercall", "fault") if faults else ("hypercall",))
        self._seq = 0
        self.bad_responses = 0
        """Responses that could not be applied (wrong sequence number or fields): each
        stops the VM, as a confused monitor must not let it run on."""

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def hypercall(self, call: HypercallEvent) -> Verdict:
        args = call.args()
        req = Request(
            self._next(),
            call.vm_id,
            "hypercall",
            call.nr,
            call.name,
            call.arg,
            {k: _plain(v) for k, v in args.items()} if args is not None else None,
        )
        return Delay(self._ask_hypercall(call, req))

    async def _ask_hypercall(self, call: HypercallEvent, req: Request) -> Answer | Stop | None:
        resp = await self.handler(req)
        if resp.seq != req.seq or resp.action == "resume":
            return self._bad(f"response {resp.seq}/{resp.action} to hypercall request {req.seq}")
        if resp.action == "stop":
            return Stop(resp.reason or "stopped by its monitor")
        try:
            writes = [(a, bytes.fromhex(h)) for a, h in resp.writes]
            if resp.args and not call.set_args(**_values(resp.args)):
                return self._bad(f"response {resp.seq}: argument fields {sorted(resp.args)} do not fit")
            for addr, data in writes:
                if not call.write(addr, data):
                    return self._bad(f"response {resp.seq}: guest memory at 0x{addr:x} is not writable")
            if resp.action == "answer":
                return Answer(resp.result, _values(resp.out))
        except ValueError as exc:
            return self._bad(f"response {resp.seq}: {exc}")
        return None

    async def fault(self, event: FaultEvent) -> FaultVerdict:
        r = event.report
        req = Request(
            self._next(),
            event.vm_id,
            "fault",
            fault={
                "kind": r.kind.name.lower(),
                "eip": r.eip,
                "address": r.address,
                "access": r.access,
                "vector": r.vector,
                "summary": r.summary(),
            },
        )
        resp = await self.handler(req)
        if resp.seq != req.seq or resp.action == "answer":
            return self._bad(f"response {resp.seq}/{resp.action} to fault request {req.seq}")
        if resp.action == "resume":
            return Resume()
        if resp.action == "stop":
            return Stop(resp.reason or "stopped by its monitor")
        return None

    def _bad(self, why: str) -> Stop:
        self.bad_responses += 1
        return Stop(f"bad monitor response: {why}")


class MessageChannel:
    """Requests waiting for an answer from another task: a bounded queue of requests
    (``get``) and ``answer(response)``. ``ask`` is a ``MessageMonitor`` handler; a
    request beyond ``capacity`` waits for room (its VM waits with it)."""

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ConfigError(f"message channel capacity must be at least 1, not {capacity}")
        self._queue: asyncio.Queue[Request] = asyncio.Queue(maxsize=capacity)
        self._waiting: dict[tuple[int, int], asyncio.Future[Response]] = {}

    async def ask(self, request: Request) -> Response:
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        key = (request.vm, request.seq)
        self._waiting[key] = fut
        try:
            await self._queue.put(request)
            return await fut
        finally:
            self._waiting.pop(key, None)

    async def get(self) -> Request:
        """The next request (waits for one)."""
        return await self._queue.get()

    def answer(self, vm: int, response: Response) -> bool:
        """Complete the request ``response.seq`` of VM ``vm``; False when none waits."""
        fut = self._waiting.get((vm, response.seq))
        if fut is None or fut.done():
            return False
        fut.set_result(response)
        return True

    @property
    def pending(self) -> int:
        """Requests asked and not yet answered."""
        return len(self._waiting)
