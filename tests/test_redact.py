"""Sensitive-field redaction: the Redactor's matching and copy-on-write rules, the
REDIS_REDACT_FIELDS setting, and, on every topology, that task payloads and event data are
stored redacted (read back through the API and raw from Redis) while internal events keep
their data."""

from __future__ import annotations

import copy
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from zen_async import ConfigError, Settings, ValidationError, Zen, open_zen
from zen_async.codec import Codec
from zen_async.events import Event, NewEvent
from zen_async.redact import DEFAULT_REDACT_FIELDS, MAX_DEPTH, REDACTED, Redactor, parse_fields
from zen_async.testing.deployments import Target

SECRET = "sk-live-7f3a9c"


def secret_payload() -> dict[str, Any]:
    """A caller's payload with secrets at several depths, beside data that must survive."""
    return {
        "prompt": "summarise the report",
        "max_tokens": 512,  # a look-alike name: kept
        "auth": {"API_KEY": SECRET, "user": "ada"},
        "steps": [
            {"tool": "fetch", "headers": {"Authorization": f"Bearer {SECRET}"}},
            {"tool": "login", "creds": ({"password": SECRET, "otp": None},)},
        ],
        "token": SECRET,
    }


def expected_redacted() -> dict[str, Any]:
    return {
        "prompt": "summarise the report",
        "max_tokens": 512,
        "auth": {"API_KEY": REDACTED, "user": "ada"},
        "steps": [
            {"tool": "fetch", "headers": {"Authorization": REDACTED}},
            {"tool": "login", "creds": [{"password": REDACTED, "otp": None}]},
        ],
        "token": REDACTED,
    }


def as_json(value: Any) -> Any:
    """``value`` as it reads back from storage (tuples become lists)."""
    return orjson.loads(orjson.dumps(value))


def typical_payload() -> dict[str, Any]:
    """About 1 KB of JSON, nested like an agent task request, without a sensitive name."""
    return {
        "task": "summarise",
        "model": "gpt-x",
        "temperature": 0.2,
        "max_tokens": 512,
        "messages": [
            {
                "role": "user",
                "content": "Summarise the quarterly report for the board, in five bullets, "
                "with the numbers that moved most since the last meeting.",
            },
            {"role": "assistant", "content": "Sure. Which quarter do you mean?"},
            {"role": "user", "content": "Q3, and compare it with Q2, revenue first."},
        ],
        "context": {
            "files": ["report-q2.pdf", "report-q3.pdf", "board-notes.md"],
            "user": {"id": 42, "name": "Ada", "locale": "en-GB", "timezone": "Europe/London"},
            "flags": {"cache": True, "stream": False, "retries": 3, "priority": "high"},
        },
        "tools": [
            {"name": "search", "args": {"query": "revenue Q3", "limit": 10, "site": "intranet"}},
            {"name": "calc", "args": {"expr": "(a-b)/b", "vars": {"a": 1.2, "b": 1.1}}},
            {"name": "chart", "args": {"kind": "bar", "series": [1.0, 1.1, 1.2, 1.25]}},
        ],
        "trace": {
            "request_id": "5f0c8c1e-3c1b-4a57-9d0e-1f2a3b4c5d6e",
            "parent": None,
            "tags": ["prod", "eu-west-1", "board", "finance"],
        },
    }


# --- the Redactor ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "API_KEY",
        "apiKey",
        "ApiKey",
        "api-key",
        "apikey",
        "password",
        "Password",
        "passwd",
        "secret",
        "token",
        "access_token",
        "accessToken",
        "refresh_token",
        "authorization",
        "Authorization",
        "private_key",
        "client_secret",
        "X-Api-Key",
        "cookie",
    ],
)
def test_default_fields_catch_common_spellings_of_secrets(name: str) -> None:
    assert Redactor().is_sensitive(name), f"{name!r} must be redacted by default"


@pytest.mark.parametrize(
    "name",
    [
        "tokens",
        "max_tokens",
        "token_count",
        "secretary",
        "passwords_changed",
        "author",
        "key",
        "id",
    ],
)
def test_similar_names_are_kept(name: str) -> None:
    assert not Redactor().is_sensitive(name), f"{name!r} is not a secret's name: matching is exact"


def test_nested_secrets_are_redacted_and_the_callers_object_is_untouched() -> None:
    payload = secret_payload()
    before = copy.deepcopy(payload)
    redacted = Redactor().redact(payload)
    assert as_json(redacted) == expected_redacted()
    assert payload == before, "the caller's payload must never be modified"
    assert isinstance(redacted["steps"][1]["creds"], tuple), "a tuple stays a tuple"
    assert redacted["steps"][0]["tool"] is payload["steps"][0]["tool"]


