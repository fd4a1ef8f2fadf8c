"""One host made of several kernel processes (``denali boot --kernels N``).

A ``Host`` starts N *member* kernels, each a process of its own (so N cores emulate at
once, hypercalls and the LAN included), and makes them one host:

- **VM ids.** Member j of N hands out the ids j + 1, j + 1 + N, ... (``KernelConfig``
  ``id_start``/``id_step``) and every member uses the same MAC tag, so a VM's id and MAC
  are unique on the host and stay its own when it moves between members.
- **One LAN.** Every member has one VXLAN port (``denali.net.vxlan``) on 127.0.0.1 whose
  remotes are all the other members (a full mesh, head-end replication): a frame a
  member's switch floods goes once to each other member, whose switch never sends it
  back into the tunnel (it came from that port), so there is no loop. Ports to the
  world outside the host (``--net tap:`` / ``vxlan:``) are given to member 0 only.
- **One control API.** ``denali.host_api`` serves the API of docs/api-http.md for the
  whole host and forwards each request to the member that runs the VM (by id), spreads
  new VMs over the members, and sums counters, ``top`` and Prometheus text over them.
- **Events.** Each member is linked to the host by a socket pair (``MemberLink`` on the
  member's side): it reports each VM it publishes (``up``), each that migrated away
  (``moved``) and each that ended with its outcome (``end``), ``ready`` once it
  serves, its share of a boot's progress when asked (``progress``) and, as it stops,
  the console bytes it dropped (``console``); the host keeps the table of VMs
  (``HostVm``) from these, so it knows where each VM runs and, without an API, when
  the boot is over.
- **Faults.** A member that dies (a crash, ``kill -9``) is reported in one log line, its
  VMs are marked ``lost`` and the others keep serving. With ``restart_lost`` each lost
  VM that has a snapshot (the last one taken through the host's API, or the host's
  own periodic ``checkpoint_s`` ones) is restored on the least-loaded member that is
  alive: same id, MAC and address, the state of its snapshot.
- **Balance.** With a ``BalancePolicy`` the host samples each member's CPU time
  (``/proc/PID/stat``) and, when the busiest uses ``threshold_pct`` points of a core
  more than the idlest for ``sustain`` samples in a row, moves one VM from it to the
  idlest by live migration (``denali.migration``), the VM whose recent CPU time is
  nearest half the gap; then it waits ``cooldown_s``.
- **Cleanup.** Members run in sessions of their own (a terminal's Ctrl-C reaches the
  host, which stops them), ask the kernel to send them SIGTERM when the host process
  dies (``PR_SET_PDEATHSIG``), and stop by themselves when their link to the host
  reaches end of file. ``close()`` stops every member with SIGTERM and waits; one still
  there after ``stop_grace_s`` is killed.

The host starts members from a command the caller gives (``HostConfig.command``, the
CLI's ``denali boot`` line for member j), so the member's options are the CLI's own.
The library never prints: it logs (``logging.getLogger(__name__)``) and raises
``HostError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from denali.errors import DenaliError

log = logging.getLogger(__name__)

STOP_GRACE_S: Final = 8.0
"""How long ``close()`` waits for a member after SIGTERM before it kills it (a member's
own shutdown gives up after 5 s: ``denali.cli.signals``)."""
READY_S: Final = 120.0
"""How long a member may take to start serving."""
_PR_SET_PDEATHSIG: Final = 1


class HostError(DenaliError):
    """The host could not start or lost what it needed; ``status`` is the exit status a
    member gave when it failed to start (its own message is on stderr), else None."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ToldHost(DenaliError):
    """A member kernel's failure, already sent to its host (which reports it)."""


@dataclass(frozen=True)
class BalancePolicy:
    """When the host moves a VM between its kernels (see the module docstring)."""

    interval_s: float = 1.0
    threshold_pct: float = 40.0
    """Busiest minus idlest member, in percent of one core."""
    sustain: int = 3
    """Samples in a row the gap must last."""
    cooldown_s: float = 10.0
    """Quiet time after a move."""


