"""Operation ids: the name of one write, so that applying it twice has the effect of once.

Every write that changes an entity carries one (generated, or given by the caller as
``op_id=``). The Lua step that applies the write records the op id next to the entity, in the
same atomic step, for ``REDIS_OP_MARKER_TTL`` seconds (default an hour); a call whose op id
is recorded applies nothing and returns the first call's reply. Retries after a timeout,
replays of the outage journal and a caller retrying with the op id a ``BackendError`` named
are then safe by construction (docs/operations.md, "Operation ids").
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from zen_async.errors import ValidationError

__all__ = ["OP_ID_PATTERN", "new_op_id"]

OP_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
"""What an op id may be: 1 to 64 letters, digits, ``_ . : -`` (a UUID fits)."""


def new_op_id(given: str | None = None) -> str:
    """``given`` checked, or a new random op id.

    Raises:
        ValidationError: ``given`` is not 1 to 64 of ``[A-Za-z0-9_.:-]``.
    """
    if given is None:
        return uuid.uuid4().hex
    if not isinstance(given, str) or OP_ID_PATTERN.fullmatch(given) is None:
        raise ValidationError(
            f"op_id {given!r} is not valid: use 1 to 64 letters, digits or _ . : -"
        )
    return given
