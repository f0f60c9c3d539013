"""The Lua script registry: headers, idempotency declarations, shared includes; and the bulk
write script of Keyspace.set_many on every topology."""

from __future__ import annotations

from pathlib import Path

import pytest

from zen_async import ConfigError, Zen
from zen_async.store.scripts import ScriptRegistry


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_includes_are_expanded_where_they_stand(tmp_path: Path) -> None:
    write(tmp_path, "lib/double.lua", "local function double(x) return x * 2 end\n")
    write(
        tmp_path,
        "op.lua",
        "-- op\n-- KEYS none\n-- ARGV[1] x\n-- idempotent: true\n"
        "--@include double\nreturn double(tonumber(ARGV[1]))\n",
    )
    registry = ScriptRegistry.load(tmp_path)
    script = registry["op"]
    assert script.idempotent
    assert "local function double(x)" in script.source
    assert "--@include" not in script.source
    assert list(registry) == ["op"]  # libraries are not scripts


def test_unknown_include_and_missing_header_are_config_errors(tmp_path: Path) -> None:
    write(tmp_path, "op.lua", "-- op\n-- KEYS ARGV\n--@include nothing\nreturn 1\n")
    with pytest.raises(ConfigError, match="nothing"):
        ScriptRegistry.load(tmp_path)
    (tmp_path / "op.lua").unlink()
    write(tmp_path, "bare.lua", "return 1\n")
    with pytest.raises(ConfigError, match="KEYS and ARGV"):
        ScriptRegistry.load(tmp_path)


def test_every_shipped_script_loads_with_its_header() -> None:
    registry = ScriptRegistry.load()
    assert "agent_transition" in registry
    assert "emit_agent_event" in registry["agent_transition"].source
    assert all(len(s.sha) == 40 for s in registry.values())


def test_bulk_agent_scripts_share_the_transition_and_event_code() -> None:
    registry = ScriptRegistry.load()
    for name in ("agent_transition", "agent_transition_many"):
        source = registry[name].source
        assert "local function transition_agent(" in source
        assert "local function publish_hints(" in source
    assert registry["kv_set_many"].idempotent
    assert registry["agent_get"].idempotent
    assert registry["agent_heartbeat"].idempotent
    assert not registry["agent_create"].idempotent


async def test_set_many_writes_every_value_and_ttl_on_every_topology(zen: Zen) -> None:
    ks = zen.redis.keyspace("cache")
    tagged = {ks.key("{bulk}", f"t{i}"): f"tagged-{i}".encode() for i in range(1100)}  # by Lua
    spread = {ks.key(f"s{i}"): i for i in range(300)}  # spread over slots on Cluster
    await ks.set_many({**tagged, **spread}, ttl_ms=600_000)
    assert await ks.mget(list(tagged)) == list(tagged.values())
    assert await ks.mget(list(spread)) == [str(v).encode() for v in spread.values()]
    for key in (*list(tagged)[::250], *list(spread)[::100]):
        assert 0 < await ks.execute("PTTL", key) <= 600_000
    plain = {ks.key("{plain}", f"p{i}"): b"v" for i in range(20)}
    await ks.set_many(plain)  # no TTL: MSET
    assert await ks.execute("PTTL", next(iter(plain))) == -1
    assert await ks.mget(list(plain)) == [b"v"] * 20
    await ks.set_many({})


def test_the_one_step_claim_leases_with_the_allocators_own_steps() -> None:
    """task_claim_lease takes its port with the port scripts' shared code (the lease, the
    reclaim of expired leases, the capacity message) and appends its events with the agent
    scripts' (one format for every event); it and task_lease_start may be resent."""
    registry = ScriptRegistry.load()
    source = registry["task_claim_lease"].source
    for function in ("drop", "ensure_free", "reclaim_expired", "lowest_free", "lease_port"):
        assert f"local function {function}(" in source
    assert "local function exhausted(" in source
    assert "local function emit_agent_event(" in source
    assert registry["task_claim_lease"].idempotent
    assert registry["task_lease_start"].idempotent
