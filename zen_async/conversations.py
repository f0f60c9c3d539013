"""Conversation threads: Zen MCP Server's thread model, kept in the ``conversations`` keyspace.

Key layout (``ks.key(...)``; ``<id>`` is the thread's lowercase UUID)::

    thread:{<id>}          hash: thread_id, parent_thread_id, tool_name, initial_context,
                           created_at, created_ms, last_updated_at
    thread:{<id>}:turns    list: one element per turn, oldest first
    threads                sorted set: thread ids scored by last update (ms, server clock)

Both keys of a thread share the hash tag ``{<id>}``, so each Lua step touches one cluster slot;
both carry the thread's TTL, refreshed by every turn. The index is a separate key, updated by a
second command after the thread's own step (``ZADD GT``, so a late update never moves a thread
back). It is pruned lazily: :meth:`ConversationStore.list_threads` drops ids whose thread has
expired, and :meth:`ConversationStore.create_thread` checks the two oldest entries.

A turn's list element is its 32-byte ISO 8601 UTC timestamp, taken from the server clock inside
the script, followed by the codec-encoded turn.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Final, Literal

import structlog
from pydantic import BaseModel

from zen_async.codec import Codec
from zen_async.degraded import OFFLINE, JournalEntry
from zen_async.errors import CapacityError, NotFoundError, ValidationError, ZenError
from zen_async.ops import new_op_id
from zen_async.store.keyspace import Arg, Keyspace
from zen_async.store.manager import RedisManager

__all__ = [
    "MAX_CONTENT_CHARS",
    "ConversationStore",
    "ConversationTurn",
    "ThreadContext",
    "ThreadSummary",
]

MAX_CONTENT_CHARS: Final = 1_000_000
"""The longest turn content accepted, in characters."""

_MAX_TOOL_NAME: Final = 256
_MAX_ATTACHMENTS: Final = 1000
_MAX_ATTACHMENT_CHARS: Final = 4096
_MAX_CONTEXT_BYTES: Final = 1_048_576
_MAX_PAGE: Final = 1000
_STAMP_BYTES: Final = 32  # len("2024-01-01T00:00:00.000000+00:00")
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_PRUNE_OLDEST: Final = 2

Role = Literal["user", "assistant"]

log = structlog.get_logger(__name__)


class ConversationTurn(BaseModel):
    """One turn of a conversation (Zen MCP Server's ``ConversationTurn``)."""

    role: Role
    content: str
    timestamp: str
    files: list[str] | None = None
    images: list[str] | None = None
    tool_name: str | None = None
    model_provider: str | None = None
    model_name: str | None = None
    model_metadata: dict[str, Any] | None = None


class ThreadContext(BaseModel):
    """A conversation thread with all its turns (Zen MCP Server's ``ThreadContext``)."""

    thread_id: str
    parent_thread_id: str | None = None
    created_at: str
    last_updated_at: str
    tool_name: str
    turns: list[ConversationTurn]
    initial_context: dict[str, Any]


class ThreadSummary(BaseModel):
    """A thread as listed by :meth:`ConversationStore.list_threads`, without its turns."""

    thread_id: str
    parent_thread_id: str | None
    tool_name: str
    created_at: str
    last_updated_at: str
    turn_count: int


class ConversationStore:
    """Conversation threads with a bounded number of turns and a sliding TTL.

    Args:
        redis: the core (``zen.redis``).
        tenant: the tenant to bind to; the configured namespace when None.
        ttl_seconds: how long a thread lives after its last write.
        max_turns: the most turns one thread may hold.

    Raises:
        ValidationError: ``ttl_seconds`` or ``max_turns`` is not a positive integer.
    """

    def __init__(
        self,
        redis: RedisManager,
        *,
        tenant: str | None = None,
        ttl_seconds: int = 3 * 3600,
        max_turns: int = 50,
    ) -> None:
        for name, value in (("ttl_seconds", ttl_seconds), ("max_turns", max_turns)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"{name}={value!r} is invalid: expected an integer >= 1")
        self._redis = redis
        self._ks: Keyspace = redis.keyspace("conversations", tenant=tenant)
        self._codec: Codec = redis.codec
        self._ttl_ms = ttl_seconds * 1000
        self._max_turns = max_turns
        self._index = self._ks.key("threads")

    @property
    def max_turns(self) -> int:
        """The most turns one thread may hold."""
        return self._max_turns

    # --- writes -------------------------------------------------------------------------
    async def create_thread(
        self,
        tool_name: str,
        initial_context: dict[str, Any],
        *,
        parent_thread_id: str | None = None,
    ) -> str:
        """Create a thread and return its id (a new UUID).

        Args:
            tool_name: the tool that started the conversation.
            initial_context: the tool's request, any JSON object.
            parent_thread_id: the thread this one continues, if any.

        Raises:
            ValidationError: a bad tool name, context or parent id; nothing was written.
            NotFoundError: the parent thread does not exist or has expired.
        """
        tool = _check_name("tool_name", tool_name)
        if not isinstance(initial_context, dict):
            raise ValidationError(
                f"initial_context must be a dict (a JSON object), got "
                f"{type(initial_context).__name__}"
            )
        context = self._codec.encode(initial_context)
        if len(context) > _MAX_CONTEXT_BYTES:
            raise ValidationError(
                f"initial_context encodes to {len(context)} bytes; at most "
                f"{_MAX_CONTEXT_BYTES} are accepted"
            )
        parent = ""
        if parent_thread_id is not None:
            parent = _check_thread_id(parent_thread_id, what="parent_thread_id")
            # The parent lives in another slot, so this check cannot share the script: a parent
            # expiring between the two steps leaves a child pointing at a gone thread, which
            # get_thread_chain treats as the start of the chain.
            if not await self._ks.execute("EXISTS", self._meta_key(parent)):
                raise NotFoundError(
                    f"parent conversation thread {parent} does not exist or has expired; "
                    "pass an existing thread id or no parent"
                )
        thread_id = str(uuid.uuid4())
        created_ms, _ = await self._ks.run_script(
            "conversation_create",
            [self._meta_key(thread_id)],
            [thread_id, parent, tool, context, self._ttl_ms],
        )
        await self._index_update(thread_id, int(created_ms))
        await self._prune_oldest(int(created_ms))
        return thread_id

    async def add_turn(
        self,
        thread_id: str,
        role: str,
        content: str,
        *,
        files: list[str] | None = None,
        images: list[str] | None = None,
        tool_name: str | None = None,
        model_provider: str | None = None,
        model_name: str | None = None,
        model_metadata: dict[str, Any] | None = None,
        op_id: str | None = None,
    ) -> int:
        """Append a turn to a thread in one atomic step that also stamps the thread's
        ``last_updated_at`` and refreshes the TTL of all its keys; at most once per ``op_id``
        (default: a new one): a second call with the same op id appends nothing and returns
        the first call's count.

        While Redis is unreachable the turn is journaled and appended on recovery, exactly
        once, in order with the other journaled writes. The turn limit is checked offline
        too, against the thread's last-known count plus the turns journaled for it; a thread
        this process has not seen cannot be checked, and a turn the server then refuses is
        recorded as an event (``journal.resolved``) and counted, never dropped silently.

        Returns:
            The thread's turn count, this turn included; 0 for a journaled turn (the count
            is known once it is applied).

        Raises:
            ValidationError: a bad argument; nothing was written.
            NotFoundError: the thread does not exist or has expired.
            CapacityError: the thread already holds ``max_turns`` turns (or will, with the
                turns journaled for it); nothing was written.
        """
        tid = _check_thread_id(thread_id)
        op_id = new_op_id(op_id)
        if role not in ("user", "assistant"):
            raise ValidationError(f"role={role!r} is invalid: expected 'user' or 'assistant'")
        if not isinstance(content, str):
            raise ValidationError(f"content must be a str, got {type(content).__name__}")
        if len(content) > MAX_CONTENT_CHARS:
            raise ValidationError(
                f"content has {len(content)} characters; at most {MAX_CONTENT_CHARS} are accepted"
            )
        body = {
            "role": role,
            "content": content,
            "files": _check_attachments("files", files),
            "images": _check_attachments("images", images),
            "tool_name": _check_optional_name("tool_name", tool_name),
            "model_provider": _check_optional_name("model_provider", model_provider),
            "model_name": _check_optional_name("model_name", model_name),
            "model_metadata": _check_metadata(model_metadata),
        }
        degraded = self._redis.degraded
        done = await degraded.attempt(
            lambda: self._append_turn(tid, body, op_id=op_id), op_id=op_id
        )
        if done is not OFFLINE:
            return done
        self._check_turns_offline(tid)
        await degraded.accept(
            "conversations.add_turn", self._ks.tenant, {"thread_id": tid, "body": body}, op_id=op_id
        )
        return 0

    def _check_turns_offline(self, tid: str) -> None:
        """Refuse a turn the thread has no room for, counting the journaled ones."""
        known = self._redis.degraded.recall(self._count_key(tid))
        if not isinstance(known, int):
            return  # never seen here: the server checks it on replay
        waiting = len(
            self._redis.degraded.journal.pending_for(
                _TURN_WRITES, self._ks.tenant, "thread_id", tid
            )
        )
        if known + waiting >= self._max_turns:
            raise CapacityError(
                f"conversation thread {tid} holds {known} turns and {waiting} more wait in the "
                f"outage journal: at most {self._max_turns} are allowed; start a new thread"
            )

    def _count_key(self, tid: str) -> tuple[str, str, str]:
        return ("thread-turns", self._ks.tenant, tid)

    async def _append_turn(self, tid: str, body: dict[str, Any], *, op_id: str) -> int:
        keys = [
            self._meta_key(tid),
            self._turns_key(tid),
            self._ks.key("thread", f"{{{tid}}}", "op", op_id),
        ]
        count, updated_ms = await self._ks.run_script(
            "conversation_add_turn",
            keys,
            [tid, self._max_turns, self._ttl_ms, self._codec.encode(body)],
            idempotent=True,
        )
        self._redis.degraded.remember(self._count_key(tid), int(count))
        await self._index_update(tid, int(updated_ms))
        return int(count)

    async def replay_journaled(self, entry: JournalEntry) -> None:
        """Append a journaled turn, exactly once (its op id is the script's dedupe key)."""
        await self._append_turn(entry.args["thread_id"], entry.args["body"], op_id=entry.op_id)

    async def delete_thread(self, thread_id: str) -> bool:
        """Delete a thread and its turns; True if it existed.

        Raises:
            ValidationError: ``thread_id`` is not a UUID.
        """
        tid = _check_thread_id(thread_id)
        deleted = await self._ks.delete(self._meta_key(tid), self._turns_key(tid))
        await self._ks.execute("ZREM", self._index, tid, idempotent=True)
        return deleted > 0

    # --- reads --------------------------------------------------------------------------
    async def get_thread(self, thread_id: str) -> ThreadContext | None:
        """The thread with all its turns, oldest first; None when absent or expired.

        Raises:
            ValidationError: ``thread_id`` is not a UUID.
        """
        tid = _check_thread_id(thread_id)
        meta, turns = await self._ks.run_script(
            "conversation_get", [self._meta_key(tid), self._turns_key(tid)]
        )
        if not meta:
            return None
        fields = dict(zip(meta[::2], meta[1::2], strict=True))
        return ThreadContext(
            thread_id=fields[b"thread_id"].decode(),
            parent_thread_id=fields[b"parent_thread_id"].decode() or None,
            created_at=fields[b"created_at"].decode(),
            last_updated_at=fields[b"last_updated_at"].decode(),
            tool_name=fields[b"tool_name"].decode(),
            turns=[self._decode_turn(raw) for raw in turns],
            initial_context=self._codec.decode(fields[b"initial_context"]),
        )

    async def get_thread_chain(self, thread_id: str, *, max_depth: int = 20) -> list[ThreadContext]:
        """The thread and its ancestors through ``parent_thread_id``, oldest first (Zen MCP
        Server's ``get_thread_chain``). The walk stops at a missing (expired) thread, at a
        thread already seen (a cycle), or after ``max_depth`` threads; an absent
        ``thread_id`` gives an empty list.

        Raises:
            ValidationError: ``thread_id`` is not a UUID, or ``max_depth`` is below 1.
        """
        current: str | None = _check_thread_id(thread_id)
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
            raise ValidationError(f"max_depth={max_depth!r} is invalid: expected an integer >= 1")
        chain: list[ThreadContext] = []
        seen: set[str] = set()
        while current is not None and current not in seen and len(chain) < max_depth:
            seen.add(current)
            thread = await self.get_thread(current)
            if thread is None:
                break
            chain.append(thread)
            current = thread.parent_thread_id
        chain.reverse()
        return chain

    async def list_threads(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[ThreadSummary], str | None]:
        """One page of threads, most recently updated first, from the index (never SCAN).

        Ids whose thread has expired are dropped from the index as they are met. Pagination is
        by position (last update, id): a thread updated while paging moves to the front and
        is not seen again on later pages.

        Args:
            limit: the most threads in the page (1 to 1000).
            cursor: the ``next_cursor`` of the previous page; None for the first page.

        Returns:
            The page and the cursor of the next one (None when this page is the last).

        Raises:
            ValidationError: a bad limit or a cursor that list_threads did not return.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_PAGE:
            raise ValidationError(f"limit={limit!r} is invalid: expected an integer 1..{_MAX_PAGE}")
        after = _parse_cursor(cursor) if cursor is not None else None
        page: list[ThreadSummary] = []
        position = ""  # the cursor of the last thread in the page
        while True:
            wanted = limit - len(page) + 1  # one more than fits: is there a next page?
            flat = await self._ks.run_script(
                "conversation_index_page",
                [self._index],
                [after[0] if after else "", after[1] if after else "", wanted],
            )
            entries = [
                (member.decode(), score.decode())
                for member, score in zip(flat[::2], flat[1::2], strict=True)
            ]
            summaries = await self._summaries([tid for tid, _ in entries])
            dead = [tid for (tid, _), s in zip(entries, summaries, strict=True) if s is None]
            if dead:
                await self._ks.execute("ZREM", self._index, *dead, idempotent=True)
            for (tid, score), summary in zip(entries, summaries, strict=True):
                if summary is None:
                    continue
                if len(page) == limit:
                    return page, position
                page.append(summary)
                position = f"{score}:{tid}"
            if len(entries) < wanted:
                return page, None
            tid, score = entries[-1]
            after = (score, tid)

    # --- internals ----------------------------------------------------------------------
    def _meta_key(self, thread_id: str) -> str:
        return self._ks.key("thread", f"{{{thread_id}}}")

    def _turns_key(self, thread_id: str) -> str:
        return self._ks.key("thread", f"{{{thread_id}}}", "turns")

    def _decode_turn(self, raw: bytes) -> ConversationTurn:
        body = self._codec.decode(raw[_STAMP_BYTES:])
        return ConversationTurn(timestamp=raw[:_STAMP_BYTES].decode(), **body)

    async def _index_update(self, thread_id: str, updated_ms: int) -> None:
        """Record the thread's last update in the index: a second command, since the index
        shares no hash tag with the thread. The thread's own step has committed by now, so a
        failure here is logged, not raised: raising would invite a retry that writes the turn
        twice. The entry is fixed by the thread's next update."""
        try:
            await self._ks.execute(
                "ZADD", self._index, "GT", updated_ms, thread_id, idempotent=True
            )
        except ZenError as exc:
            log.warning("conversation_index_update_failed", thread_id=thread_id, error=str(exc))

    async def _summaries(self, thread_ids: list[str]) -> list[ThreadSummary | None]:
        if not thread_ids:
            return []
        commands: list[tuple[Arg, ...]] = []
        for tid in thread_ids:
            commands.append(
                (
                    "HMGET",
                    self._meta_key(tid),
                    "parent_thread_id",
                    "tool_name",
                    "created_at",
                    "last_updated_at",
                )
            )
            commands.append(("LLEN", self._turns_key(tid)))
        replies = await self._ks.batch(commands, idempotent=True)
        found: list[ThreadSummary | None] = []
        for tid, fields, count in zip(thread_ids, replies[::2], replies[1::2], strict=True):
            parent, tool, created, updated = fields
            if tool is None:  # expired (or deleted) since it was indexed
                found.append(None)
                continue
            found.append(
                ThreadSummary(
                    thread_id=tid,
                    parent_thread_id=parent.decode() or None,
                    tool_name=tool.decode(),
                    created_at=created.decode(),
                    last_updated_at=updated.decode(),
                    turn_count=int(count),
                )
            )
        return found

    async def _prune_oldest(self, now_ms: int) -> None:
        """Drop the index's oldest ids when their thread is gone, so an index nobody lists
        stays bounded by the live threads plus a few. Housekeeping: failures are logged."""
        try:
            oldest = await self._ks.execute(
                "ZRANGE", self._index, 0, _PRUNE_OLDEST - 1, "WITHSCORES"
            )
            stale = [m.decode() for m, score in oldest if score < now_ms - self._ttl_ms]
            if not stale:
                return
            alive = await self._ks.batch(
                [("EXISTS", self._meta_key(tid)) for tid in stale], idempotent=True
            )
            dead = [tid for tid, n in zip(stale, alive, strict=True) if not n]
            if dead:
                await self._ks.execute("ZREM", self._index, *dead, idempotent=True)
        except ZenError as exc:
            log.warning("conversation_index_prune_failed", error=str(exc))


_TURN_WRITES: Final = frozenset({"conversations.add_turn"})


def _check_thread_id(value: object, *, what: str = "thread_id") -> str:
    if not isinstance(value, str) or _UUID.fullmatch(value) is None:
        raise ValidationError(
            f"{what}={value!r} is not a thread id: expected a UUID such as "
            "'123e4567-e89b-42d3-a456-426614174000'"
        )
    return value.lower()


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_TOOL_NAME:
        raise ValidationError(
            f"{what}={value!r} is invalid: expected a non-empty str of at most "
            f"{_MAX_TOOL_NAME} characters"
        )
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValidationError(
                f"{what}={value!r} is invalid: expected text that UTF-8 can encode (it holds "
                "a lone surrogate)"
            ) from None
    return value


def _check_optional_name(what: str, value: object) -> str | None:
    return None if value is None else _check_name(what, value)


def _check_attachments(what: str, value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > _MAX_ATTACHMENTS:
        raise ValidationError(
            f"{what} must be a list of at most {_MAX_ATTACHMENTS} str, got "
            f"{type(value).__name__}" + (f" of {len(value)}" if isinstance(value, list) else "")
        )
    for item in value:
        if not isinstance(item, str) or not item or len(item) > _MAX_ATTACHMENT_CHARS:
            raise ValidationError(
                f"{what} holds {item!r}: every entry must be a non-empty str (a path or URL) "
                f"of at most {_MAX_ATTACHMENT_CHARS} characters"
            )
    return list(value)


def _check_metadata(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError(
            f"model_metadata must be a dict (a JSON object) or None, got {type(value).__name__}"
        )
    return value


def _parse_cursor(cursor: object) -> tuple[str, str]:
    problem = ValidationError(
        f"cursor={cursor!r} is invalid: pass the next_cursor returned by list_threads, or None"
    )
    if not isinstance(cursor, str):
        raise problem
    score, _, tid = cursor.partition(":")
    if not score.isdigit() or _UUID.fullmatch(tid) is None:
        raise problem
    return score, tid.lower()
