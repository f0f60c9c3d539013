"""The MCP server: an ``MCPServer`` whose lifespan opens ``open_zen()`` once, with zen's tools,
served over stdio (the default) or streamable HTTP.

Over HTTP every client is untrusted: a bind beyond loopback needs a bearer token of
:data:`MIN_TOKEN_BYTES` or more (:func:`check_exposure`), and the Host and Origin headers are
checked on every bind (loopback names plus the allowed hosts), so a DNS-rebinding page in a
browser cannot reach the server under a name of its own.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Final

import structlog
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from zen_async import __version__
from zen_async.config import Settings
from zen_async.errors import ConfigError, ConfigProblem, ZenError
from zen_async.mcp_server.tools import register_tools
from zen_async.services import Zen, open_zen

__all__ = [
    "MIN_TOKEN_BYTES",
    "BearerAuth",
    "build_server",
    "check_exposure",
    "is_loopback",
    "serve_http",
    "serve_stdio",
    "transport_security",
]

log = structlog.get_logger(__name__)

MIN_TOKEN_BYTES: Final = 16
"""The shortest bearer token that may guard a bind beyond loopback."""
_LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "[::1]")
_WILDCARD_BINDS: Final = frozenset({"", "0.0.0.0", "::", "[::]"})

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
    """ASGI middleware refusing requests without ``Authorization: Bearer <token>`` (401).
    The scheme is case-insensitive (RFC 7235); the token is compared in constant time."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._expected = token.encode()

    def _authorized(self, scope: Scope) -> bool:
        given = dict(scope.get("headers") or ()).get(b"authorization", b"")
        scheme, _, credentials = given.strip().partition(b" ")
        # Compared even for a wrong scheme: the time taken says nothing about the token.
        matches = hmac.compare_digest(credentials.strip(), self._expected)
        return scheme.lower() == b"bearer" and matches

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http" and not self._authorized(scope):
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


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine: 127.0.0.0/8, ::1 or
    ``localhost`` (any other name counts as reachable from elsewhere)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, *, allow_insecure: bool = False) -> list[str]:
    """Refuse to serve beyond loopback without a real token; say what is weak.

    No token, an empty one, or one shorter than :data:`MIN_TOKEN_BYTES` bytes is enough
    only on a loopback bind, unless ``allow_insecure``.

    Returns:
        Warnings to show loudly (an empty token, a short one, an insecure exposure); never
        the token itself.

    Raises:
        ConfigError: a non-loopback bind without a token of 16+ bytes, and no
            ``allow_insecure``.
    """
    size = len(token.encode()) if token is not None else 0
    if size >= MIN_TOKEN_BYTES:
        return []
    what = (
        "no bearer token"
        if token is None
        else "an empty bearer token"
        if size == 0
        else f"a bearer token of {size} bytes (fewer than {MIN_TOKEN_BYTES})"
    )
    auth = "no authentication" if size == 0 else "a weak token"
    if is_loopback(host):
        return [] if token is None else [f"{what}: {auth}, accepted because {host} is loopback"]
    if not allow_insecure:
        raise ConfigError(
            [
                ConfigProblem(
                    "--host",
                    host,
                    f"binding beyond loopback with {what} would serve every tool to anyone "
                    f"who reaches the port: set ZEN_MCP_TOKEN or --token-file to a token of "
                    f"{MIN_TOKEN_BYTES}+ bytes, bind 127.0.0.1, or pass --insecure-no-auth "
                    "to accept the risk",
                )
            ]
        )
    return [
        f"INSECURE: serving on {host} with {what} (--insecure-no-auth): {auth}; anyone who "
        "reaches the port can call every tool"
    ]


def transport_security(
    allowed_hosts: Sequence[str] = (), *, bind: str = "127.0.0.1"
) -> TransportSecuritySettings:
    """The MCP SDK's Host/Origin check, on for every bind: loopback names, the bind address
    itself (unless a wildcard) and ``allowed_hosts`` (``host[:port]`` patterns; no port or
    ``:*`` for any port) are accepted as Host, and as Origin over http and https. Anything
    else gets 421 (Host) or 403 (Origin) from the SDK.

    Raises:
        ConfigError: a pattern that is not ``host[:port]``.
    """
    patterns = [*_LOOPBACK_NAMES]
    if bind.strip().lower() not in _WILDCARD_BINDS:
        patterns.append(_bracketed(bind.strip().lower()))
    for raw in allowed_hosts:
        pattern = raw.strip().lower()
        if pattern:
            patterns.append(_checked_pattern(pattern, raw))
    hosts: list[str] = []
    for pattern in dict.fromkeys(patterns):
        hosts.append(pattern)
        if not _has_port(pattern):
            hosts.append(f"{pattern}:*")
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def _bracketed(host: str) -> str:
    """A bare IPv6 address as it appears in a Host header: ``[::1]``."""
    return f"[{host}]" if host.count(":") > 1 and not host.startswith("[") else host


def _split(pattern: str) -> tuple[str, str | None]:
    """``host[:port]`` (IPv6 in brackets) as (host, port or None)."""
    if pattern.startswith("["):
        host, _, rest = pattern.partition("]")
        return host + "]", (rest[1:] if rest.startswith(":") else rest or None)
    host, colon, port = pattern.partition(":")
    return host, port if colon else None


def _has_port(pattern: str) -> bool:
    return _split(pattern)[1] is not None


def _checked_pattern(pattern: str, raw: str) -> str:
    pattern = _bracketed(pattern)
    host, port = _split(pattern)
    if (
        host.strip("[]")
        and not any(c in host for c in "/@?#*\\ \t")
        and (port is None or port == "*" or port.isdigit())
    ):
        return pattern
    raise ConfigError(
        [
            ConfigProblem(
                "ZEN_MCP_ALLOWED_HOSTS",
                raw,
                "comma-separated host[:port] patterns, e.g. 'mcp.example.com,10.0.0.5:8765' "
                "(no scheme or path; port '*' or none for any port)",
            )
        ]
    )


def http_app(
    settings: Settings,
    *,
    token: str | None,
    host: str,
    allowed_hosts: Sequence[str] = (),
    on_open: OnOpen | None = None,
) -> ASGIApp:
    """The streamable-HTTP ASGI app (at ``/mcp``) with the Host/Origin check of
    :func:`transport_security`, behind a bearer check when ``token`` is not empty.

    Raises:
        ConfigError: an invalid allowed-host pattern.
    """
    security = transport_security(allowed_hosts, bind=host)
    server = build_server(settings, on_open=on_open)
    app: ASGIApp = server.streamable_http_app(host=host, transport_security=security)
    return BearerAuth(app, token) if token else app


async def serve_http(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    allowed_hosts: Sequence[str] = (),
    allow_insecure: bool = False,
    on_open: OnOpen | None = None,
) -> None:
    """Serve MCP over streamable HTTP at ``http://<host>:<port>/mcp`` until cancelled.

    Raises:
        ConfigError: before binding anything, a non-loopback ``host`` without a token of
            :data:`MIN_TOKEN_BYTES`+ bytes and no ``allow_insecure``
            (:func:`check_exposure`), or an invalid allowed-host pattern.
    """
    for warning in check_exposure(host, token, allow_insecure=allow_insecure):
        log.warning("mcp_http_exposure", host=host, port=port, warning=warning)
    app = http_app(settings, token=token, host=host, allowed_hosts=allowed_hosts, on_open=on_open)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
