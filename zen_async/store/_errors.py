"""The one place where redis-py exceptions become :mod:`zen_async.errors`.

Lua scripts signal domain errors with an error reply whose first word is a code
(``redis.error_reply("CONFLICT expected version 3, found 4")``); :data:`SCRIPT_ERROR_CODES`
maps those codes to the typed errors.
"""

from __future__ import annotations

import asyncio
import os
import socket

from redis import exceptions as rx

from zen_async.errors import (
    AuthError,
    BackendError,
    CapacityError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
    ZenError,
)

SCRIPT_ERROR_CODES: dict[str, type[ZenError]] = {
    "CONFLICT": ConflictError,
    "NOTFOUND": NotFoundError,
    "INVALID": InvalidTransitionError,
    "CAPACITY": CapacityError,
    "VALIDATION": ValidationError,
}

# Replies that mean "the server is there but cannot take writes right now": a failover or
# resharding in progress. Retryable, and not evidence that the server is down.
_TRANSIENT_PREFIXES = (
    "READONLY",
    "NOREPLICAS",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "LOADING",
    "MASTERDOWN",
    "BUSY ",
)

_POOL_EXHAUSTED = "No connection available."

# OpenSSL's words for a TLS handshake that one side refused: we did not trust the server's
# certificate, or the server did not get or trust ours (TLS 1.2 says "handshake failure",
# TLS 1.3 "certificate required"). redis-py folds the ssl.SSLError into a ConnectionError's
# text. A TLS 1.3 server may also just reset the connection after the handshake, which cannot
# be told from a network failure.
_TLS_TRUST_MARKERS = (
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "CERTIFICATE_REQUIRED",
    "certificate required",
    "UNKNOWN_CA",
    "unknown ca",
    "BAD_CERTIFICATE",
    "bad certificate",
    "HANDSHAKE_FAILURE",
)


class SentinelAuthFailure(rx.AuthenticationError):
    """The sentinels refused the sentinel credentials (REDIS_SENTINEL_USER/PASSWORD).

    Raised by the core's Sentinel manager: redis-py would fold it into a "no master found"
    connection error, and the mapped error must name the sentinel user, not the data user.
    """

    def __init__(self, message: str, *, user: str | None) -> None:
        super().__init__(message)
        self.user = user


