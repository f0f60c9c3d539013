"""The public surface: names exported from the package, sorted, and all importable."""

from __future__ import annotations

import builtins

import zen_async
from zen_async import errors


def test_all_is_sorted_and_complete() -> None:
    assert zen_async.__all__ == sorted(zen_async.__all__)
    for name in zen_async.__all__:
        assert hasattr(zen_async, name), name


def test_every_error_descends_from_zen_error() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, errors.ZenError), name
    assert issubclass(errors.DegradedError, errors.BackendError)


def test_no_error_shadows_a_builtin() -> None:
    assert not set(errors.__all__) & set(dir(builtins))
