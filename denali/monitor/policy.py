"""The policy monitor: which hypercalls a VM may make, and how fast it may use its NIC and disks.

A policy is read from TOML or JSON (``load_policy``; docs/monitors.md has the format)::

    [hypercalls]
    allow = ["terminate", "idle", "console_write", "clock", "timer_set", "set_handler"]
    # or: deny = ["disk_write"]         (not both)

    [nic]
    tx_frames_per_s = 2000              # each limit is a token bucket holding
    tx_bytes_per_s = 1_000_000          # burst_s seconds of its rate (default 1)
    rx_frames_per_s = 2000
    rx_bytes_per_s = 1_000_000

    [disk]
    ops_per_s = 100                     # requests (reads, writes, flushes)
    read_bytes_per_s = 4_000_000
    write_bytes_per_s = 1_000_000
    read_only = false                   # true: every write is a violation

    [violation]
    action = "refuse"                   # or "stop": the VM is stopped
    result = "INVAL"                    # the code a refused call gets (a Result name)

Each section may carry its own ``action``/``result`` to override ``[violation]``. What a
refusal is, per rule: a hypercall that is not allowed returns ``result`` without
running; a frame sent over a limit ends its NET_SEND with ``result`` (the frames before
it went out); a frame received over a limit is dropped; a disk request over a limit is
refused with ``result`` (in EAX and its status word).

Every violation is counted (``policy_violations`` in the VM's and the kernel's monitor
counters, and per rule in ``Policy.violations``) and logged: the first of each rule at
warning level, the rest at debug level (a guest retrying in a loop must not flood the
log).
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from denali import abi
from denali.abi import Result
from denali.errors import ConfigError
from denali.monitor.base import Answer, HypercallEvent, Monitor, State, Stop, Verdict

if TYPE_CHECKING:
    from denali.devices.disk.device import DiskRequest

log = logging.getLogger(__name__)

_NAMES: Final = {h.name: h.nr for h in abi.HYPERCALLS}
_SECTIONS: Final = {
    "hypercalls": {"allow", "deny", "action", "result"},
    "nic": {
        "tx_frames_per_s",
        "tx_bytes_per_s",
        "rx_frames_per_s",
        "rx_bytes_per_s",
        "burst_s",
        "action",
        "result",
    },
    "disk": {
        "ops_per_s",
        "read_bytes_per_s",
        "write_bytes_per_s",
        "read_only",
        "burst_s",
        "action",
        "result",
    },
    "violation": {"action", "result"},
}


@dataclass(frozen=True)
class OnViolation:
    """What a violation does: ``action`` "refuse" (with ``result``) or "stop"."""

    action: str = "refuse"
    result: int = int(Result.INVAL)


@dataclass(frozen=True)
class PolicySpec:
    """A parsed, checked policy (see the module docstring); rates None mean no limit."""

    allow: frozenset[int] | None = None
    """Hypercall numbers allowed (None: all but ``deny``)."""
    deny: frozenset[int] = frozenset()
    limits: Mapping[str, float] = field(default_factory=dict)
    """Rates per second by name (tx_frames, tx_bytes, rx_frames, rx_bytes, disk_ops,
    read_bytes, write_bytes)."""
    burst_s: Mapping[str, float] = field(default_factory=dict)
    read_only: bool = False
    on: Mapping[str, OnViolation] = field(default_factory=dict)
    """Per section ("hypercalls", "nic", "disk")."""

    def violation(self, section: str) -> OnViolation:
        return self.on.get(section, OnViolation())


def _fail(where: str, why: str) -> ConfigError:
    return ConfigError(f"policy {where}: {why}")


def _result(where: str, v: Any) -> int:
    if isinstance(v, str) and v.upper() in Result.__members__:
        return int(Result[v.upper()])
    raise _fail(where, f"result must be one of {', '.join(Result.__members__)}, not {v!r}")


def _on(where: str, d: Mapping[str, Any], base: OnViolation) -> OnViolation:
    action = d.get("action", base.action)
    if action not in ("refuse", "stop"):
        raise _fail(where, f'action must be "refuse" or "stop", not {action!r}')
    result = _result(f"{where}.result", d["result"]) if "result" in d else base.result
    return OnViolation(action, result)


def _rate(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf"):
        raise _fail(where, f"must be a number above 0, not {v!r}")
    return float(v)


def _hypercall_set(where: str, v: Any) -> frozenset[int]:
    if not isinstance(v, list) or not all(isinstance(n, str) for n in v):
        raise _fail(where, "must be a list of hypercall names")
    unknown = [n for n in v if n.lower() not in _NAMES]
    if unknown:
        raise _fail(where, f"unknown hypercalls {unknown} (known: {', '.join(_NAMES)})")
    return frozenset(_NAMES[n.lower()] for n in v)


def parse_policy(data: Mapping[str, Any], where: str = "") -> PolicySpec:
    """Check a policy given as plain data (a parsed TOML or JSON document)."""
    if not isinstance(data, Mapping):
        raise _fail(where or "document", "must be a table/object")
    for sec, val in data.items():
        if sec not in _SECTIONS:
            raise _fail(where + sec, f"unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(val, Mapping):
            raise _fail(where + sec, "must be a table/object")
        bad = set(val) - _SECTIONS[sec]
        if bad:
            known = ", ".join(sorted(_SECTIONS[sec]))
            raise _fail(f"{where}{sec}", f"unknown keys {sorted(bad)} (known: {known})")
    base = _on(f"{where}violation", data.get("violation", {}), OnViolation())
    on = {s: _on(f"{where}{s}", data.get(s, {}), base) for s in ("hypercalls", "nic", "disk")}
    hc = data.get("hypercalls", {})
    if "allow" in hc and "deny" in hc:
        raise _fail(f"{where}hypercalls", "give allow or deny, not both")
    allow = _hypercall_set(f"{where}hypercalls.allow", hc["allow"]) if "allow" in hc else None
    deny = _hypercall_set(f"{where}hypercalls.deny", hc["deny"]) if "deny" in hc else frozenset()
    limits: dict[str, float] = {}
    burst: dict[str, float] = {}
    for sec, keys in (
        (
            "nic",
            {
                "tx_frames_per_s": "tx_frames",
                "tx_bytes_per_s": "tx_bytes",
                "rx_frames_per_s": "rx_frames",
                "rx_bytes_per_s": "rx_bytes",
            },
        ),
        (
            "disk",
            {"ops_per_s": "disk_ops", "read_bytes_per_s": "read_bytes", "write_bytes_per_s": "write_bytes"},
        ),
    ):
        d = data.get(sec, {})
        b = _rate(f"{where}{sec}.burst_s", d["burst_s"]) if "burst_s" in d else 1.0
        for key, name in keys.items():
            if key in d:
                limits[name] = _rate(f"{where}{sec}.{key}", d[key])
                burst[name] = b
    ro = data.get("disk", {}).get("read_only", False)
    if not isinstance(ro, bool):
        raise _fail(f"{where}disk.read_only", f"must be true or false, not {ro!r}")
    return PolicySpec(allow, deny, limits, burst, ro, on)


def load_policy(path: str | Path) -> PolicySpec:
    """Read a policy file: JSON when it ends in ``.json``, else TOML. ``ConfigError`` (one
    line) when it is missing, unreadable, malformed or wrong."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"policy file {p}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw) if p.suffix.lower() == ".json" else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {p}: {exc}") from None
    return parse_policy(data, where=f"{p}: ")


class _Bucket:
    """A token bucket on the VM's clock: ``rate`` per second, ``rate * burst_s`` deep."""

    __slots__ = ("depth", "last", "rate", "tokens")

    def __init__(self, rate: float, burst_s: float, now: int) -> None:
        self.rate = rate
        self.depth = max(1.0, rate * burst_s)
        self.tokens = self.depth
        self.last = now

    def take(self, n: float, now: int) -> bool:
        self.tokens = min(self.depth, self.tokens + (now - self.last) * self.rate / 1e9)
        self.last = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class Policy(Monitor):
    """Enforces one ``PolicySpec`` on its VM (see the module docstring)."""

    def __init__(self, spec: PolicySpec) -> None:
        self.spec = spec
        kinds = set()
        if spec.allow is not None or spec.deny:
            kinds.add("hypercall")
            allowed = spec.allow if spec.allow is not None else frozenset(_NAMES.values())
            self.hypercalls = frozenset(_NAMES.values()) - (allowed - spec.deny)
        if any(k in spec.limits for k in ("tx_frames", "tx_bytes")):
            kinds.add("frame_out")
        if any(k in spec.limits for k in ("rx_frames", "rx_bytes")):
            kinds.add("frame_in")
        if spec.read_only or any(k in spec.limits for k in ("disk_ops", "read_bytes", "write_bytes")):
            kinds.add("disk")
        self.kinds = frozenset(kinds)
        self.violations: dict[str, int] = {}
        """Violations by rule ("hypercall:disk_write", "tx_bytes", "read_only", ...)."""
        self._buckets: dict[str, _Bucket] = {}

    def hypercall(self, call: HypercallEvent) -> Verdict:
        # only the numbers outside the allowed set reach this hook (self.hypercalls)
        on = self._violate(
            f"hypercall:{call.name or call.nr}",
            "hypercalls",
            f"hypercall {call.name or call.nr} is not allowed",
        )
        if on.action == "stop":
            return Stop(f"policy: hypercall {call.name or call.nr} is not allowed")
        return Answer(on.result)

    def _now(self) -> int:
        return self.stack.vm.now_ns() if self.stack is not None else 0

    def _over(self, name: str, n: float) -> bool:
        rate = self.spec.limits.get(name)
        if rate is None:
            return False
        b = self._buckets.get(name)
        now = self._now()
        if b is None:
            b = self._buckets[name] = _Bucket(rate, self.spec.burst_s.get(name, 1.0), now)
        return not b.take(n, now)

    def _violate(self, rule: str, section: str, what: str) -> OnViolation:
        self.violations[rule] = self.violations.get(rule, 0) + 1
        on = self.spec.violation(section)
        vm = self.stack.vm.id if self.stack is not None else 0
        level = logging.WARNING if self.violations[rule] == 1 else logging.DEBUG
        log.log(
            level,
            "VM %d: policy violation (%s): %s; %s",
            vm,
            rule,
            what,
            "stopping the VM" if on.action == "stop" else f"refused with {Result(on.result).name}",
        )
        if self.stack is not None:
            self.stack.count("policy_violations")
            if on.action == "stop":
                self.stack.stop(f"policy: {what}")
        return on

    def frame_out(self, frame: bytes) -> bytes | int | None:
        for name, n in (("tx_frames", 1), ("tx_bytes", len(frame))):
            if self._over(name, n):
                return int(self._violate(name, "nic", f"{name} over {self.spec.limits[name]:g}/s").result)
        return frame

    def frame_in(self, frame: bytes) -> bytes | None:
        for name, n in (("rx_frames", 1), ("rx_bytes", len(frame))):
            if self._over(name, n):
                self._violate(name, "nic", f"{name} over {self.spec.limits[name]:g}/s")
                return None
        return frame

    def disk(self, request: DiskRequest) -> DiskRequest | int:
        if request.kind == "write" and self.spec.read_only:
            return int(self._violate("read_only", "disk", "disk writes are not allowed").result)
        size = request.count * abi.DISK_BLOCK_SIZE
        checks = [("disk_ops", 1)]
        if request.kind in ("read", "write"):
            checks.append((f"{request.kind}_bytes", size))
        for name, n in checks:
            if self._over(name, n):
                return int(self._violate(name, "disk", f"{name} over {self.spec.limits[name]:g}/s").result)
        return request

    def save(self) -> State:
        return {
            "violations": dict(self.violations),
            "tokens": {k: b.tokens for k, b in self._buckets.items()},
        }

    def restore(self, state: State) -> None:
        self.violations = {str(k): int(v) for k, v in state.get("violations", {}).items()}
        now = self._now()
        for k, tokens in state.get("tokens", {}).items():
            if k in self.spec.limits:
                b = self._buckets[k] = _Bucket(self.spec.limits[k], self.spec.burst_s.get(k, 1.0), now)
                b.tokens = min(b.depth, float(tokens))
