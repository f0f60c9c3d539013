"""Operation ids on every topology: a write given the same op id twice is applied once and
the second call returns the first call's result (docs/operations.md, "Operation ids")."""

from __future__ import annotations

import pytest

from zen_async import ValidationError, Zen
from zen_async.agents.models import LifecycleState


async def test_a_transition_with_a_known_op_id_returns_the_first_result(zen: Zen) -> None:
    agents = zen.agents
    await agents.create_agent("coder", agent_id="op-t")
    first = await agents.transition("op-t", "ready", op_id="t-1")
    again = await agents.transition("op-t", "ready", op_id="t-1")
    assert again == first, "not refused as ready -> ready, not applied twice"
    nxt = await agents.transition("op-t", "running", op_id="t-2")
    assert nxt.version == first.version + 1
    trail = await zen.events.audit_trail("op-t")
    assert [e.data["to"] for e in trail if e.type == "state_changed"] == ["ready", "running"]


async def test_an_update_with_a_known_op_id_changes_nothing_again(zen: Zen) -> None:
    agents = zen.agents
    await agents.create_agent("coder", agent_id="op-u")
    first = await agents.update_agent("op-u", metadata={"n": 1}, op_id="u-1")
    await agents.update_agent("op-u", metadata={"n": 2}, op_id="u-2")
    replayed = await agents.update_agent("op-u", metadata={"n": 1}, op_id="u-1")
    assert first.version == 2
    assert (replayed.version, replayed.metadata) == (3, {"n": 2}), (
        "the second call of u-1 applied nothing: the record stays as u-2 left it"
    )


async def test_a_turn_and_an_event_with_a_known_op_id_are_stored_once(zen: Zen) -> None:
    thread = await zen.conversations.create_thread("chat", {})
    assert await zen.conversations.add_turn(thread, "user", "hi", op_id="c-1") == 1
    assert await zen.conversations.add_turn(thread, "user", "hi", op_id="c-1") == 1
    context = await zen.conversations.get_thread(thread)
    assert context is not None
    assert [t.content for t in context.turns] == ["hi"]
    first = await zen.events.publish("orders", "placed", {"n": 1}, op_id="e-1")
    assert await zen.events.publish("orders", "placed", {"n": 1}, op_id="e-1") == first
    assert [e.data async for e in zen.events.replay("orders")] == [{"n": 1}]


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "ü", "a/b"])
async def test_a_malformed_op_id_is_refused_before_anything_is_written(zen: Zen, bad: str) -> None:
    await zen.agents.create_agent("coder", agent_id="op-bad")
    with pytest.raises(ValidationError, match="op_id"):
        await zen.agents.transition("op-bad", "ready", op_id=bad)
    with pytest.raises(ValidationError, match="op_id"):
        await zen.agents.update_agent("op-bad", metadata={"x": 1}, op_id=bad)
    record = await zen.agents.get_agent("op-bad")
    assert record is not None
    assert (record.lifecycle_state, record.version) == (LifecycleState.INITIALIZING, 1)