@dataclass(frozen=True)
class MemberPlan:
    """What member ``index`` of ``kernels`` is to be: its API socket, its VXLAN port and
    the other members' (``vxlan`` is the ``--net`` spec), its first VM id and the step,
    and ``fd``, its end of the link to the host (the same number in its process)."""

    index: int
    kernels: int
    api: str
    vxlan: str
    id_start: int
    id_step: int
    fd: int


@dataclass
class HostConfig:
    """How a ``Host`` runs. ``command(plan)`` is the argv of member ``plan.index``."""

    kernels: int
    command: Callable[[MemberPlan], list[str]]
    vni: int = 4242
    lan_local: tuple[str, int] = ("127.0.0.1", 0)
    """Where the members' VXLAN ports bind: member j on port + j (port 0: free ports)."""
    lan_peers: Sequence[tuple[str, int]] = ()
    """VXLAN remotes outside the host that every member reaches directly (the kernels of
    other machines, a Linux vxlan device); they must list every member's address."""
    restart_lost: bool = False
    checkpoint_s: float | None = None
    """Snapshot every running VM this often (pause, snapshot, resume), for
    ``restart_lost``; None: only the snapshots taken through the API."""
    checkpoint_dir: str | None = None
    balance: BalancePolicy | None = None
    runtime_dir: str | None = None
    """Where the members' API sockets go (default: a private temporary directory)."""
    stop_grace_s: float = STOP_GRACE_S

    def __post_init__(self) -> None:
        if not 1 <= self.kernels <= 64:
            raise HostError(f"--kernels {self.kernels}: from 1 to 64 kernels")
        if self.checkpoint_s is not None and not self.checkpoint_s > 0:
            raise HostError("the checkpoint interval must be above 0 s")


@dataclass
class HostVm:
    """One VM of the host as the members reported it."""

    id: int
    member: int | None
    """The member it runs on (None once it ended)."""
    state: str = "running"
    """running, moving (migrated away, not yet up elsewhere), ended, lost, restoring."""
    code: int | None = None
    """With ``state`` ended: the guest's exit status, None if it faulted or failed."""
    view: dict[str, Any] = field(default_factory=dict)
    """What its member said of it when it came up (image, mac, cmdline, memory)."""
    snapshot: str | None = None
    """Its last snapshot file (for ``restart_lost``)."""
    final_state: str = ""
    """The member's name for how it ended (exited, faulted, killed, ...)."""


class Member:
    """One kernel process of the host."""

    def __init__(self, plan: MemberPlan, proc: asyncio.subprocess.Process, link: socket.socket) -> None:
        self.plan = plan
        self.index = plan.index
        self.proc = proc
        self.pid = proc.pid
        self.state = "starting"
        """starting, running, lost (died on its own), stopped (by the host)."""
        self.exit_status: int | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.failure: str | None = None
        """What the member said when it failed to start."""
        self.events_done = asyncio.Event()
        """Set once its event stream ended (it closed its end of the link)."""
        self._link = link
        import aiohttp  # here, not at the top: every `denali boot` imports this module

        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=plan.api, limit=64),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        self._cpu_prev: tuple[float, float] | None = None
        self.cpu_pct = 0.0
        """CPU the process used over the last balance sample, in percent of one core."""
        self.progress = (0, 0)
        """(spawned, started) of its share of the boot, as it last told."""

    @property
    def api(self) -> str:
        return self.plan.api

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "running")

    def sample_cpu(self) -> float:
        """Percent of one core the process used since the previous call (``cpu_pct``)."""
        ticks = cpu_ticks(self.pid)
        now = time.monotonic()
        if ticks is None:
            return self.cpu_pct
        hz = os.sysconf("SC_CLK_TCK")
        if self._cpu_prev is not None and now > self._cpu_prev[0]:
            self.cpu_pct = 100.0 * (ticks - self._cpu_prev[1]) / hz / (now - self._cpu_prev[0])
        self._cpu_prev = (now, ticks)
        return self.cpu_pct

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout_s: float = 60
    ) -> tuple[int, dict[str, Any]]:
        """One request to this member's API: (status, JSON answer); ``HostError`` when it
        cannot be reached or does not answer JSON."""
        import aiohttp

        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.request(method, f"http://denali{path}", json=body) as resp:
                    data = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as exc:
            raise HostError(f"kernel {self.index}: {method} {path}: {exc!r}") from None
        if not isinstance(data, dict):
            raise HostError(f"kernel {self.index}: {method} {path}: not a JSON object")
        return resp.status, data

    def close_link(self) -> None:
        with contextlib.suppress(OSError):
            self._link.close()


