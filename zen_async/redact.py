"""Sensitive-field redaction: the seed's "sensitive data exclusion from Redis storage".

A :class:`Redactor` replaces the value of every field whose *name* is sensitive (``api_key``,
``password``, ``token``...) with :data:`REDACTED` before a caller's payload is written: task
requests and results, event data, agent metadata and memory metadata. The names come from
``REDIS_REDACT_FIELDS`` (comma-separated; empty disables redaction); the default is
:data:`DEFAULT_REDACT_FIELDS`.

Matching:

- on dictionary keys only (a secret inside a free-text string is not found), through
  nested dicts, lists and tuples;
- ignoring ASCII case and the separators ``_`` and ``-``: ``api_key`` also catches
  ``API_KEY``, ``api-key``, ``apiKey`` and ``ApiKey``;
- exactly, so ``token`` does not catch ``tokens`` or ``token_count``; a name with ``*`` is a
  shell-style pattern (``*_token`` catches ``github_token`` and ``GitHubToken``).

A matching field's value — a string, a number, a whole nested object — becomes
``"[redacted]"``; a ``None`` value stays ``None`` (there is nothing to hide). The caller's
object is never changed: when a field matches, the containers on the path to it are copied
(shallowly) and everything else is shared; when nothing matches, the very same object comes
back and nothing is allocated but the walk's iterators. Keys are remembered by verdict (a
bounded memo), so a dict whose keys were all seen before costs one C-level set check.
"""

from __future__ import annotations

import fnmatch
import re
import string
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from zen_async.errors import ValidationError

if TYPE_CHECKING:
    from zen_async.config import Settings

__all__ = [
    "DEFAULT_REDACT_FIELDS",
    "FIELDS_PATTERN",
    "MAX_DEPTH",
    "REDACTED",
    "Redactor",
    "parse_fields",
]

T = TypeVar("T")

REDACTED: Final = "[redacted]"
"""What a sensitive field's value becomes."""

DEFAULT_REDACT_FIELDS: Final[tuple[str, ...]] = (
    "access_token",
    "api_key",
    "auth_token",
    "authorization",
    "client_secret",
    "cookie",
    "credentials",
    "id_token",
    "passwd",
    "password",
    "private_key",
    "refresh_token",
    "secret",
    "secret_key",
    "session_token",
    "token",
    "x_api_key",
)
"""The field names redacted unless ``REDIS_REDACT_FIELDS`` says otherwise."""

MAX_DEPTH: Final = 255
"""The deepest nesting walked; deeper data is refused (orjson refuses it too)."""

FIELDS_PATTERN: Final = r"^\s*[A-Za-z0-9_.*-]*\s*(,\s*[A-Za-z0-9_.*-]*\s*)*$"
"""What ``REDIS_REDACT_FIELDS`` accepts: comma-separated names, blanks around them allowed."""

_FIELD: Final = re.compile(r"[A-Za-z0-9_.*-]+")
# ASCII letters to lower case, the separators dropped: how names and keys are compared.
_NORMAL: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, "_-")
_CONTAINERS: Final = (dict, list, tuple)
_MEMO_SIZE: Final = 8192  # distinct keys remembered; payload keys repeat, so hits dominate


def parse_fields(raw: str | Iterable[str]) -> tuple[str, ...]:
    """The field names of a comma-separated list (or an iterable of names), blanks dropped.

    Raises:
        ValidationError: a name with a character outside ``A-Z a-z 0-9 _ . - *``.
    """
    names = raw.split(",") if isinstance(raw, str) else list(raw)
    fields: list[str] = []
    for entry in names:
        if not isinstance(entry, str):
            raise ValidationError(f"redact field {entry!r} is not a string")
        name = entry.strip()
        if not name:
            continue
        if not _FIELD.fullmatch(name):
            raise ValidationError(
                f"redact field {name!r} is invalid: use characters from "
                "A-Z a-z 0-9 _ . - and * as a wildcard"
            )
        fields.append(name)
    return tuple(fields)


