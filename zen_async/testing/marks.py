"""pytest marks shared by the project's fault tests (imports pytest: tests only)."""

import pytest

__all__ = ["UNCLOSED_BY_A_FAULT"]

UNCLOSED_BY_A_FAULT = [
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function StreamWriter.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function AbstractConnection.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]
"""pytest marks for a module that kills, freezes or fails over servers under load: a
connection dropped by the fault (reset by a killed server, timed out on a frozen one,
cancelled at a call bound) may be collected before redis-py closed it, and its finalizer
then closes it with a ResourceWarning. Such modules assert what callers get, not redis-py's
connection hygiene."""
