"""Stackable monitors: interposition on a VM's hypercalls, interrupts, faults, frames and disk
requests (docs/monitors.md).

A monitor (``Monitor``) sits between a VM and the layer below it and may see and change
the events it interposes on; ``MonitorStack`` holds a VM's monitors in order. Attach them
at spawn (``Kernel.spawn(..., monitors=[...])``) or push and pop them on a running VM
(``Kernel.monitors_of(vm)``). Library monitors: ``Tracer`` (JSON lines), ``Policy``
(allowed hypercalls, rate and byte limits), ``GdbStub`` (the GDB remote protocol), and
``MessageMonitor`` (events as request/response messages, answered elsewhere).
"""

from denali.monitor.base import (
    Answer,
    Delay,
    FaultEvent,
    HypercallEvent,
    Monitor,
    Resume,
    Stop,
)
from denali.monitor.stack import MonitorStack

__all__ = ("Answer", "Delay", "FaultEvent", "HypercallEvent", "Monitor", "MonitorStack", "Resume", "Stop")
