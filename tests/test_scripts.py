"""The Lua script registry: headers, idempotency declarations, shared includes."""

from __future__ import annotations

from pathlib import Path

import pytest

from zen_async import ConfigError
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
