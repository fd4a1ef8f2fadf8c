"""One owner for the background tasks of a kernel part: started, tracked, ended, logged.

Every task the kernel starts belongs to a ``TaskOwner``; none is left pending at close,
and an exception that ends a task is logged once (never "Task exception was never
retrieved").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskOwner:
    """A set of tasks on the running loop; ``aclose`` ends them."""

    __slots__ = ("_tasks", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Start ``coro`` as a task this owner keeps until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: task %s failed", self.name, task.get_name(), exc_info=exc)

    async def join(self) -> None:
        """Wait for every task (started so far and while waiting) to end by itself."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self, cancel: bool = True) -> None:
        """Cancel (or with ``cancel=False`` wait for) every task, then return once all
        have ended."""
        if cancel:
            for task in list(self._tasks):
                task.cancel()
        await self.join()
