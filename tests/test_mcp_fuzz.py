"""Fuzz every MCP tool from its own ``inputSchema``, as the official client lists it.

For each tool in ``tools/list``, Hypothesis draws calls of ten kinds and sends each one to
``build_server()`` on Redis 7.0 standalone through the official ``mcp.Client`` (in-process),
with the tenant seeded through the same client (an agent ``a1`` in ``ready``, a task, a
memory, a thread, a cache entry: draws may pick their ids):

- ``valid``: arguments drawn by hypothesis-jsonschema from the schema (which admits extra
  properties: the schemas do not say ``additionalProperties: false``);
- ``plausible``: required and seeded properties only, the seeded ones taking the tenant's ids
  and sane numbers, so that calls get past the first check;
- ``extra``: valid arguments plus properties the schema does not name (``namespace`` and
  ``tenant`` among them);
- ``missing``: valid arguments less one required property;
- ``wrong_type``: one property given a JSON type its schema does not allow (or, for an enum
  or a date-time, a string outside it);
- ``huge``: one property given a string of 2 MiB or more (in an object or a list when the
  property takes one), of one-, two-, four-byte or NUL characters;
- ``deep``: one property given lists or objects nested 100 to 254 levels, the deepest the
  official client sends (it refuses to serialise more: "Maximum serialization depth
  exceeded");
- ``deeper``: the same, 500 to 1200 levels, handed to the server's call path as they are. No
  transport delivers them (the SDK's JSON parser refuses about 200 levels: "recursion limit
  exceeded"), but a host that mounts the tools may;
- ``nonfinite``: one property, or a number inside the arguments, given ``NaN``,
  ``Infinity``, ``-Infinity``, ``1e999`` or ``-1e999``. JSON cannot carry these and the
  official client never sends them (it writes a non-finite float as ``null``, in-process
  too), so these are fed as raw JSON to the server's own call path, as from a client that
  writes its JSON itself (as tests/test_mcp_server.py's poisoned-record test does);
- ``surrogate``: one string, anywhere in the arguments, holding a lone surrogate (see
  :data:`SURROGATE_TEXTS`).

The property, checked after every call:

1. the answer is a result, or a tool error whose text is one of
   ``Error executing tool <tool>: <Class>: ...`` with ``<Class>`` one of
   :data:`ACCEPTED_ZEN_ERRORS` (a ZenError the tool meant to raise), or
   ``Error executing tool <tool>: N validation error(s) for <tool>Arguments`` (the SDK
   refusing arguments that do not fit the input model). Anything else fails: the SDK's bare
   ``Error executing tool <tool>`` (a non-zen exception: the traceback is on ``__cause__``
   and in the server's log), a ``BackendError`` or another ZenError, an exception in the
   client. A result must also reach a client over JSON (:func:`over_the_wire`: written and
   parsed as a JSON-RPC response, then the client's check against the tool's output
   schema). A call missing a required property must be refused by the SDK's input check;
2. ``health`` answers within :data:`HEALTH_DEADLINE`, with ``redis_available`` true;
3. ``agent_list`` (skipping no record as undecodable) and ``memory_search`` with a valid
   query still answer for the tenant, readable over JSON as in 1.

Bugs found are pinned by xfail(strict) regression tests at the end of the module; the calls
that would hit them are counted but not sent (:data:`KNOWN_BUGS`).

Budget: :data:`EXAMPLES` calls of kind ``valid`` per tool, fewer of the others (see
:data:`PER_KIND`), derandomized and without an example database, so CI sends the same calls
on every run; ``ZEN_FUZZ_EXAMPLES=<n>`` raises it for a longer local run. The count of calls
per tool and kind, results and tool errors by class is written at the end of the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import reprlib
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as conjecture_utils
from hypothesis.strategies import SearchStrategy
from hypothesis_jsonschema import _from_schema, from_schema
from mcp import Client, types
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError

from zen_async import (
    CapacityError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)
from zen_async.mcp_server import TOOL_NAMES, build_server
from zen_async.testing.deployments import Target

# --- budget ----------------------------------------------------------------------------------
EXAMPLES_VARIABLE: Final = "ZEN_FUZZ_EXAMPLES"


def _examples() -> int:
    """``ZEN_FUZZ_EXAMPLES`` (tests/conftest.py leaves this one in place), else 12."""
    raw = os.environ.get(EXAMPLES_VARIABLE)
    return int(raw) if raw else 12


EXAMPLES: Final = _examples()
PER_KIND: Final = {
    "valid": EXAMPLES,
    "plausible": max(3, EXAMPLES // 2),
    "extra": max(2, EXAMPLES // 3),
    "missing": max(2, EXAMPLES // 3),
    "wrong_type": max(3, EXAMPLES // 2),
    "huge": max(1, EXAMPLES // 6),  # 2 MiB and more per call
    "deep": max(2, EXAMPLES // 4),
    "deeper": max(2, EXAMPLES // 4),
    "nonfinite": max(3, EXAMPLES // 2),
    "surrogate": max(3, EXAMPLES // 2),
}
KINDS: Final = tuple(PER_KIND)
FUZZ: Final = settings(
    derandomize=True,  # the same calls on every run: CI is reproducible
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)
HEALTH_DEADLINE: Final = 5.0
"""The issue's "health answers within 1 s", with a margin for two shared cores: health takes
milliseconds, so only a server that froze (a blocked loop, a wedged connection) misses it."""

# --- what an answer may be -------------------------------------------------------------------
Arguments = dict[str, Any]
ACCEPTED_ZEN_ERRORS: Final = tuple(
    cls.__name__
    for cls in (
        ValidationError,
        NotFoundError,
        ConflictError,
        CapacityError,
        InvalidTransitionError,
    )
)
INPUT_REFUSED: Final = "input validation"
"""The outcome class of a call the SDK refused for not fitting the tool's input model."""


def outcome_of(tool: str, text: str) -> str:
    """The class of a tool error's text: a zen error class name or :data:`INPUT_REFUSED`.

    Raises:
        AssertionError: any other text (a crash, a BackendError, an unknown shape).
    """
    prefix = f"Error executing tool {tool}: "
    assert text.startswith(prefix), f"{tool}: not a tool error of {tool}: {text[:500]!r}"
    rest = text.removeprefix(prefix)
    zen = re.match(r"(\w+): ", rest)
    if zen and zen[1] in ACCEPTED_ZEN_ERRORS:
        return zen[1]
    if re.match(rf"\d+ validation errors? for {tool}Arguments\n", rest):
        return INPUT_REFUSED
    raise AssertionError(f"{tool}: an error that is not a zen error nor an input check: {text!r}")


# --- hypothesis-jsonschema on this Hypothesis ------------------------------------------------
class _ManyWithMore:
    """``many()`` with the ``more()``/``reject()`` protocol hypothesis-jsonschema 0.23.1
    drives, over the ``with``/``for`` protocol Hypothesis 6.170.10 replaced it with (0.23.1
    raises ``AttributeError: 'many' object has no attribute 'more'`` on any object schema
    there)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._many = conjecture_utils.many(*args, **kwargs)
        self._elements = iter(self._many.__enter__())

    def more(self) -> bool:
        if next(self._elements, False) is None:
            return True
        self._many.__exit__(None)
        return False

    def reject(self, why: str | None = None) -> None:
        self._many.reject(why)


@pytest.fixture(scope="module", autouse=True)
def jsonschema_objects_on_this_hypothesis() -> Iterator[None]:
    """Give hypothesis-jsonschema (alone: Hypothesis keeps its own ``many``) the protocol it
    expects, while this module runs, when Hypothesis no longer has it."""
    if hasattr(conjecture_utils.many, "more"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_from_schema, "cu", SimpleNamespace(many=_ManyWithMore))
        yield


# --- the calls -------------------------------------------------------------------------------
OF_TYPE: Final[dict[str, Any]] = {
    "string": "zen",
    "integer": 7,
    "number": 0.5,
    "boolean": True,
    "null": None,
    "array": [1, "two"],
    "object": {"k": "v"},
}
NONFINITE: Final = (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999")
MARKER: Final = "zen-fuzz-nonfinite-marker"
HUGE_CHARS: Final = ("x", "é", "🙂", "\x00")
SURROGATE_TEXTS: Final = ("a\ud800b", "\udfff", "ok\ud83d", "\ud800" * 3)
"""Lone surrogates: a Python str holds them, UTF-8 cannot. The SDK's JSON parser refuses
them, so only an in-process client (the official one in-memory, or a host that mounts the
tools) delivers them; values only, as the official client cannot encode them in a key."""
EXTRA_NAMES: Final = ("namespace", "tenant", "redis_namespace", "__proto__", "")
MIB: Final = 1 << 20
VECTOR_DIM: Final = 384


@dataclass(frozen=True)
class Call:
    """One fuzzed call: ``arguments`` for the official client, or ``raw`` JSON arguments
    for the server's call path (non-finite numbers)."""

    kind: str
    arguments: Arguments
    change: str = ""
    raw: bytes | None = None
    direct: bool = False
    """Sent to the server's call path as they are (no transport carries them)."""

    def __repr__(self) -> str:  # Hypothesis prints it: short, even for 2 MiB or 1200 levels
        sent = reprlib.repr(self.raw) if self.raw is not None else reprlib.repr(self.arguments)
        return f"Call({self.kind}: {self.change or 'as drawn'}; {sent})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # not field by field: 1200 levels overflow the printer


def resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a top-level ``$ref`` into ``root``'s ``$defs`` followed."""
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def allowed_types(schema: dict[str, Any], root: dict[str, Any]) -> set[str] | None:
    """The JSON types a property's schema admits; None: any."""
    schema = resolve(schema, root)
    if "anyOf" in schema:
        found: set[str] = set()
        for option in schema["anyOf"]:
            kinds = allowed_types(option, root)
            if kinds is None:
                return None
            found |= kinds
        return found
    if "type" in schema:
        kinds = {schema["type"]} if isinstance(schema["type"], str) else set(schema["type"])
        return kinds | {"integer"} if "number" in kinds else kinds
    if "enum" in schema:
        return {"string"}
    return None


def schema_options(schema: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    schema = resolve(schema, root)
    if "anyOf" in schema:
        return [resolve(option, root) for option in schema["anyOf"]]
    return [schema]


def wrong_values(schema: dict[str, Any], root: dict[str, Any]) -> list[Any]:
    """Values a property's schema refuses: other JSON types, and for an enum or a
    date-time, strings outside it."""
    kinds = allowed_types(schema, root)
    if kinds is None:
        return []
    found = [value for kind, value in OF_TYPE.items() if kind not in kinds]
    for option in schema_options(schema, root):
        if "enum" in option:
            found += ["READY", "ready ", "", "*", "ready\n", "running:x"]
        if option.get("format") == "date-time":
            found += ["yesterday", "2024-13-45T99:99:99Z", "", "99999-01-01T00:00:00Z"]
    return found


def shaped(schema: dict[str, Any], root: dict[str, Any], leaf: Any) -> list[Any]:
    """``leaf`` as the property's value, and inside an object or a list when it takes one."""
    kinds = allowed_types(schema, root)
    found = [leaf]
    if kinds is None or "object" in kinds:
        found.append({"v": leaf})
    if kinds is None or "array" in kinds:
        found.append([leaf])
    return found


def nested(depth: int, as_list: bool) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if as_list else {"d": value}
    return value


Where = tuple[str | int, ...]


def leaves(value: Any, where: Where = ()) -> Iterator[tuple[Where, Any]]:
    """Every scalar inside ``value``, with where it is."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*where, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, (*where, index))
    else:
        yield where, value


def replaced(value: Any, where: Where, new: Any) -> Any:
    """A copy of ``value`` with what is at ``where`` replaced by ``new``."""
    if not where:
        return new
    head, rest = where[0], where[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value.get(head), rest, new)}
    assert isinstance(head, int)
    copy = list(value)
    copy[head] = replaced(value[head], rest, new)
    return copy


def numbers_inside(schema: dict[str, Any], root: dict[str, Any]) -> bool:
    """Whether the property takes a list of numbers (a vector)."""
    return any(
        option.get("type") == "array" and option.get("items", {}).get("type") == "number"
        for option in schema_options(schema, root)
    )


def as_arguments(drawn: object) -> Arguments:
    assert isinstance(drawn, dict), drawn  # every inputSchema is an object schema
    return drawn


@dataclass(frozen=True)
class ToolInput:
    """A tool's ``inputSchema``, and values the tenant offers for some of its properties."""

    schema: dict[str, Any]
    seeds: dict[str, list[Any]]

    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.schema.get("properties", {})
        return found

    @property
    def required(self) -> list[str]:
        found: list[str] = self.schema.get("required", [])
        return found

    def spoilable(self, kind: str) -> list[str]:
        """The properties a call of ``kind`` may spoil (``missing``: leave out)."""
        if kind == "missing":
            return self.required
        if kind == "wrong_type":
            return [n for n, p in sorted(self.properties.items()) if wrong_values(p, self.schema)]
        return sorted(self.properties) or ["unnamed"]  # health: an extra property

    def arguments(self, *, plausible: bool) -> SearchStrategy[Arguments]:
        """Arguments drawn from the schema, where a seeded property may take one of the
        seeds; ``plausible``: only required and seeded properties, seeded ones taking seeds."""
        properties = {
            name: prop
            if name not in self.seeds
            else {"enum": self.seeds[name]}
            if plausible
            else {"anyOf": [prop, {"enum": self.seeds[name]}]}
            for name, prop in self.properties.items()
            if not plausible or name in self.seeds or name in self.required
        }
        schema = {**self.schema, "properties": properties}
        if plausible:
            schema["additionalProperties"] = False
        return from_schema(schema).map(as_arguments)


@st.composite
def calls(draw: st.DrawFn, kind: str, tool: ToolInput) -> Call:
    """A call of ``kind`` (see the module's docstring) to a tool taking ``tool``."""
    arguments = draw(tool.arguments(plausible=kind == "plausible"))
    if kind in {"valid", "plausible"}:
        return Call(kind, arguments)
    if kind == "extra":
        names = st.one_of(st.sampled_from(EXTRA_NAMES), st.text(max_size=20))
        more: Arguments = draw(
            st.dictionaries(
                names.filter(lambda name: name not in tool.properties),
                st.sampled_from(["other-tenant", None, 1, {"x": []}]),
                min_size=1,
                max_size=4,
            )
        )
        return Call(kind, {**arguments, **more}, f"extra {sorted(more)!r}")
    name = draw(st.sampled_from(tool.spoilable(kind)))
    if kind == "missing":
        del arguments[name]
        return Call(kind, arguments, f"without {name}")
    prop = tool.properties.get(name, {})
    if kind == "wrong_type":
        value = draw(st.sampled_from(wrong_values(prop, tool.schema)))
        return Call(kind, {**arguments, name: value}, f"{name}={value!r}")
    if kind == "huge":
        char = draw(st.sampled_from(HUGE_CHARS))
        text = char * (draw(st.integers(2 * MIB, 2 * MIB + 4096)) // len(char.encode()))
        value = draw(st.sampled_from(shaped(prop, tool.schema, text)))
        change = f"{name}: {len(text)} x {char!r} as {type(value).__name__}"
        return Call(kind, {**arguments, name: value}, change)
    if kind in {"deep", "deeper"}:
        depth = draw(st.integers(100, 254) if kind == "deep" else st.integers(500, 1200))
        as_list = draw(st.booleans())
        change = f"{name}: {'lists' if as_list else 'objects'} {depth} deep"
        value = nested(depth, as_list)
        return Call(kind, {**arguments, name: value}, change, direct=kind == "deeper")
    if kind == "nonfinite":
        token = draw(st.sampled_from(NONFINITE))
        shapes = [{**arguments, name: v} for v in shaped(prop, tool.schema, MARKER)]
        if numbers_inside(prop, tool.schema):  # a vector: the right length, one bad number
            at = draw(st.integers(0, VECTOR_DIM - 1))
            vector = [0.5] * at + [MARKER] + [0.5] * (VECTOR_DIM - 1 - at)
            shapes.append({**arguments, name: vector})
        shapes += [  # or any number already in the arguments (a capability, a gauge...)
            replaced(arguments, where, MARKER)
            for where, leaf in leaves(arguments)
            if where and isinstance(leaf, int | float) and not isinstance(leaf, bool)
        ]
        sent = draw(st.sampled_from(shapes))
        raw = json.dumps(sent).encode().replace(json.dumps(MARKER).encode(), token)
        where = next(w for w, leaf in leaves(sent) if leaf == MARKER)
        return Call(kind, sent, f"{where}: {token.decode()}", raw=raw)
    if kind == "surrogate":
        text = draw(st.sampled_from(SURROGATE_TEXTS))
        places = [(name,), *(w for w, leaf in leaves(arguments) if w and isinstance(leaf, str))]
        where = draw(st.sampled_from(places))
        return Call(kind, replaced(arguments, where, text), f"{where}: {text!r}")
    raise AssertionError(f"unknown kind {kind!r}")


def sent_as_json(tool: str, arguments: bytes) -> dict[str, Any]:
    """Arguments as the server parses them off the wire from a client that writes its own
    JSON (``NaN``, ``Infinity``, ``1e999`` arrive as floats)."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"%s","arguments":%s}}'
    message = types.jsonrpc_message_adapter.validate_json(
        body % (tool.encode(), arguments), by_name=False
    )
    assert isinstance(message, types.JSONRPCRequest)
    assert message.params is not None
    sent: dict[str, Any] = message.params["arguments"]
    return sent


# --- known bugs ------------------------------------------------------------------------------
def has_surrogate(value: object) -> bool:
    """Whether a lone surrogate is anywhere in ``value``, keys included (iterative: calls
    nest past Python's recursion limit)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and any("\ud800" <= char <= "\udfff" for char in item):
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def before_1970(value: object) -> bool:
    try:
        return isinstance(value, str) and datetime.fromisoformat(value) < EPOCH
    except (ValueError, TypeError):  # not a date (or a naive one): not this bug
        return False


def depth(value: object) -> int:
    """How deep lists and objects nest in ``value`` (0 for a scalar); iterative: the
    deepest calls nest past Python's recursion limit."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
        else:
            deepest = max(deepest, level)
    return deepest


@dataclass(frozen=True)
class KnownBug:
    """A wrong answer this module found, pinned by an xfail regression test of its own."""

    tool: str
    test: str
    matches: Callable[[Call], bool]


STORES_JSON: Final = {
    "agent_create": ("metadata",),
    "task_create": ("request",),
    "task_update": ("result",),
    "memory_store": ("content", "metadata"),
}
"""Tools that store a JSON document a client gives, which another tool returns wrapped in
more levels than the request had (agent_list, task_list, memory_search); cache_set and
conversation_create come back no deeper than they went in."""
TOO_DEEP_TO_READ: Final = 190
"""From about this depth, a stored document comes back in an answer a JSON client cannot
parse (the SDK's parser stops near 200 levels, the answer wraps the document in 5 to 8)."""


def too_deep_in(names: tuple[str, ...]) -> Callable[[Call], bool]:
    """Whether a call gives one of ``names`` a document too deep to read back, yet not
    too deep to store (orjson refuses more than 254 levels)."""
    return lambda call: any(
        TOO_DEEP_TO_READ <= depth(call.arguments.get(name)) <= 254 for name in names
    )


KNOWN_BUGS: Final[tuple[KnownBug, ...]] = ()
"""A call matching one of these is not sent, only counted ("known bug, not sent"): its
regression test sends it, and a stored one may break the tenant for every later check.
Remove an entry when its test passes."""


# --- the tally -------------------------------------------------------------------------------
@dataclass
class Tally:
    """Calls per tool and kind, and outcomes per tool, for the summary."""

    calls: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    checks: int = 0
    slowest_health: float = 0.0

    def lines(self) -> list[str]:
        total = sum(sum(c.values()) for c in self.calls.values())
        by_outcome: Counter[str] = Counter()
        for counts in self.outcomes.values():
            by_outcome.update(counts)
        lines = [
            f"MCP fuzz: {total} generated calls over {len(self.calls)} tools "
            f"({EXAMPLES_VARIABLE}={EXAMPLES}); {self.checks} follow-up checks; "
            f"slowest health {self.slowest_health * 1000:.0f} ms",
            "  all tools: " + _counts(by_outcome),
        ]
        for tool in sorted(self.calls):
            lines.append(
                f"  {tool}: {sum(self.calls[tool].values())} calls "
                f"({_counts(self.calls[tool])}); {_counts(self.outcomes[tool])}"
            )
        return lines


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(counter.items()))


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    found = Tally()
    yield found
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or not found.calls:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        for line in found.lines():
            reporter.write_line(line)


# --- the property ----------------------------------------------------------------------------
def payload(result: types.CallToolResult) -> Any:
    assert not result.is_error, result.content
    data = result.structured_content
    return data["result"] if isinstance(data, dict) and set(data) == {"result"} else data


def text_of(result: types.CallToolResult) -> str:
    first = result.content[0]
    assert isinstance(first, types.TextContent), first
    return first.text


async def over_the_wire(
    client: Client, tool: str, result: types.CallToolResult
) -> types.CallToolResult:
    """``result`` as a client across a JSON transport (stdio, HTTP) reads it: the server's
    JSON-RPC response, written as JSON (a NaN becomes null) and parsed by the SDK's parser,
    then checked against the tool's output schema by the official client.

    Raises:
        AssertionError: such a client could not read the answer, or it breaks the tool's
            own output schema.
    """
    try:
        response = types.JSONRPCResponse(
            jsonrpc="2.0", id=1, result=result.model_dump(by_alias=True, mode="json")
        )
        message = types.jsonrpc_message_adapter.validate_json(
            response.model_dump_json(by_alias=True, exclude_none=True), by_name=False
        )
        assert isinstance(message, types.JSONRPCResponse), message
        wire = types.CallToolResult.model_validate(message.result)
        if not wire.is_error:
            await client.session.validate_tool_result(tool, wire)
    except (ValueError, RuntimeError) as exc:  # pydantic's ValidationError is a ValueError
        raise AssertionError(f"{tool}: a client over JSON cannot take this answer: {exc}") from exc
    return wire


async def seed(client: Client, ports: tuple[int, int]) -> dict[str, list[Any]]:
    """One of everything in the tenant, through the client; the values draws may pick
    (besides the schema's own), so that calls reach past the first check."""
    payload(await client.call_tool("agent_create", {"agent_type": "coder", "agent_id": "a1"}))
    payload(await client.call_tool("agent_transition", {"agent_id": "a1", "to_state": "ready"}))
    task = payload(
        await client.call_tool("task_create", {"agent_type": "coder", "request": {"do": "x"}})
    )
    memory = payload(
        await client.call_tool(
            "memory_store", {"agent_id": "a1", "content": "the sky is blue", "tags": ["sky"]}
        )
    )
    thread = payload(await client.call_tool("conversation_create", {"tool_name": "chat"}))
    payload(await client.call_tool("cache_set", {"key": "seed", "value": {"v": 1}, "ttl": 600}))
    return {
        "agent_id": ["a1", "a2"],
        "agent_type": ["coder"],
        "task_id": [task["task_id"]],
        "memory_id": [memory["memory_id"]],
        "thread_id": [thread],
        "parent_thread_id": [thread],
        "key": ["seed"],
        "tool_name": ["chat"],
        "role": ["user", "assistant"],
        "content": ["hello"],
        "query": ["sky"],
        "name": ["zen_state_operation_latency_ms"],
        "limit": [1, 10, 100],
        "priority": [0, 5],
        "expected_version": [1, 2],
        "timeout_seconds": [30.0],
        "ttl": [60.0],
        "similarity_threshold": [-1.0, 0.5],
        "vector": [[1.0] + [0.0] * (VECTOR_DIM - 1)],
        "since": [(datetime.now(UTC) - timedelta(minutes=5)).isoformat()],
        "until": [(datetime.now(UTC) + timedelta(minutes=5)).isoformat()],
        "port": [ports[0]],
        "port_range_start": [ports[0]],
        "port_range_end": [ports[0] + 8, ports[1]],
    }


@dataclass
class Fuzzer:
    """Sends calls to one tool and checks the server after each."""

    client: Client
    server: MCPServer[Any]
    tool: str
    tally: Tally

    async def send(self, call: Call) -> str:
        """The call's outcome class ("result", a zen error class, :data:`INPUT_REFUSED`)."""
        if call.raw is not None or call.direct:
            sent = call.arguments if call.raw is None else sent_as_json(self.tool, call.raw)
            try:
                result = await self.server.call_tool(self.tool, sent)
            except UnexpectedToolError as exc:
                raise AssertionError(f"{self.tool} crashed on {call!r}") from exc.__cause__
            except ToolError as exc:
                return outcome_of(self.tool, str(exc))
            assert isinstance(result, types.CallToolResult), result
            wire = await over_the_wire(self.client, self.tool, result)
            return outcome_of(self.tool, text_of(wire)) if wire.is_error else "result"
        answer = await self.client.call_tool(self.tool, call.arguments)
        if not answer.is_error:
            await over_the_wire(self.client, self.tool, answer)
            return "result"
        return outcome_of(self.tool, text_of(answer))

    async def check(self, call: Call) -> None:
        """Send ``call``; then the server and the tenant must still answer."""
        known = [bug for bug in KNOWN_BUGS if bug.tool == self.tool and bug.matches(call)]
        if known:  # not sent: its regression test has it, and it may break the tenant
            self.tally.calls[self.tool][call.kind] += 1
            self.tally.outcomes[self.tool]["known bug, not sent"] += 1
            return
        outcome = await self.send(call)
        self.tally.calls[self.tool][call.kind] += 1
        self.tally.outcomes[self.tool][outcome] += 1
        if call.kind == "missing":
            assert outcome == INPUT_REFUSED, f"{self.tool} took {call!r}: {outcome}"

        started = anyio.current_time()
        with anyio.fail_after(HEALTH_DEADLINE):
            health = payload(await self.client.call_tool("health", {}))
        self.tally.slowest_health = max(self.tally.slowest_health, anyio.current_time() - started)
        assert health["redis_available"] is True, health
        listed = await over_the_wire(
            self.client, "agent_list", await self.client.call_tool("agent_list", {})
        )
        assert payload(listed)["skipped"] == 0, f"after {call!r}: {payload(listed)}"
        query = {"agent_id": "a1", "query": "why is the sky blue", "similarity_threshold": -1.0}
        found = await self.client.call_tool("memory_search", query)
        payload(await over_the_wire(self.client, "memory_search", found))
        self.tally.checks += 3


Run = Callable[[Call], Coroutine[Any, Any, None]]


def explore(run: Run, strategy: SearchStrategy[Call], examples: int) -> None:
    """Run Hypothesis over ``strategy`` in this worker thread, each call on the loop."""

    @settings(FUZZ, max_examples=examples)
    @given(call=strategy)
    def property_holds(call: Call) -> None:
        anyio.from_thread.run(run, call)

    property_holds()


@pytest.mark.timeout(max(120, EXAMPLES * 10))
@pytest.mark.parametrize("tool", TOOL_NAMES)
async def test_tool_survives_fuzzing(standalone: Target, tally: Tally, tool: str) -> None:
    """Invariant: whatever arguments a client sends a tool, the answer is a result or a
    zen/input error, and the server and the tenant keep answering."""
    configured = standalone.settings()
    server = build_server(configured)
    async with Client(server) as client:
        ports = (configured.redis_port_range_start, configured.redis_port_range_end)
        seeds = await seed(client, ports)
        listed = {t.name: t for t in (await client.list_tools()).tools}
        schema = listed[tool].input_schema
        fuzzer = Fuzzer(client, server, tool, tally)
        tool_input = ToolInput(schema, seeds)
        for kind in KINDS:
            if not tool_input.spoilable(kind):
                continue  # no required property to leave out, or none with a refused type
            strategy = calls(kind, tool_input)
            await anyio.to_thread.run_sync(explore, fuzzer.check, strategy, PER_KIND[kind])


# --- regressions: what the fuzzer found --------------------------------------------------------
@pytest.mark.parametrize(
    "arguments",
    [
        {"agent_id": "0", "since": "1969-01-01T00:00:00Z"},  # as the fuzzer found it
        {"agent_id": "a1", "until": "1969-12-31T23:59:59Z"},
        {"stream": "orders", "since": "0001-01-01T00:00:00Z"},
    ],
)
async def test_events_replay_before_1970(standalone: Target, arguments: Arguments) -> None:
    """Found by the fuzzer (a negative stream id reached XRANGE: a raw BackendError).
    Invariant: a date the schema accepts gets events or a ValidationError, never a raw
    server error."""
    async with Client(build_server(standalone.settings())) as client:
        payload(await client.call_tool("agent_create", {"agent_type": "coder", "agent_id": "a1"}))
        answer = await client.call_tool("events_replay", arguments)
    if answer.is_error:  # checked out of the client's task group: a bare AssertionError
        outcome_of("events_replay", text_of(answer))


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        (
            "agent_create",
            {"agent_type": "coder", "capabilities": {"supported_operations": ["a\ud800b"]}},
        ),
        ("agent_transition", {"agent_id": "a1", "to_state": "ready", "reason": "a\ud800b"}),
        (
            "metrics_query",
            {"name": "zen_x", "since": "2024-01-01T00:00:00Z", "tags": {"a": "a\ud800b"}},
        ),
    ],
    ids=["agent_create-capabilities", "agent_transition-reason", "metrics_query-tags"],
)
async def test_lone_surrogates_get_a_validation_error(
    standalone: Target, tool: str, arguments: Arguments
) -> None:
    """Invariant: text UTF-8 cannot encode is a ValidationError naming the field, as it is
    for every other string argument (the official client in-process delivers it)."""
    async with Client(build_server(standalone.settings())) as client:
        payload(await client.call_tool("agent_create", {"agent_type": "coder", "agent_id": "a1"}))
        answer = await client.call_tool(tool, arguments)
    assert answer.is_error, answer.structured_content
    assert outcome_of(tool, text_of(answer)) == "ValidationError"


DEEPEST_SENT: Final = 197
"""The deepest argument a client over JSON can send: the SDK's parser refuses a tools/call
request nesting one more level."""


@pytest.mark.parametrize(
    ("write", "arguments", "read", "read_arguments"),
    [
        ("agent_create", {"agent_type": "coder", "metadata": "DEEP"}, "agent_list", {}),
        (
            "memory_store",
            {"agent_id": "a1", "content": "deep", "metadata": "DEEP"},
            "memory_search",
            {"agent_id": "a1", "query": "deep"},
        ),
        ("task_create", {"agent_type": "coder", "request": "DEEP"}, "task_list", {}),
    ],
    ids=["agent_list", "memory_search", "task_list"],
)
async def test_documents_too_deep_to_read_back_are_refused(
    standalone: Target,
    write: str,
    arguments: Arguments,
    read: str,
    read_arguments: Arguments,
) -> None:
    """Found by the fuzzer: metadata 197 levels deep was stored, and every agent_list after
    it was unreadable over stdio (the client's parser stops near 200 levels). Invariant: what
    a tool stores, the tools that read it can return to a client over JSON; a document nested
    too deep for that (more than codec.MAX_JSON_DEPTH) is a ValidationError when written."""
    document = nested(DEEPEST_SENT, as_list=False)
    async with Client(build_server(standalone.settings())) as client:
        written = await client.call_tool(
            write, {k: document if v == "DEEP" else v for k, v in arguments.items()}
        )
        answer = await client.call_tool(read, read_arguments)
        wire_error: AssertionError | None = None
        try:
            await over_the_wire(client, read, answer)
        except AssertionError as exc:
            wire_error = exc
    if written.is_error:
        assert outcome_of(write, text_of(written)) == "ValidationError"
    else:
        assert wire_error is None, str(wire_error)[:500]
