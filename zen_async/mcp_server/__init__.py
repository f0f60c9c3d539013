"""zen_async over MCP: the tools (``register_tools``) and the server (``build_server``)."""

from zen_async.mcp_server.app import BearerAuth, build_server, http_app, serve_http, serve_stdio
from zen_async.mcp_server.tools import TOOL_NAMES, register_tools

__all__ = [
    "TOOL_NAMES",
    "BearerAuth",
    "build_server",
    "http_app",
    "register_tools",
    "serve_http",
    "serve_stdio",
]
