"""``Metrics.time()``: a context manager, sync or async, that records its block in ms."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["Timer"]


class Timer:
    """Measures a block in milliseconds and records it on exit, also when the block raises;
    ``elapsed_ms`` holds the result afterwards. Use with ``with`` or ``async with``.

    Args:
        record: called with the elapsed milliseconds.
    """

    __slots__ = ("_record", "_started", "elapsed_ms")

    def __init__(self, record: Callable[[float], None]) -> None:
        self._record = record
        self._started = 0.0
        self.elapsed_ms: float | None = None

    def __enter__(self) -> Timer:
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.elapsed_ms = (time.perf_counter() - self._started) * 1000.0
        self._record(self.elapsed_ms)

    async def __aenter__(self) -> Timer:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
