"""Agents in degraded mode (docs/operations.md): what a transition, an update or a heartbeat
does while Redis is unreachable, and how the journal applies it afterwards.

Two things are kept apart:

- the **base**: the last record this process read from or wrote to the server (degraded
  mode's last-known value under :func:`known_key`), only ever replaced by a server reply;
- the **view** callers see offline: the base with this agent's journaled writes applied on
  top, in journal order (:func:`view`). It carries ``stale=True`` and, when it includes a
  journaled write, ``provisional=True``; its ``version`` stays the base's: an offline
  acknowledgement never invents a server version.

Offline, a transition or an update is checked against the view (the lifecycle table,
``expected_version``), journaled with its operation id, and answered from the view. On replay
it is applied with the same operation id: the script records the id in the step that applies
the write, so a second application (a replay interrupted after the write, a retry after a
lost reply) returns the first one's reply and changes nothing. Replay never reads or writes
the view; a write the server refuses on replay (another instance moved the agent meanwhile)
is recorded as an event and counted by degraded mode, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

from zen_async.agents._records import check_changes, with_changes
from zen_async.agents.models import (
    TRANSITIONS,
    AgentRecord,
    LifecycleState,
    TransitionResult,
)
from zen_async.degraded import DegradedMode, JournalEntry
from zen_async.errors import ConflictError, DegradedError, InvalidTransitionError

__all__ = [
    "AGENT_WRITES",
    "check_transition",
    "check_version",
    "dump_changes",
    "journaled_result",
    "known_key",
    "offline_heartbeat",
    "restore_changes",
    "view",
]

AGENT_WRITES = frozenset({"agents.transition", "agents.update"})
"""The journaled kinds that change an agent's record (a heartbeat changes only its lease)."""


def known_key(tenant: str, agent_id: str) -> Hashable:
    """The last-known (base) cache key of an agent."""
    return ("agent", tenant, agent_id)


def _pending(degraded: DegradedMode, tenant: str, agent_id: str) -> list[JournalEntry]:
    return degraded.journal.pending_for(AGENT_WRITES, tenant, "agent_id", agent_id)


def apply_entry(record: AgentRecord, entry: JournalEntry) -> AgentRecord:
    """``record`` with one journaled write applied (its state or fields; not its version),
    validated as the model validates any write.

    Raises:
        ValidationError: the journaled changes do not make a valid record.
    """
    if entry.kind == "agents.transition":
        return record.model_copy(update={"lifecycle_state": LifecycleState(entry.args["to_state"])})
    return with_changes(record, restore_changes(entry.args["changes"]))


def view(degraded: DegradedMode, tenant: str, agent_id: str) -> AgentRecord | None:
    """The base with this agent's journaled writes applied in order, marked stale (and
    provisional when a journaled write is in it); None when this process has no base."""
    base = degraded.recall(known_key(tenant, agent_id))
    if not isinstance(base, AgentRecord):
        return None
    record = base
    pending = _pending(degraded, tenant, agent_id)
    for entry in pending:
        record = apply_entry(record, entry)
    return record.model_copy(update={"stale": True, "provisional": bool(pending)})


def _known_view(degraded: DegradedMode, tenant: str, agent_id: str, what: str) -> AgentRecord:
    record = view(degraded, tenant, agent_id)
    if record is None:
        raise DegradedError(
            f"Redis is unreachable and this process has no last-known record of agent "
            f"{agent_id}, so {what} cannot be checked now; retry once Redis is back"
        )
    return record


def check_version(
    degraded: DegradedMode,
    tenant: str,
    agent_id: str,
    expected_version: int | None,
    what: str,
) -> AgentRecord:
    """The view of the agent, after checking ``expected_version`` against it offline.

    Raises:
        DegradedError: no last-known record.
        ConflictError: the base is at another version, or journaled writes to this agent
            wait (the version they will give is the server's to say, so it cannot be
            checked now).
    """
    current = _known_view(degraded, tenant, agent_id, what)
    if expected_version is None:
        return current
    if current.provisional:
        raise ConflictError(
            f"agent {agent_id}: expected_version {expected_version} cannot be checked while "
            "journaled writes to it wait to be replayed (Redis is unreachable); retry without "
            "expected_version, or once Redis is back"
        )
    if current.version != expected_version:
        raise ConflictError(
            f"agent {agent_id} is at version {current.version} (last known: Redis is "
            f"unreachable), expected {expected_version}"
        )
    return current


def check_transition(
    degraded: DegradedMode,
    tenant: str,
    agent_id: str,
    target: LifecycleState,
    expected_version: int | None,
) -> AgentRecord:
    """The view of the agent, after checking a transition to ``target`` against it offline.

    Raises:
        DegradedError: no last-known record.
        ConflictError, InvalidTransitionError: as online (nothing is journaled).
    """
    current = check_version(
        degraded, tenant, agent_id, expected_version, f"a transition to {target.value}"
    )
    if target not in TRANSITIONS[current.lifecycle_state]:
        allowed = sorted(s.value for s in TRANSITIONS[current.lifecycle_state])
        raise InvalidTransitionError(
            f"agent {agent_id} cannot go from {current.lifecycle_state.value} to "
            f"{target.value}; from {current.lifecycle_state.value} it may go to: "
            f"{', '.join(allowed) or 'nothing (final)'}"
        )
    return current


def journaled_result(before: AgentRecord, target: LifecycleState, op_id: str) -> TransitionResult:
    """The caller's answer for a journaled transition: provisional, at the last version the
    server gave (the server numbers the new one when the journal is replayed)."""
    return TransitionResult(
        agent_id=before.agent_id,
        from_state=before.lifecycle_state,
        to_state=target,
        version=before.version,
        event_id=f"journal:{op_id}",
        provisional=True,
    )


def offline_heartbeat(lease_ms: int) -> datetime:
    """The lease expiry a journaled heartbeat will give (this machine's clock)."""
    return datetime.now(UTC) + timedelta(milliseconds=lease_ms)


def dump_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """An update's changes as JSON-safe values (for the journal)."""
    return {
        name: value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        for name, value in changes.items()
    }


def restore_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`dump_changes`: each field validated again as the model's.

    Raises:
        ValidationError: a field the model refuses (a journal written by hand).
    """
    return check_changes(changes, None)