class Redactor:
    """Replaces the values of sensitive fields in JSON-like data (see the module docs).

    Args:
        fields: the field names (and ``*`` patterns); empty: redaction is off.

    Raises:
        ValidationError: an invalid field name.
    """

    __slots__ = ("_exact", "_fields", "_hits", "_pattern", "_safe")

    def __init__(self, fields: Iterable[str] = DEFAULT_REDACT_FIELDS) -> None:
        self._fields = parse_fields(fields)
        normal = [f.translate(_NORMAL) for f in self._fields]
        self._exact = frozenset(n for n in normal if "*" not in n)
        patterns = [fnmatch.translate(n) for n in normal if "*" in n]
        self._pattern = re.compile("|".join(patterns)) if patterns else None
        # Keys seen before, by verdict: a dict whose keys are all known safe is checked by
        # one C-level ``issuperset``, without a Python step per key.
        self._safe: set[object] = set()
        self._hits: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """The redactor ``REDIS_REDACT_FIELDS`` configures."""
        return cls(parse_fields(settings.redis_redact_fields))

    @property
    def fields(self) -> tuple[str, ...]:
        """The configured names, as given."""
        return self._fields

    @property
    def enabled(self) -> bool:
        """Whether any field is redacted."""
        return bool(self._fields)

    def __repr__(self) -> str:
        return f"Redactor(fields={list(self._fields)!r})"

    def is_sensitive(self, name: object) -> bool:
        """Whether a field called ``name`` is redacted (never for a key that is not a str)."""
        if name in self._hits:
            return True
        if name in self._safe or not isinstance(name, str):
            return False
        normal = name.translate(_NORMAL)
        hit = normal in self._exact or (
            self._pattern is not None and self._pattern.fullmatch(normal) is not None
        )
        known = self._hits if hit else self._safe
        if len(known) >= _MEMO_SIZE:
            known.clear()
        known.add(name)
        return hit

    def redact(self, value: T, *, what: str = "data") -> T:
        """``value`` with every sensitive field's value replaced by :data:`REDACTED`.

        Returns ``value`` itself when nothing matches; otherwise a copy of the containers
        on the way to each match (the caller's object is never modified).

        Args:
            value: JSON-like data: dicts, lists, tuples and scalars; other objects pass as
                they are.
            what: how an error message calls ``value`` (``"request"``, ``"event data"``).

        Raises:
            ValidationError: ``value`` nests deeper than :data:`MAX_DEPTH` levels (or contains
                itself).
        """
        if not self._fields or not isinstance(value, _CONTAINERS):
            return value
        return self._walk(value, 0, what)  # type: ignore[no-any-return]

    def _walk(self, value: Any, depth: int, what: str) -> Any:
        if depth >= MAX_DEPTH:
            raise ValidationError(
                f"{what} nests deeper than {MAX_DEPTH} levels (or contains itself): "
                f"JSON of at most {MAX_DEPTH} levels of objects and arrays is accepted"
            )
        if isinstance(value, dict):
            return self._walk_dict(value, depth, what)
        return self._walk_sequence(value, depth, what)

    # Both scan without copying; the first changed child starts the copy, and the rest of
    # the container is finished in copying mode: every child is walked exactly once.
    def _walk_dict(self, value: dict[Any, Any], depth: int, what: str) -> dict[Any, Any]:
        if not self._safe.issuperset(value) and self._any_sensitive(value):
            return self._copy_dict(value, depth, what)
        pairs = iter(value.items())
        for key, item in pairs:
            if isinstance(item, _CONTAINERS):
                new = self._walk(item, depth + 1, what)
                if new is not item:
                    copied = dict(value)
                    copied[key] = new
                    for rest_key, rest in pairs:
                        if isinstance(rest, _CONTAINERS):
                            copied[rest_key] = self._walk(rest, depth + 1, what)
                    return copied
        return value

    def _walk_sequence(
        self, value: list[Any] | tuple[Any, ...], depth: int, what: str
    ) -> list[Any] | tuple[Any, ...]:
        for i, item in enumerate(value):
            if isinstance(item, _CONTAINERS):
                new = self._walk(item, depth + 1, what)
                if new is not item:
                    items = list(value)
                    items[i] = new
                    for j in range(i + 1, len(items)):
                        if isinstance(items[j], _CONTAINERS):
                            items[j] = self._walk(items[j], depth + 1, what)
                    return tuple(items) if isinstance(value, tuple) else items
        return value

    def _any_sensitive(self, mapping: dict[Any, Any]) -> bool:
        found = False
        for key in mapping:
            if self.is_sensitive(key):
                found = True  # go on: learn every key of the dict for the next time
        return found

    def _copy_dict(self, value: dict[Any, Any], depth: int, what: str) -> dict[Any, Any]:
        """A copy of ``value`` with its sensitive fields redacted, recursing into the rest."""
        copied = dict(value)
        changed = False
        for key, item in value.items():
            if self.is_sensitive(key):
                if item is None or (isinstance(item, str) and item == REDACTED):
                    continue
                copied[key] = REDACTED
                changed = True
            elif isinstance(item, _CONTAINERS):
                new = self._walk(item, depth + 1, what)
                if new is not item:
                    copied[key] = new
                    changed = True
        return copied if changed else value
