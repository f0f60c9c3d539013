"""The MCP server: an ``MCPServer`` whose lifespan opens ``open_zen()`` once, with zen's tools,
served over stdio (the default) or streamable HTTP on 127.0.0.1 with an optional bearer token.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

from zen_async import __version__
from zen_async.config import Settings
from zen_async.errors import ZenError
from zen_async.mcp_server.tools import register_tools
from zen_async.services import Zen, open_zen

__all__ = ["BearerAuth", "build_server", "serve_http", "serve_stdio"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]

INSTRUCTIONS = (
    "zen_async: state and coordination for AI agents on Redis. Agents have a lifecycle "
    "(initializing, ready, running, paused, terminating, terminated, error); ports are "
    "leased per host; events are replayable; conversations follow Zen MCP Server's threads."
)


class _Holder:
    """Where the lifespan puts the open Zen for the tools to use."""

    zen: Zen | None = None

    def __call__(self) -> Zen:
        if self.zen is None:
            raise ZenError("zen_async is not open: the server's lifespan has not started")
        return self.zen


OnOpen = Callable[[Zen], None]
"""Called once zen is open, before the first request: where a host says which server it got
(the embedded one's address is known only then). Never write to stdout from it over stdio."""


def build_server(settings: Settings, *, on_open: OnOpen | None = None) -> MCPServer[Any]:
    """An MCP server whose lifespan opens zen for ``settings`` (then calls ``on_open(zen)``)
    and closes it on shutdown."""
    holder = _Holder()

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[Zen]:
        async with open_zen(settings) as zen:
            if on_open is not None:
                on_open(zen)
            holder.zen = zen
            try:
                yield zen
            finally:
                holder.zen = None

    server: MCPServer[Any] = MCPServer(
        name="zen-async", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan
    )
    register_tools(server, holder)
    return server


async def serve_stdio(settings: Settings, *, on_open: OnOpen | None = None) -> None:
    """Serve MCP on stdin/stdout until the client closes it."""
    await build_server(settings, on_open=on_open).run_stdio_async()


class BearerAuth:
    """ASGI middleware refusing requests without ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                await send(
                    {
                        "type": "http.response.body",
                        "body": b'{"error":"missing or wrong bearer token"}',
                    }
                )
                return
        await self._app(scope, receive, send)


def http_app(
    settings: Settings, *, token: str | None, host: str, on_open: OnOpen | None = None
) -> ASGIApp:
    """The streamable-HTTP ASGI app (at ``/mcp``), behind a bearer check when ``token``."""
    app: ASGIApp = build_server(settings, on_open=on_open).streamable_http_app(host=host)
    return BearerAuth(app, token) if token else app


async def serve_http(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    on_open: OnOpen | None = None,
) -> None:
    """Serve MCP over streamable HTTP at ``http://<host>:<port>/mcp`` until cancelled."""
    config = uvicorn.Config(
        http_app(settings, token=token, host=host, on_open=on_open),
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
    )
    await uvicorn.Server(config).serve()