def _tls_untrusted(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, rx.ConnectionError) and any(m in text for m in _TLS_TRUST_MARKERS)


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that redis-py's read timeout swallowed.

    On Python 3.11, a cancel that lands as ``asyncio.timeout`` expires is turned into a
    TimeoutError (or a plain timed-out read) and not delivered again; a loop around a read
    would then never stop. Call this after a read returns or fails.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the server is unreachable or not answering: what the circuit
    breaker counts. Pool exhaustion, loading, READONLY and failover replies are not outages,
    and neither are refused credentials or certificates: the server is there, saying no."""
    if isinstance(exc, rx.MaxConnectionsError | rx.BusyLoadingError | rx.AuthenticationError):
        return False
    if _tls_untrusted(exc):
        return False
    if isinstance(exc, rx.ConnectionError) and str(exc) == _POOL_EXHAUSTED:
        return False
    return isinstance(exc, rx.ConnectionError | rx.TimeoutError)


RedisFailure = (rx.RedisError, rx.RedisClusterException)
"""What redis-py raises: its RedisError tree, and cluster routing errors outside it."""


def map_error(exc: Exception, *, user: str | None = None, server: str | None = None) -> ZenError:
    """Translate a redis-py exception into the ZenError tree (the caller raises it ``from``).

    Args:
        exc: what redis-py raised.
        user: the ACL user, named in authentication errors.
        server: where the deployment is (``Settings.server_label``), named in the messages of
            outages and failovers: redis-py's own text does not always say (``Timeout
            connecting to server``).
    """
    who = f"user {user!r}" if user else "the default user"
    where = f"server {server}" if server else "server"
    cause = exc.__cause__
    # The cluster client reports a refused login on every startup node as "cannot be
    # connected", with the refusal as its cause: report the refusal.
    if (
        isinstance(exc, rx.RedisClusterException)
        and isinstance(cause, Exception)
        and (
            isinstance(cause, rx.AuthenticationError | rx.NoPermissionError)
            or _tls_untrusted(cause)
        )
    ):
        return map_error(cause, user=user)
    if isinstance(exc, SentinelAuthFailure):
        sentinel_who = f"sentinel user {exc.user!r}" if exc.user else "the sentinels' default user"
        return AuthError(f"sentinel authentication failed for {sentinel_who}: {_first_line(exc)}")
    if isinstance(exc, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError):
        return AuthError(f"authentication failed for {who}: {_first_line(exc)}")
    if isinstance(exc, rx.NoPermissionError):
        return AuthError(f"{who} is not permitted to do this: {_first_line(exc)}")
    if isinstance(exc, rx.MaxConnectionsError) or (
        isinstance(exc, rx.ConnectionError) and str(exc) == _POOL_EXHAUSTED
    ):
        return CapacityError(
            "no connection became free in the pool in time; raise REDIS_MAX_CONNECTIONS or "
            "REDIS_POOL_TIMEOUT, or lower the concurrency"
        )
    if _tls_untrusted(exc):
        return AuthError(
            "TLS handshake refused: a certificate was not trusted or not given (is "
            "REDIS_TLS_CA_FILE the CA that signed the server's certificate, does the name match "
            "or is REDIS_TLS_CHECK_HOSTNAME off, and does the server require and accept "
            "REDIS_TLS_CERT_FILE?): "
            f"{_first_line(exc)}"
        )
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError):
        return BackendError(
            f"{where} unreachable{_outage_cause(exc)}: {_first_line(exc)}", retryable=True
        )
    if isinstance(exc, rx.ClusterDownError | rx.TryAgainError | rx.ReadOnlyError):
        return BackendError(f"failover in progress on {where}: {_first_line(exc)}", retryable=True)
    if isinstance(exc, rx.DataError):
        return ValidationError(f"invalid command argument: {exc}")
    if isinstance(exc, rx.ResponseError):
        return _map_reply(exc, who, where)
    if isinstance(exc, rx.SlotNotCoveredError):
        return BackendError(
            f"cluster slot not covered on {where} (failover?): {exc}", retryable=True
        )
    return BackendError(f"{where}: {type(exc).__name__}: {_first_line(exc)}")


def _outage_cause(exc: BaseException) -> str:
    """`` (timeout)``, `` (connection refused)``, ... from the exception's type and the
    errno of the OSError redis-py chains as its cause; empty when neither says."""
    if isinstance(exc, rx.TimeoutError):
        return " (timeout)"
    cause = exc.__cause__
    if isinstance(cause, TimeoutError):
        return " (timeout)"
    if not isinstance(cause, OSError):
        return ""
    # asyncio's strerror is "Connect call failed (...)": the errno says what failed.
    reason = (
        cause.strerror
        if isinstance(cause, socket.gaierror) or not cause.errno
        else os.strerror(cause.errno)
    )
    return f" ({reason[:1].lower()}{reason[1:]})" if reason else ""


def _map_reply(exc: rx.ResponseError, who: str, where: str) -> ZenError:
    message = str(exc)
    code, _, rest = message.partition(" ")
    typed = SCRIPT_ERROR_CODES.get(code)
    if typed is not None:
        return typed(rest)
    if code in ("NOAUTH", "WRONGPASS"):
        return AuthError(f"authentication failed for {who}: {message}")
    if code == "NOPERM":
        return AuthError(f"{who} is not permitted to do this: {message}")
    if message.startswith(_TRANSIENT_PREFIXES):
        return BackendError(f"{where} busy or failing over: {message}", retryable=True)
    return BackendError(f"error reply: {message}")


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