def _count(value: object) -> int:
    """A count a member sent (anything else is 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def cpu_ticks(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` in clock ticks (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return float(int(fields[11]) + int(fields[12]))
    except (IndexError, ValueError):
        return None


def lan_works(address: str = "127.0.0.1") -> bool:
    """Whether a datagram sent to ``address`` comes back (the members' LAN runs over it):
    False in a network namespace whose loopback interface is down, for example."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((address, 0))
            s.settimeout(0.5)
            s.sendto(b"denali", s.getsockname())
            return s.recv(16) == b"denali"
    except OSError:
        return False


def _free_udp_ports(n: int, address: str = "127.0.0.1") -> list[int]:
    """``n`` UDP ports on ``address`` free now (bound and released: a member binds its own
    a moment later; a port taken meanwhile fails that member's start, one clear line)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((address, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Host:
    """N member kernels as one host (see the module docstring). ``await start()``, then
    ``wait_vms()`` or serve an API (``denali.host_api``), then ``await close()``."""

    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self.members: list[Member] = []
        self.vms: dict[int, HostVm] = {}
        self.moves = 0
        """VMs the balancer moved."""
        self.restarts = 0
        """Lost VMs restored from a snapshot."""
        self.checkpoints = 0
        self.console_dropped = 0
        """Console bytes the members dropped (stdout not read fast enough, or closed),
        as each told when it stopped."""
        self.console_closed = False
        """Some member found stdout closed."""
        self._dir: str | None = None
        self._own_dir = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._readers: set[asyncio.Task[Any]] = set()
        """The tasks reading the members' events (``close`` reads their last words)."""
        self._closing = False
        self._changed = asyncio.Event()
        self.started = asyncio.Event()
        """Set once every member serves (``start`` returned)."""

    # ---- lifecycle ----
    async def start(self) -> None:
        """Start every member and wait until each serves; ``HostError`` (after stopping
        the others) when one fails to start."""
        cfg = self.config
        if cfg.runtime_dir is None:
            self._dir = tempfile.mkdtemp(prefix="denali-host-")
            self._own_dir = True
        else:
            self._dir = cfg.runtime_dir
        os.chmod(self._dir, 0o700)
        if cfg.kernels > 1 and not lan_works(cfg.lan_local[0]):
            await self.close()
            raise HostError(
                f"the LAN between the host's kernels runs over {cfg.lan_local[0]}, which does not "
                "carry datagrams here (is the loopback interface up? ip link set lo up)"
            )
        base = cfg.lan_local[1]
        ports = (
            [base + j for j in range(cfg.kernels)] if base else _free_udp_ports(cfg.kernels, cfg.lan_local[0])
        )
        if ports[-1] > 65535:
            raise HostError(f"the host's LAN ports {base}..{ports[-1]} go past 65535")
        pending: dict[asyncio.Future[None], Member] = {}
        try:
            for j in range(cfg.kernels):
                await self._start_member(j, ports)
            pending = {asyncio.ensure_future(asyncio.shield(m.ready)): m for m in self.members}
            async with asyncio.timeout(READY_S):
                while pending:
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for fut in done:
                        pending.pop(fut)
                        fut.result()  # HostError when that member ended first
        except TimeoutError:
            self._forget_ready(pending)
            await self.close()
            raise HostError(f"a kernel did not start within {READY_S:g} s") from None
        except BaseException:
            self._forget_ready(pending)
            await self.close()
            raise
        self.started.set()
        if cfg.balance is not None and cfg.kernels > 1:
            self._spawn(self._balance_loop(cfg.balance))
        if cfg.checkpoint_s is not None:
            self._spawn(self._checkpoint_loop(cfg.checkpoint_s))
        log.info(
            "host of %d kernels running (pids %s)", cfg.kernels, ", ".join(str(m.pid) for m in self.members)
        )

    async def _start_member(self, j: int, ports: Sequence[int]) -> None:
        cfg = self.config
        assert self._dir is not None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        addr = cfg.lan_local[0]
        peers = [(addr, p) for k, p in enumerate(ports) if k != j] + list(cfg.lan_peers)
        remotes = "+".join(f"{h}:{p}" for h, p in peers)
        vxlan = f"vxlan:{cfg.vni}@{remotes},local={addr}:{ports[j]}" if remotes else ""
        plan = MemberPlan(
            index=j,
            kernels=cfg.kernels,
            api=os.path.join(self._dir, f"kernel{j}.sock"),
            vxlan=vxlan,
            id_start=j + 1,
            id_step=cfg.kernels,
            fd=theirs.fileno(),
        )
        argv = cfg.command(plan)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except OSError as exc:
            mine.close()
            raise HostError(f"cannot start kernel {j}: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        member = Member(plan, proc, mine)
        self.members.append(member)
        reader, writer = await asyncio.open_unix_connection(sock=mine)
        self._readers.add(self._spawn(self._read_events(member, reader, writer)))
        self._spawn(self._watch_exit(member))

    async def close(self) -> None:
        """Stop every member (SIGTERM, then SIGKILL after ``stop_grace_s``) and wait for
        them; idempotent. The members' events are read until each closed its link (what
        a stopping member tells, e.g. console bytes it dropped, is not lost)."""
        self._closing = True
        others = [t for t in self._tasks if t not in self._readers]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        for m in self.members:
            if m.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            try:
                await asyncio.wait_for(m.proc.wait(), self.config.stop_grace_s)
            except TimeoutError:
                log.warning(
                    "kernel %d (pid %d) did not stop within %g s: killed",
                    m.index,
                    m.pid,
                    self.config.stop_grace_s,
                )
                with contextlib.suppress(ProcessLookupError):
                    m.proc.kill()
                await m.proc.wait()
            if m.state != "lost":
                m.state = "stopped"
            m.exit_status = m.proc.returncode
            with contextlib.suppress(TimeoutError):  # it exited: what it sent is in the socket
                await asyncio.wait_for(m.events_done.wait(), 1)
            m.close_link()
            await m.session.close()
        readers = list(self._readers)
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        self._readers.clear()
        if self._own_dir and self._dir is not None:
            for name in os.listdir(self._dir):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self._dir, name))
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)
            self._own_dir = False

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- the members' events ----
    async def _read_events(
        self, m: Member, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    ev = json.loads(line)
                except ValueError:
                    log.warning("kernel %d sent a malformed event line", m.index)
                    continue
                if isinstance(ev, dict):
                    self._event(m, ev)
        finally:
            m.events_done.set()
            writer.close()

    def _event(self, m: Member, ev: dict[str, Any]) -> None:
        if "failed" in ev:
            m.failure = "".join(c if c.isprintable() else "?" for c in str(ev["failed"]))[:500]
        elif "ready" in ev:
            m.state = "running"
            if not m.ready.done():
                m.ready.set_result(None)
        elif "up" in ev:
            info = ev["up"]
            vm_id = int(info["id"])
            hv = self.vms.get(vm_id)
            if hv is None:
                hv = self.vms[vm_id] = HostVm(vm_id, m.index)
            hv.member, hv.state, hv.code = m.index, "running", None
            hv.view = {k: info.get(k) for k in ("image", "mac", "cmdline", "memory")}
        elif "progress" in ev:
            p = ev["progress"]
            if isinstance(p, dict):
                m.progress = (_count(p.get("spawned")), _count(p.get("started")))
        elif "console" in ev:
            c = ev["console"]
            if isinstance(c, dict):
                self.console_dropped += _count(c.get("dropped"))
                self.console_closed = self.console_closed or c.get("closed") is True
        elif "moved" in ev:
            hv = self.vms.get(int(ev["moved"]))
            if hv is not None and hv.member == m.index and hv.state == "running":
                hv.state = "moving"
        elif "end" in ev:
            info = ev["end"]
            hv = self.vms.get(int(info["id"]))
            if hv is not None and hv.member == m.index:
                hv.state, hv.member = "ended", None
                code = info.get("code")
                hv.code = int(code) if isinstance(code, int) else None
                hv.final_state = str(info.get("state", ""))
        self._changed.set()

    def _forget_ready(self, pending: dict[asyncio.Future[None], Member]) -> None:
        """The start failed with one member's error: the others' (several members often
        fail alike, e.g. on the same bad argument) are not reported again, nor left for
        asyncio to log as never retrieved."""
        for fut in [*pending, *(m.ready for m in self.members)]:
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()
        for m in self.members:  # one failing later, while the host closes, is not reported
            m.ready.add_done_callback(_retrieve)

    async def _watch_exit(self, m: Member) -> None:
        status = await m.proc.wait()
        m.exit_status = status
        if self._closing or m.state == "stopped":
            return
        if not m.ready.done():
            m.state = "lost"
            with contextlib.suppress(TimeoutError):  # its last words, if it had any
                await asyncio.wait_for(m.events_done.wait(), 2)
            how = f"signal {-status}" if status < 0 else f"status {status}"
            message = m.failure or f"kernel {m.index} ended while starting ({how})"
            m.ready.set_exception(HostError(message, status if status > 0 else None))
            return
        m.state = "lost"
        lost = sorted(
            v.id for v in self.vms.values() if v.member == m.index and v.state in ("running", "moving")
        )
        for vm_id in lost:
            self.vms[vm_id].state = "lost"
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        log.error(
            "kernel %d (pid %d) died (%s); its VMs are lost: %s; the other kernels go on",
            m.index,
            m.pid,
            how,
            ", ".join(map(str, lost)) or "none",
        )
        self._changed.set()
        if self.config.restart_lost:
            for vm_id in lost:
                await self._restart(self.vms[vm_id])
            self._changed.set()

    async def _restart(self, hv: HostVm) -> None:
        """Restore lost ``hv`` from its last snapshot on the least-loaded live member."""
        if hv.snapshot is None:
            log.warning("VM %d: lost with its kernel and has no snapshot to restart from", hv.id)
            return
        target = self.least_loaded()
        if target is None:
            log.error("VM %d: no kernel is left to restart it on", hv.id)
            return
        hv.state = "restoring"
        try:
            status, data = await target.call(
                "POST", "/v1/snapshots/restore", {"path": hv.snapshot}, timeout_s=120
            )
        except HostError as exc:
            status, data = 0, {"error": {"message": str(exc)}}
        if status == 200:
            self.restarts += 1
            if hv.state == "restoring":  # its "up" event may have come first
                hv.state, hv.member = "running", target.index
            log.warning("VM %d restarted on kernel %d from its snapshot %s", hv.id, target.index, hv.snapshot)
        else:
            hv.state = "lost"
            why = data.get("error", {}).get("message", f"HTTP {status}")
            log.error("VM %d: could not be restarted from %s: %s", hv.id, hv.snapshot, why)

    # ---- queries ----
    def member(self, index: int) -> Member | None:
        return self.members[index] if 0 <= index < len(self.members) else None

    def live(self) -> list[Member]:
        return [m for m in self.members if m.alive]

    def load(self, m: Member) -> int:
        """Live VMs on member ``m``."""
        return sum(1 for v in self.vms.values() if v.member == m.index and v.state in ("running", "moving"))

    def least_loaded(self) -> Member | None:
        """The running member with the fewest VMs (the lowest index among equals)."""
        live = [m for m in self.members if m.state == "running"]
        return min(live, key=lambda m: (self.load(m), m.index)) if live else None

    def boot_counts(self) -> tuple[int, int]:
        """(spawned, started) VMs of the boot: the members' last ``progress`` figures
        summed (members started with ``--progress`` tell them every 0.2 s), or what the
        table of VMs already shows when that is more (a VM that came up was spawned, one
        that ended had started)."""
        told = [m.progress for m in self.members]
        ended = sum(1 for v in self.vms.values() if v.state in ("ended", "lost"))
        return max(sum(t[0] for t in told), len(self.vms)), max(sum(t[1] for t in told), ended)

    def where(self, vm_id: int) -> HostVm | None:
        return self.vms.get(vm_id)

    def busy(self) -> bool:
        """Some VM runs, moves or is being restored."""
        return any(v.state in ("running", "moving", "restoring") for v in self.vms.values())

    async def wait_vms(self) -> list[HostVm]:
        """Wait until no VM runs, moves or is being restored (the boot without an API is
        then over); the VMs, by id."""
        while self.busy():
            self._changed.clear()
            await self._changed.wait()
        return [self.vms[k] for k in sorted(self.vms)]

    def stats(self) -> dict[str, Any]:
        """The host's own view: its members and counters (plain data)."""
        return {
            "kernels": [
                {
                    "kernel": m.index,
                    "pid": m.pid,
                    "state": m.state,
                    "api": m.api,
                    "lan": m.plan.vxlan.rpartition("local=")[2] or None,
                    "vms": self.load(m),
                    "cpu_pct": round(m.cpu_pct, 1),
                    "exit_status": m.exit_status,
                }
                for m in self.members
            ],
            "vms": len([v for v in self.vms.values() if v.state in ("running", "moving", "restoring")]),
            "lost_vms": sorted(v.id for v in self.vms.values() if v.state == "lost"),
            "moves": self.moves,
            "restarts": self.restarts,
            "checkpoints": self.checkpoints,
            "balance": self.config.balance is not None,
            "restart_lost": self.config.restart_lost,
        }

    # ---- moving VMs ----
    async def migrate(self, vm_id: int, to: int) -> dict[str, Any]:
        """Move VM ``vm_id`` to member ``to`` by live migration; the migration's answer
        (``HostError`` when it did not happen: the VM then runs on where it was)."""
        hv = self.vms.get(vm_id)
        dest = self.member(to)
        if hv is None or hv.member is None or hv.state != "running":
            raise HostError(f"VM {vm_id} is not running on this host")
        if dest is None or dest.state != "running":
            raise HostError(f"kernel {to} is not running")
        if hv.member == to:
            raise HostError(f"VM {vm_id} runs on kernel {to} already")
        src = self.members[hv.member]
        status, data = await src.call("POST", f"/v1/vms/{vm_id}/migrate", {"to": dest.api}, timeout_s=120)
        if status != 200:
            raise HostError(str(data.get("error", {}).get("message", f"HTTP {status}")))
        hv.member = to  # its "up" event says so too
        return data

    async def _balance_loop(self, policy: BalancePolicy) -> None:
        """Move a VM from the busiest member to the idlest when the gap lasts."""
        streak = 0
        quiet_until = 0.0
        prev_ns: dict[int, int] = {}
        while True:
            await asyncio.sleep(policy.interval_s)
            running = [m for m in self.members if m.state == "running"]
            for m in running:
                m.sample_cpu()
            if len(running) < 2:
                continue
            busy = max(running, key=lambda m: m.cpu_pct)
            idle = min(running, key=lambda m: m.cpu_pct)
            gap = busy.cpu_pct - idle.cpu_pct
            streak = streak + 1 if gap >= policy.threshold_pct else 0
            if streak < policy.sustain or time.monotonic() < quiet_until:
                continue
            try:
                status, data = await busy.call("GET", "/v1/vms")
            except HostError:
                continue
            rows = [r for r in data.get("vms", []) if r.get("state") in ("runnable", "running", "idle")]
            if status != 200 or len(rows) < 2:  # one VM moved would only move the gap
                continue
            deltas = {int(r["id"]): int(r.get("cpu_ns", 0)) - prev_ns.get(int(r["id"]), 0) for r in rows}
            for r in rows:
                prev_ns[int(r["id"])] = int(r.get("cpu_ns", 0))
            if not deltas:
                continue
            total = sum(deltas.values()) or 1
            half = total * gap / max(busy.cpu_pct, 1.0) / 2
            vm_id = min(deltas, key=lambda k: abs(deltas[k] - half))
            try:
                await self.migrate(vm_id, idle.index)
            except HostError as exc:
                log.info("balance: VM %d not moved: %s", vm_id, exc)
            else:
                self.moves += 1
                log.info(
                    "balance: VM %d moved from kernel %d (%.0f%% CPU) to kernel %d (%.0f%%)",
                    vm_id,
                    busy.index,
                    busy.cpu_pct,
                    idle.index,
                    idle.cpu_pct,
                )
            streak = 0
            quiet_until = time.monotonic() + policy.cooldown_s

    async def _checkpoint_loop(self, every_s: float) -> None:
        """Snapshot every running VM each ``every_s`` (pause, snapshot, resume)."""
        where = self.config.checkpoint_dir or self._dir
        assert where is not None
        while True:
            await asyncio.sleep(every_s)
            for hv in [v for v in self.vms.values() if v.state == "running" and v.member is not None]:
                await self.checkpoint(hv, os.path.join(where, f"vm{hv.id}.snap"))

    async def checkpoint(self, hv: HostVm, path: str) -> bool:
        """Pause VM ``hv``, snapshot it to ``path`` and resume it; True when it worked
        (then ``hv.snapshot`` is ``path``)."""
        if hv.member is None:
            return False
        m = self.members[hv.member]
        try:
            status, _ = await m.call("POST", f"/v1/vms/{hv.id}/pause")
            if status != 200:
                return False
            try:
                status, data = await m.call(
                    "POST", f"/v1/vms/{hv.id}/snapshot", {"path": path}, timeout_s=120
                )
            finally:
                await m.call("POST", f"/v1/vms/{hv.id}/resume")
        except HostError as exc:
            log.info("checkpoint of VM %d failed: %s", hv.id, exc)
            return False
        if status != 200:
            log.info("checkpoint of VM %d failed: %s", hv.id, data.get("error", {}).get("message"))
            return False
        hv.snapshot = path
        self.checkpoints += 1
        return True


# ---------------------------------------------------------------- the member's side


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (``PR_SET_PDEATHSIG``);
    a no-op where that is not available."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class MemberLink:
    """A member kernel's end of its link to the host (the socket pair's fd): ``send``
    events (JSON lines; never blocks, never raises), and ``gone`` is set when the host
    closed its end or died."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.gone = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Take the fd; ``HostError`` when it is not a socket."""
        try:
            sock = socket.socket(fileno=self.fd)
        except OSError as exc:
            raise HostError(f"--member-fd {self.fd}: {exc.strerror or exc}") from None
        reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        self._task = asyncio.ensure_future(self._watch(reader))

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(4096):
                pass
        except OSError:
            pass
        self.gone.set()

    def send(self, event: dict[str, Any]) -> None:
        """Queue one event line for the host (dropped once the host is gone)."""
        w = self._writer
        if w is None or w.is_closing():
            return
        try:
            w.write(json.dumps(event).encode() + b"\n")
        except (OSError, RuntimeError):
            self.gone.set()

    async def close(self) -> None:
        """Send what is queued (briefly), then close; idempotent."""
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                await asyncio.wait_for(self._writer.drain(), 1)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.close()


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
