"""Waiting on a condition in tests, with a deadline instead of a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["wait_for"]


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
