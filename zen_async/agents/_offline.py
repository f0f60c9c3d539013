"""Agents in degraded mode (docs/operations.md): what a transition, an update or a heartbeat
does while Redis is unreachable, and how the journal applies it afterwards.

Offline, a transition or update is checked against this process's last-known record of the
agent (the lifecycle table, ``expected_version``), journaled with the version it is based on,
and answered with the record it will produce (``event_id="journal:<op id>"``). On replay it is
applied with that version as ``expected_version``: exactly once, since a second application
finds the version moved on; when the version moved for another reason (another instance wrote
meanwhile), the server's state is kept and the resolution recorded as an event.
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

from zen_async.agents.models import (
    TRANSITIONS,
    AgentCapabilities,
    AgentPerformance,
    AgentRecord,
    LifecycleState,
    TransitionResult,
)
from zen_async.degraded import DegradedMode
from zen_async.errors import ConflictError, DegradedError, InvalidTransitionError

__all__ = [
    "already_applied",
    "dump_changes",
    "journaled_result",
    "known_key",
    "offline_heartbeat",
    "offline_transition",
    "offline_update",
    "restore_changes",
    "stale",
]


def known_key(tenant: str, agent_id: str) -> Hashable:
    """The last-known cache key of an agent."""
    return ("agent", tenant, agent_id)


def stale(record: AgentRecord | None) -> AgentRecord | None:
    """``record`` marked as served from the last-known values."""
    return None if record is None else record.model_copy(update={"stale": True})


def _known(degraded: DegradedMode, tenant: str, agent_id: str, what: str) -> AgentRecord:
    record = degraded.recall(known_key(tenant, agent_id))
    if not isinstance(record, AgentRecord):
        raise DegradedError(
            f"Redis is unreachable and this process has no last-known record of agent "
            f"{agent_id}, so {what} cannot be checked now; retry once Redis is back"
        )
    return record


def offline_transition(
    degraded: DegradedMode,
    tenant: str,
    agent_id: str,
    target: LifecycleState,
    expected_version: int | None,
) -> tuple[AgentRecord, AgentRecord]:
    """Check a transition against the last-known record; returns it and the record after.

    Raises:
        DegradedError: no last-known record.
        ConflictError, InvalidTransitionError: as online (nothing is journaled).
    """
    known = _known(degraded, tenant, agent_id, f"a transition to {target.value}")
    _check_version(known, expected_version)
    if target not in TRANSITIONS[known.lifecycle_state]:
        allowed = sorted(s.value for s in TRANSITIONS[known.lifecycle_state])
        raise InvalidTransitionError(
            f"agent {agent_id} cannot go from {known.lifecycle_state.value} to {target.value}; "
            f"from {known.lifecycle_state.value} it may go to: "
            f"{', '.join(allowed) or 'nothing (final)'}"
        )
    after = known.model_copy(
        update={
            "lifecycle_state": target,
            "version": known.version + 1,
            "updated_at": datetime.now(UTC),
        }
    )
    return known, after


def journaled_result(known: AgentRecord, after: AgentRecord, op_id: str) -> TransitionResult:
    """The caller's answer for a journaled transition."""
    return TransitionResult(
        agent_id=known.agent_id,
        from_state=known.lifecycle_state,
        to_state=after.lifecycle_state,
        version=after.version,
        event_id=f"journal:{op_id}",
    )


def offline_update(
    degraded: DegradedMode,
    tenant: str,
    agent_id: str,
    changes: dict[str, Any],
    expected_version: int | None,
) -> tuple[AgentRecord, AgentRecord]:
    """Check an update against the last-known record; returns it and the record after."""
    known = _known(degraded, tenant, agent_id, "an update")
    _check_version(known, expected_version)
    after = known.model_copy(
        update={**changes, "version": known.version + 1, "updated_at": datetime.now(UTC)}
    )
    return known, after


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
    """The inverse of :func:`dump_changes`."""
    out = dict(changes)
    if "capabilities" in out:
        out["capabilities"] = AgentCapabilities.model_validate(out["capabilities"])
    if "performance" in out:
        out["performance"] = AgentPerformance.model_validate(out["performance"])
    return out


def already_applied(record: AgentRecord | None, based_on: int, changes: dict[str, Any]) -> bool:
    """True when ``record`` is exactly one write past ``based_on`` and holds ``changes``: the
    journaled write was applied before (its replay was interrupted)."""
    if record is None or record.version != based_on + 1:
        return False
    return all(getattr(record, name) == value for name, value in changes.items())


def _check_version(known: AgentRecord, expected_version: int | None) -> None:
    if expected_version is not None and known.version != expected_version:
        raise ConflictError(
            f"agent {known.agent_id} is at version {known.version} (last known: Redis is "
            f"unreachable), expected {expected_version}"
        )
