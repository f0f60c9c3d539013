"""The error tree of zen_async.

Every error the library raises descends from one root::

    ZenError
     ├── ConfigError              invalid settings, raised at start-up
     ├── ValidationError          bad input from a caller; nothing was stored
     ├── NotFoundError            the entity does not exist
     ├── ConflictError            a version or uniqueness check failed
     ├── InvalidTransitionError   an agent lifecycle step not in the table
     ├── CapacityError            a bounded resource is exhausted (ports, pools, journal)
     ├── AuthError                wrong credentials, a missing ACL permission, or a TLS
     │                            certificate the other side does not trust
     └── BackendError             the server could not serve the command
          ├── DegradedError       refused on purpose: the circuit is open
          └── DurabilityError     applied, but too few replicas confirmed it in time

redis-py exceptions never escape the core (``zen_async.store``): they are mapped once, at
that boundary, with ``raise ... from exc`` so the original stays on ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AuthError",
    "BackendError",
    "CapacityError",
    "ConfigError",
    "ConfigProblem",
    "ConflictError",
    "DegradedError",
    "DurabilityError",
    "InvalidTransitionError",
    "NotFoundError",
    "ValidationError",
    "ZenError",
]


class ZenError(Exception):
    """Root of every error raised by zen_async."""


class ConfigError(ZenError):
    """The settings are invalid; raised once, at start-up, listing every problem found.

    Attributes:
        problems: one entry per bad variable: its name, the value given and what is accepted.
    """

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        lines = [p.describe() for p in self.problems]
        if len(lines) == 1:
            message = f"invalid configuration: {lines[0]}"
        else:
            message = f"invalid configuration ({len(lines)} problems):\n  " + "\n  ".join(lines)
        super().__init__(message)


class ConfigProblem:
    """One bad setting: the environment variable, the value given (redacted if secret), and
    what would be accepted."""

    __slots__ = ("accepted", "value", "variable")

    def __init__(self, variable: str, value: object, accepted: str) -> None:
        self.variable = variable
        self.value = value
        self.accepted = accepted

    def describe(self) -> str:
        """Render as ``VAR=value: accepted ...``."""
        return f"{self.variable}={self.value!r}: {self.accepted}"

    def __repr__(self) -> str:
        return f"ConfigProblem({self.describe()})"


class ValidationError(ZenError):
    """The caller's input is invalid. The message says what was wrong and what would be right;
    stored data is untouched."""


class NotFoundError(ZenError):
    """The requested entity does not exist (or has expired)."""


class ConflictError(ZenError):
    """A write lost a race: the stored version differs from ``expected_version``, or a unique
    value is already taken."""


class InvalidTransitionError(ZenError):
    """A lifecycle transition that the transition table does not allow."""


class CapacityError(ZenError):
    """A bounded resource is exhausted: the port range, a connection pool, the outage journal."""


class AuthError(ZenError):
    """Authentication or authorisation failed: wrong credentials (data nodes or sentinels),
    a command or key the ACL user may not use, or a TLS certificate that was not trusted.
    Names the user (or the server and CA file), never the password."""


class BackendError(ZenError):
    """The server could not serve the command: unreachable, timed out, failing over, or an
    unexpected error reply.

    Attributes:
        retryable: True when the same command may succeed later (connection lost, timeout,
            failover in progress); False for a definite error reply.
        maybe_applied: True when a write was sent and its reply lost: it may have been
            applied. Retrying with ``op_id`` is safe (applied at most once).
        op_id: the operation id of the write that failed, when it had one.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        maybe_applied: bool = False,
        op_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.maybe_applied = maybe_applied
        self.op_id = op_id

    def with_op(self, op_id: str, *, what: str = "this write", sent: bool = True) -> BackendError:
        """The same error for a write under ``op_id``: says whether it may have been applied
        (``sent`` and a lost reply, not a refusal) and which op id makes a retry safe."""
        if isinstance(self, DurabilityError):
            maybe = True  # applied on the master, not confirmed by the replicas
        else:
            maybe = sent and self.retryable and not isinstance(self, DegradedError)
        outcome = f"{what} may have been applied" if maybe else f"{what} was not applied"
        # A copy without calling __init__ (subclasses take keyword-only arguments).
        error = type(self).__new__(type(self))
        error.__dict__.update(self.__dict__)
        error.args = (f"{self}; {outcome}: retry with op_id={op_id} (applied at most once)",)
        error.maybe_applied, error.op_id = maybe, op_id
        return error


class DegradedError(BackendError):
    """The operation was refused without reaching the server because the circuit breaker is
    open (or the operation cannot be done safely while degraded). The message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class DurabilityError(BackendError):
    """A write was applied on the master but fewer replicas than REDIS_DURABILITY_REPLICAS
    confirmed it within REDIS_DURABILITY_TIMEOUT_MS (``REDIS_DURABILITY=replicated``).

    The write is not rolled back: it stays on the master and usually reaches the replicas
    later, but a failover before then can lose it. Re-read before retrying a write that is
    not idempotent.

    Attributes:
        acknowledged: how many replicas confirmed the write.
        required: how many were required.
        timeout_ms: how long the server waited for them.
    """

    def __init__(self, *, acknowledged: int, required: int, timeout_ms: int, what: str) -> None:
        super().__init__(
            f"{what} was applied on the master but only {acknowledged} of {required} required "
            f"replica(s) acknowledged it within {timeout_ms} ms (REDIS_DURABILITY=replicated); "
            "it may still reach the replicas, or be lost if the master fails over first",
            retryable=False,
        )
        self.acknowledged = acknowledged
        self.required = required
        self.timeout_ms = timeout_ms