def test_untouched_branches_are_shared_not_copied() -> None:
    payload = {"clean": {"deep": [1, 2, {"x": "y"}]}, "dirty": {"secret": "s"}}
    redacted = Redactor().redact(payload)
    assert redacted is not payload
    assert redacted["clean"] is payload["clean"], "a branch without a match is not copied"
    assert redacted["dirty"] == {"secret": REDACTED}


def test_nothing_matching_returns_the_same_object() -> None:
    payload = typical_payload()
    redactor = Redactor()
    assert redactor.redact(payload) is payload
    assert redactor.redact(payload) is payload, "also once the keys are remembered"
    assert redactor.redact("password") == "password", "a scalar passes as it is"


def test_none_stays_none_and_non_string_keys_are_ignored() -> None:
    payload: dict[Any, Any] = {"password": None, 7: {"token": "t"}, "id_token": REDACTED}
    redacted = Redactor().redact(payload)
    assert redacted == {"password": None, 7: {"token": REDACTED}, "id_token": REDACTED}


def test_a_whole_object_under_a_sensitive_name_is_replaced() -> None:
    payload = {"credentials": {"user": "ada", "keys": [1, 2]}, "n": 1}
    assert Redactor().redact(payload) == {"credentials": REDACTED, "n": 1}


def test_wildcard_patterns() -> None:
    redactor = Redactor(["*_token", "ssn"])
    payload = {"github_token": "g", "GitHubToken": "h", "SSN": "1", "tokens": 2, "note": "n"}
    assert redactor.redact(payload) == {
        "github_token": REDACTED,
        "GitHubToken": REDACTED,
        "SSN": REDACTED,
        "tokens": 2,
        "note": "n",
    }


def test_no_fields_disables_redaction() -> None:
    redactor = Redactor([])
    payload = secret_payload()
    assert not redactor.enabled
    assert redactor.redact(payload) is payload


def test_depth_is_bounded_like_json_encoding() -> None:
    redactor = Redactor()
    ok: Any = {"password": "p"}
    for _ in range(MAX_DEPTH - 2):
        ok = {"a": ok, "b": [1]}
    redacted = redactor.redact(ok)  # each level copied once: linear, not exponential
    for _ in range(MAX_DEPTH - 2):
        redacted = redacted["a"]
    assert redacted == {"password": REDACTED}
    deep: Any = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(ValidationError, match=r"request nests deeper than 255 levels"):
        redactor.redact(deep, what="request")
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValidationError, match="contains itself"):
        redactor.redact(loop)


def test_parse_fields() -> None:
    assert parse_fields(" api_key, password ,,*_token ") == ("api_key", "password", "*_token")
    assert parse_fields("") == ()
    with pytest.raises(ValidationError, match=r"'a b' is invalid: use characters from"):
        parse_fields("a b,c")


def test_setting_reads_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Redactor.from_settings(Settings(_env_file=None)).fields == DEFAULT_REDACT_FIELDS
    monkeypatch.setenv("REDIS_REDACT_FIELDS", "ssn, *_key")
    assert Redactor.from_settings(Settings(_env_file=None)).fields == ("ssn", "*_key")
    monkeypatch.setenv("REDIS_REDACT_FIELDS", "")
    assert not Redactor.from_settings(Settings(_env_file=None)).enabled
    monkeypatch.setenv("REDIS_REDACT_FIELDS", "api key;password")
    with pytest.raises(ConfigError) as info:
        Settings(_env_file=None)
    assert "REDIS_REDACT_FIELDS='api key;password'" in str(info.value)
    assert "comma-separated list of field names" in str(info.value)


def test_no_match_walk_allocates_nothing_that_survives_and_little_on_the_way() -> None:
    payload = typical_payload()
    assert 900 <= len(orjson.dumps(payload)) <= 1400, "the typical payload is about 1 KB"
    redactor = Redactor()
    redactor.redact(payload)  # learn the keys
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(50):
            assert redactor.redact(payload) is payload
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - base == 0, "nothing may be retained per call"
    # Only the walk's iterators are alive at once; a copy of the payload would be ~5 KB.
    assert peak - base < 2048, f"peak {peak - base} bytes while walking a 1 KB payload"


# --- stored data, on every topology ---------------------------------------------------------
@pytest.fixture
async def zen_plain(target: Target) -> AsyncIterator[Zen]:
    """A Zen with redaction switched off (REDIS_REDACT_FIELDS="")."""
    async with open_zen(target.settings(redis_redact_fields="")) as opened:
        yield opened


