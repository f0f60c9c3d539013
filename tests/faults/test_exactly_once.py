"""Exactly once by construction (issue 13): the reproductions that broke degraded mode's
zero-loss promise, as regression tests on real servers that are frozen or killed.

Every write carries an op id that the Lua step applying it records in the same atomic step;
a caller that gets a BackendError retries with the op id the error names, as a user would.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.lowlevel
import anyio.to_thread
import pytest

from zen_async import (
    BackendError,
    CapacityError,
    DurabilityError,
    Zen,
    open_zen,
)
from zen_async.agents.models import AgentRecord, LifecycleState
from zen_async.testing import Standalone
from zen_async.testing.deployments import settings_for
from zen_async.testing.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

T = TypeVar("T")


def degraded_settings(group: Standalone, **overrides: Any) -> Any:
    """Short timeouts, no retries, a breaker that opens at the first failure: ``overrides``
    change any of them."""
    values: dict[str, Any] = {
        "redis_socket_timeout": 0.3,
        "redis_connect_timeout": 0.3,
        "redis_retry_attempts": 0,
        "redis_breaker_failure_threshold": 1,
        "redis_breaker_reset_timeout": 0.2,
        "redis_health_check_interval": 0.2,
    }
    return settings_for(group, **{**values, **overrides})


async def acknowledged(call: Callable[[str | None], Awaitable[T]]) -> T:
    """Call until acknowledged, retrying a BackendError with the op id it names (the safe
    retry the error message tells a caller to make)."""
    op_id: str | None = None
    for _ in range(200):
        try:
            return await call(op_id)
        except BackendError as exc:
            failed = exc
        assert failed.op_id is not None, f"a failed write names its op id: {failed}"
        assert f"op_id={failed.op_id}" in str(failed)
        op_id = failed.op_id
        await anyio.sleep(0.05)
    raise AssertionError("never acknowledged")


async def journal_drained(zen: Zen) -> None:
    async def drained() -> bool:
        return zen.redis.degraded.journal.depth == 0 and not zen.redis.degraded.active

    await wait_for(drained, deadline=60, what="the outage journal replayed")


async def test_updates_to_a_frozen_server_are_all_applied_once(tmp_path: Path) -> None:
    """Reproduction 1: one writer, 50 updates while the server is frozen. Before, the agent
    ended at metadata={} and version 1 or 2, for good (replay compared against the
    last-known record the offline writes had advanced)."""
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        async with open_zen(degraded_settings(group)) as zen:
            agents = zen.agents
            await agents.create_agent("analyze", agent_id="r")

            async def update(metadata: dict[str, int], op_id: str | None) -> AgentRecord:
                return await agents.update_agent("r", metadata=metadata, op_id=op_id)

            group.server.pause()
            try:
                acks = []
                for i in range(50):
                    acks.append(await acknowledged(functools.partial(update, {"n": i})))
                assert acks[-1].metadata == {"n": 49}
                offline = [a for a in acks if a.stale]
                assert offline, "the freeze made some updates offline"
                assert all(a.provisional and a.version == offline[0].version for a in offline), (
                    "offline acknowledgements do not invent server versions"
                )
                view = await agents.get_agent("r")
                assert view is not None
                assert (view.stale, view.metadata) == (True, {"n": 49})
            finally:
                group.server.resume()
            await journal_drained(zen)
            final = await agents.get_agent("r")
            assert final is not None
            assert not final.stale
            assert final.metadata == {"n": 49}
            assert final.version == 51, "each of the 50 updates applied exactly once"
            assert zen.redis.degraded.resolutions == 0
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_transitions_across_a_kill_9_are_applied_once_in_order(tmp_path: Path) -> None:
    """Reproduction 2: AOF always, a journal file, one coroutine moving one agent back and
    forth while the server is killed with SIGKILL and restarted 2 s later. Before: journaled
    transitions refused on replay, versions acknowledged twice, acknowledged transitions
    neither applied nor reported."""
    group = Standalone(
        "redis", base_dir=tmp_path, extra_args=["--appendonly", "yes", "--appendfsync", "always"]
    )
    await anyio.to_thread.run_sync(group.start)
    settings = degraded_settings(group, redis_outage_journal=tmp_path / "outage.journal")
    try:
        async with open_zen(settings) as zen:
            agents = zen.agents
            await agents.create_agent("worker", agent_id="w")
            await agents.transition("w", "ready")
            targets: list[LifecycleState] = []
            stop = anyio.Event()

            async def transition(agent_id: str, to: LifecycleState, op_id: str | None) -> object:
                return await agents.transition(agent_id, to, op_id=op_id)

            async def writer() -> None:
                target = LifecycleState.RUNNING
                while not stop.is_set():
                    await acknowledged(functools.partial(transition, "w", target))
                    targets.append(target)
                    target = (
                        LifecycleState.READY
                        if target is LifecycleState.RUNNING
                        else LifecycleState.RUNNING
                    )
                    await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                await anyio.sleep(0.5)
                await anyio.to_thread.run_sync(group.server.kill)
                await anyio.sleep(2.0)
                await anyio.to_thread.run_sync(group.server.start)
                await anyio.sleep(1.0)
                stop.set()
            await journal_drained(zen)
            trail = await zen.events.audit_trail("w", limit=100_000)
            changes = [e.data for e in trail if e.type == "state_changed"]
            assert [c["to"] for c in changes[1:]] == [t.value for t in targets], (
                "every acknowledged transition applied exactly once, in order"
            )
            versions = [c["version"] for c in changes]
            assert versions == list(range(2, 2 + len(changes))), "versions contiguous"
            record = await agents.get_agent("w")
            assert record is not None
            assert record.version == 1 + len(changes)
            assert zen.redis.degraded.resolutions == 0
            assert zen.redis.degraded.journal.accepted > 0, "some were journaled"
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_a_thread_at_its_cap_refuses_a_turn_offline_too(tmp_path: Path) -> None:
    """Reproduction 4: online add_turn raises CapacityError at the cap; offline it was
    acknowledged, then dropped on replay."""
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        async with open_zen(degraded_settings(group)) as zen:
            conversations = zen.conversations
            thread = await conversations.create_thread("chat", {})
            for i in range(conversations.max_turns - 1):
                await conversations.add_turn(thread, "user", f"turn {i}")
            group.server.pause()
            try:
                last = await acknowledged(
                    lambda op: conversations.add_turn(thread, "user", "last", op_id=op)
                )
                with pytest.raises(CapacityError, match="outage journal"):
                    await conversations.add_turn(thread, "user", "one too many")
            finally:
                group.server.resume()
            await journal_drained(zen)
            context = await conversations.get_thread(thread)
            assert context is not None
            assert len(context.turns) == conversations.max_turns
            assert context.turns[-1].content == "last"
            assert last in (0, conversations.max_turns)
            assert zen.redis.degraded.resolutions == 0
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_a_write_that_failed_mid_call_names_its_op_id_and_a_retry_applies_it_once(
    tmp_path: Path,
) -> None:
    """Reproduction 5: during a freeze the first writes raise BackendError before the
    breaker opens, and one such 'failed' transition was applied when the server resumed. Now
    the error says it may have been applied and names the op id; retrying with it is safe."""
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    settings = degraded_settings(group, redis_breaker_failure_threshold=100)
    try:
        async with open_zen(settings) as zen:
            agents = zen.agents
            await agents.create_agent("worker", agent_id="u")
            await agents.transition("u", "ready")
            group.server.pause()
            try:
                with pytest.raises(BackendError) as info:
                    await agents.transition("u", "running")
            finally:
                group.server.resume()
            error = info.value
            assert error.maybe_applied
            assert error.op_id is not None
            assert f"op_id={error.op_id}" in str(error)
            # The frozen server runs the queued script when it resumes; the retry must not
            # apply it a second time (nor fail as 'running -> running').
            again = await agents.transition("u", "running", op_id=error.op_id)
            assert again.to_state is LifecycleState.RUNNING
            assert again.version == 3
            twice = await agents.transition("u", "running", op_id=error.op_id)
            assert twice == again, "the same op id returns the first result"
            trail = await zen.events.audit_trail("u", limit=100)
            assert [e.data["to"] for e in trail if e.type == "state_changed"] == [
                "ready",
                "running",
            ]
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_a_retry_refused_by_the_breaker_reports_the_sent_attempt_not_a_refusal(
    tmp_path: Path,
) -> None:
    """Found by the outage checker: the first attempt reached a frozen server and timed out,
    the runner's retry met the breaker it had just opened and raised DegradedError ("refused
    without reaching the server"), and degraded mode refused the write offline while the
    server applied it on resume. The caller must learn that it may have been applied."""
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    settings = degraded_settings(group, redis_retry_attempts=2, redis_breaker_reset_timeout=5.0)
    try:
        async with open_zen(settings) as zen:
            agents = zen.agents
            await agents.create_agent("worker", agent_id="s")
            await agents.transition("s", "ready")
            group.server.pause()
            try:
                with pytest.raises(BackendError) as info:
                    await agents.transition("s", "running", op_id="sent-1")
            finally:
                group.server.resume()
            assert info.value.op_id == "sent-1"
            assert info.value.maybe_applied, str(info.value)
    finally:
        await anyio.to_thread.run_sync(group.stop)


def test_a_durability_error_names_its_op_id_and_that_it_was_applied() -> None:
    """Found by the outage checker: with_op raised TypeError for DurabilityError."""
    error = DurabilityError(acknowledged=0, required=1, timeout_ms=500, what="this write")
    named = error.with_op("d-1", what="this transition")
    assert isinstance(named, DurabilityError)
    assert (named.op_id, named.maybe_applied, named.required) == ("d-1", True, 1)
    assert "retry with op_id=d-1" in str(named)
