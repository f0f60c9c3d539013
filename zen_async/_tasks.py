"""Owned background tasks: started on entry, cancelled and awaited on exit.

A task group around an ``async with`` body would wrap the body's own exceptions in an
ExceptionGroup; these tasks are owned instead, so the caller's errors stay as they are, and
no task is ever left running (no fire-and-forget).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import anyio
import structlog

__all__ = ["background"]

log = structlog.get_logger(__name__)

_RECANCEL_INTERVAL = 0.5


@contextlib.asynccontextmanager
async def background(**coroutines: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run each coroutine as a named task for the duration of the block.

    A task that fails is logged (its error does not interrupt the block); on exit every task
    is cancelled, again every half second until it ends, and awaited, shielded from the
    caller's own cancellation.
    """
    tasks = [asyncio.create_task(coro, name=f"zen-{name}") for name, coro in coroutines.items()]
    for task in tasks:
        task.add_done_callback(_log_failure)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            pending = set(tasks)
            while pending:
                # Cancel again while a task lingers: on Python 3.11 a cancel that lands as a
                # redis-py read or write times out can be swallowed, and a loop would go on.
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=_RECANCEL_INTERVAL)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background_task_failed", task=task.get_name(), error=repr(task.exception()))