async def raw_task(zen: Zen, agent_type: str, task_id: str) -> dict[str, bytes]:
    """The task's hash exactly as stored (the layout of zen_async.agents.tasks)."""
    ks = zen.redis.keyspace("tasks")
    raw = await ks.execute("HGETALL", ks.key(f"{{q:{agent_type}}}", "task", task_id))
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


async def raw_entries(zen: Zen, keyspace: str, key: str) -> list[dict[str, Any]]:
    """The ``data`` of each entry of a stream, decoded from the raw stored JSON."""
    entries = await zen.redis.keyspace(keyspace).execute("XRANGE", key, "-", "+")
    return [orjson.loads(fields[b"data"]) for _, fields in entries]


async def test_task_request_and_result_are_stored_redacted(zen: Zen) -> None:
    request = secret_payload()
    before = copy.deepcopy(request)
    created = await zen.tasks.create_task("coder", request, task_id="t-1")
    assert as_json(created.request) == expected_redacted(), "the task returned is what is stored"
    assert request == before, "the caller's request is not modified"
    fetched = await zen.tasks.get_task("t-1")
    assert fetched is not None
    assert fetched.request == expected_redacted()
    raw = await raw_task(zen, "coder", "t-1")
    assert Codec.decode(raw["req"]) == expected_redacted()
    assert not any(SECRET.encode() in v for v in raw.values()), "the secret is stored nowhere"

    claimed = await zen.tasks.claim_next("coder", "agent-1")
    assert claimed is not None
    await zen.tasks.update_status("t-1", "running")
    done = await zen.tasks.complete("t-1", {"ok": True, "session": {"refresh_token": SECRET}})
    assert done.result == {"ok": True, "session": {"refresh_token": REDACTED}}
    raw = await raw_task(zen, "coder", "t-1")
    assert Codec.decode(raw["result"]) == done.result
    assert not any(SECRET.encode() in v for v in raw.values())


async def test_event_data_is_stored_redacted(zen: Zen) -> None:
    data = secret_payload()
    before = copy.deepcopy(data)
    await zen.events.publish("orders", "order_placed", data)
    await zen.events.publish_many("orders", [NewEvent("order_paid", {"card": {"secret": SECRET}})])
    await zen.events.publish_agent_event("agent-1", "logged_in", data)
    assert data == before, "the caller's data is not modified"

    replayed = [e async for e in zen.events.replay("orders")]
    assert [e.data for e in replayed] == [expected_redacted(), {"card": {"secret": REDACTED}}]
    trail: list[Event] = await zen.events.audit_trail("agent-1")
    assert [e.data for e in trail] == [expected_redacted()]

    named = zen.events.stream("orders")
    shard = zen.events.agent_stream("agent-1")
    stored = [
        *await raw_entries(zen, "streams", named.key),
        *await raw_entries(zen, "state", shard.key),
        *await raw_entries(zen, "state", shard.audit_key("agent-1")),
    ]
    assert stored == [
        expected_redacted(),
        {"card": {"secret": REDACTED}},
        expected_redacted(),
        expected_redacted(),
    ]
    assert SECRET not in orjson.dumps(stored).decode()


async def test_port_events_keep_their_fencing_token(zen: Zen) -> None:
    lease = await zen.ports.allocate("agent-1", port_range=(9100, 9110))
    await zen.ports.release(lease)
    trail = await zen.events.audit_trail("agent-1")
    assert [(e.type, e.data["fencing_token"]) for e in trail] == [
        ("port_allocated", lease.token),
        ("port_released", lease.token),
    ], "an internal event's data must not be redacted away"


async def test_empty_setting_stores_payloads_as_given(zen_plain: Zen) -> None:
    zen = zen_plain
    await zen.tasks.create_task("coder", secret_payload(), task_id="t-1")
    raw = await raw_task(zen, "coder", "t-1")
    assert Codec.decode(raw["req"]) == as_json(secret_payload())
    await zen.events.publish("orders", "order_placed", secret_payload())
    stored = await raw_entries(zen, "streams", zen.events.stream("orders").key)
    assert stored == [as_json(secret_payload())]


async def test_custom_field_list_replaces_the_default(standalone: Target) -> None:
    async with open_zen(standalone.settings(redis_redact_fields="ssn,*_pin")) as zen:
        task = await zen.tasks.create_task(
            "coder", {"SSN": "078-05-1120", "card_pin": "1234", "password": "kept"}
        )
        assert task.request == {"SSN": REDACTED, "card_pin": REDACTED, "password": "kept"}
        stored = await zen.tasks.get_task(task.task_id)
        assert stored is not None
        assert stored.request == task.request
