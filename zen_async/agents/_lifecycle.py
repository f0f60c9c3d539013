"""Lifecycle helpers of the agent state manager: the transition table as the scripts read
it, their replies as results, and their terse error texts as typed errors that say what was
wrong."""

from __future__ import annotations

from typing import Any, Final

from zen_async.agents._records import text
from zen_async.agents.models import TRANSITIONS, LifecycleState, TransitionResult, sources_of
from zen_async.errors import (
    BackendError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
    ZenError,
)

__all__ = [
    "SOURCES",
    "explain",
    "lifecycle_state",
    "parse_cursor",
    "script_error",
    "transition_result",
]

SOURCES: Final = {t: "," + ",".join(sources_of(t)) + "," for t in LifecycleState}
"""For each target state, the states it may be reached from, as the transition scripts read
them (",a,b,")."""

_CODES: Final[dict[str, type[ZenError]]] = {
    "CONFLICT": ConflictError,
    "NOTFOUND": NotFoundError,
    "INVALID": InvalidTransitionError,
}


def lifecycle_state(value: LifecycleState | str) -> LifecycleState:
    """``value`` as a state.

    Raises:
        ValidationError: not a lifecycle state.
    """
    try:
        return LifecycleState(value)
    except ValueError:
        raise ValidationError(
            f"unknown lifecycle state {value!r}: use one of {[s.value for s in LifecycleState]}"
        ) from None


def transition_result(agent_id: str, target: LifecycleState, reply: Any) -> TransitionResult:
    """The result of a transition from its script reply ``{from, version, event_id}``."""
    from_state, version, event_id = reply
    return TransitionResult(
        agent_id=agent_id,
        from_state=LifecycleState(text(from_state)),
        to_state=target,
        version=int(version),
        event_id=text(event_id),
    )


def script_error(reply: bytes | str, agent_id: str) -> ZenError:
    """The typed error of a refusal a bulk script returned as a value ("CODE details")."""
    code, _, rest = text(reply).partition(" ")
    kind = _CODES.get(code)
    if kind is None:
        return BackendError(f"agent {agent_id}: unexpected script reply {text(reply)!r}")
    return explain(kind(rest), agent_id)


def explain(error: ZenError, agent_id: str) -> ZenError:
    """Give a script's terse error reply a message that says what was wrong."""
    if isinstance(error, InvalidTransitionError):
        parts = str(error).split()
        if len(parts) == 3:
            _, from_state, to_state = parts
            allowed = sorted(s.value for s in TRANSITIONS[LifecycleState(from_state)])
            return InvalidTransitionError(
                f"agent {agent_id} cannot go from {from_state} to {to_state}; "
                f"from {from_state} it may go to: {', '.join(allowed) or 'nothing (final)'}"
            )
    if isinstance(error, ConflictError):
        parts = str(error).split()
        if len(parts) == 3:
            return ConflictError(f"agent {agent_id} is at version {parts[1]}, expected {parts[2]}")
    if isinstance(error, NotFoundError):
        return NotFoundError(f"agent {agent_id!r} does not exist")
    return error


def parse_cursor(cursor: str | None, shards: int) -> tuple[int, str | None]:
    """A list_agents cursor ``"<shard>:<last id>"`` as (shard, last id).

    Raises:
        ValidationError: not a cursor list_agents returned.
    """
    if cursor is None:
        return 0, None
    shard_text, sep, after = cursor.partition(":")
    if not sep or not shard_text.isdigit() or int(shard_text) > shards:
        raise ValidationError(f"cursor {cursor!r} is not one list_agents returned")
    return int(shard_text), after or None
