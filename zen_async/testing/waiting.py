"""Waiting on a condition in tests, with a deadline instead of a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from zen_async.errors import ZenError

__all__ = ["until_ok", "wait_for"]

T = TypeVar("T")


async def wait_for(
    condition: Callable[[], Awaitable[bool]],
    *,
    deadline: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> None:
    """Await ``condition()`` until it is true.

    Raises:
        TimeoutError: still false after ``deadline`` seconds; the message names ``what``.
    """
    until = time.monotonic() + deadline
    while not await condition():
        if time.monotonic() > until:
            raise TimeoutError(f"not reached within {deadline}s: {what}")
        await asyncio.sleep(interval)


async def until_ok(
    op: Callable[[], Awaitable[T]], *, deadline: float, what: str, interval: float = 0.05
) -> T:
    """Await ``op()`` again after each ZenError until it succeeds; returns its result.

    Raises:
        TimeoutError: no success within ``deadline`` seconds; the message names ``what``
            and the last error.
    """
    until = time.monotonic() + deadline
    last: ZenError | None = None
    while time.monotonic() < until:
        try:
            return await op()
        except ZenError as exc:
            last = exc
            await asyncio.sleep(interval)
    raise TimeoutError(f"{what}: no success within {deadline}s; last error: {last!r}")
