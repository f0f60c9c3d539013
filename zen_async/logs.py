"""Logging set-up for the process edges (CLI, MCP server): structlog, JSON lines to stderr.

Library code only calls ``structlog.get_logger``; configuring output is the host's call,
because stdout may be the MCP stdio wire.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", *, cache: bool = True) -> None:
    """Render structlog events as JSON lines on stderr at ``level`` and above.

    Args:
        level: the lowest level written.
        cache: cache each logger on first use (fast; ``False`` lets tests capture logs).
    """
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )
