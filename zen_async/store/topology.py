"""Building redis-py clients for each topology, one per logical keyspace.

- standalone, ``databases`` layout: one ``BlockingConnectionPool`` per keyspace, each on its
  own DB index;
- standalone, ``prefixed`` layout: one ``BlockingConnectionPool`` shared by every keyspace;
- Sentinel: the same, with a blocking pool that asks the sentinels for the master and follows
  it after a failover;
- Cluster: one ``RedisCluster`` for every keyspace (DB 0), with a semaphore in front because
  its per-node pools raise instead of waiting.

redis-py's own retries are switched off: the command runner retries only what is safe to
retry (``zen_async.store.keyspace``).

Credentials and TLS reach every connection: the data nodes of each topology get REDIS_USER /
REDIS_PASSWORD (or the URL's) and the TLS files; the sentinels get their own credentials,
REDIS_SENTINEL_USER / REDIS_SENTINEL_PASSWORD (never the data nodes' password), and TLS when
REDIS_TLS is on (docs/security.md).

The TLS context is built once, off the event loop, when the backend is built
(:func:`tls_context`), and every TLS connection of every topology uses it: redis-py would
otherwise look the certificate files up (``os.stat``) on the loop for each new connection.
Certificates are read at start; rotating them takes a restart.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, NodesManager
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import NoPermissionError

from zen_async.config import Address, Settings, Topology
from zen_async.errors import ConfigError, ConfigProblem
from zen_async.store._errors import SentinelAuthFailure
from zen_async.store.mux import ClusterMux, NodeMux

__all__ = ["KEYSPACES", "Backend", "build_backend", "driver_info", "tls_context"]

KEYSPACES: Final[dict[str, int]] = {
    "conversations": 0,
    "tasks": 1,
    "state": 2,
    "memory": 3,
    "streams": 4,
    "cache": 5,
    "metrics": 6,
}
"""Logical keyspaces and their DB index in the ``databases`` layout (the seed's allocation)."""

CLIENT_NAME: Final = "zen-async"


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection instead of raising.

    ``SentinelConnectionPool`` finds the master (and re-finds it after a failover);
    ``BlockingConnectionPool`` supplies ``get_connection``/``release`` that wait up to
    ``timeout`` seconds. Neither overrides what the other provides.

    redis-py re-asks the sentinels only when a connection (re)connects, and never looks at
    the connections already open. A master frozen past a failover and then resumed answers
    as master until the sentinels demote it, so those connections would read its older data
    and send it writes. Two additions close that: :meth:`follow` (the health check calls it
    with the master the sentinels name, every interval) closes every connection to a former
    master, and :meth:`release` closes a returned one.
    """

    async def follow(self, master: tuple[str, int]) -> int:
        """Point the pool at ``master`` and close each open connection to another server:
        idle ones, and checked-out ones too (a pub/sub subscriber then reconnects; a command
        waiting on a former master fails as a connection error rather than answer from it).

        Returns:
            How many connections were closed.
        """
        self.master_address = master
        stale = [
            conn
            for conn in (*self._available_connections, *self._in_use_connections)
            if conn.is_connected and _address(conn) != master
        ]
        await asyncio.gather(*(conn.disconnect() for conn in stale), return_exceptions=True)
        return len(stale)

    async def release(self, connection: AbstractConnection) -> None:
        """Return ``connection``, closed first if it is open to a former master."""
        if self.master_address is not None and _address(connection) != self.master_address:
            await connection.disconnect()
        await super().release(connection)


def _address(connection: AbstractConnection) -> tuple[str | None, int | None]:
    return getattr(connection, "host", None), getattr(connection, "port", None)


class AuthAwareSentinel(Sentinel):
    """A Sentinel manager whose failures say when the sentinels refused our credentials,
    and that asks the sentinels once for any number of concurrent callers.

    redis-py's ``discover_master`` treats a refused AUTH like an unreachable sentinel and
    ends in "No master found"; an ACL denial escapes as a bare NOPERM. Both become
    :class:`SentinelAuthFailure`, naming the sentinel user.

    Every new connection to the master asks the sentinels first, so a burst of connects (a
    pool filling up) is a burst of ``discover_master`` calls. In redis-py 8.2 each would
    check out its own connection from a sentinel client's pool, a ``ConnectionPool`` of at
    most 100 that raises past that: the 101st call counts the first sentinel as failed and
    asks the next one, which it then swaps to the front of ``sentinels`` with an index read
    before its await. Two such calls in flight together leave the list holding one client
    twice and the first sentinel's not at all: that sentinel is never asked again, and
    closing "every client in ``sentinels``" skips it, so its (up to 100) open connections
    are garbage-collected unclosed. Here concurrent calls share one lookup (one connection
    per sentinel, nothing swapped concurrently), and :meth:`aclose` closes the clients made
    at start, whatever order ``sentinels`` is in.
    """

    def __init__(
        self,
        sentinels: list[Address],
        *,
        sentinel_user: str | None,
        tls: ssl.SSLContext | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sentinels, **kwargs)
        self.sentinel_user = sentinel_user
        self._clients: Final = tuple(self.sentinels)
        """Every sentinel client, in a stable order (redis-py reorders ``sentinels``)."""
        self._lookups: dict[str, asyncio.Future[Any]] = {}
        self._asking = asyncio.Lock()
        self._closed = False
        if tls is not None:  # the sentinels' own clients use the context built at start too
            for client in self._clients:
                client.connection_pool.connection_class = _TLSConnection
                client.connection_pool.connection_kwargs["zen_tls"] = tls

    async def discover_master(self, service_name: str) -> Any:
        """The master's ``(host, port)``: the answer of the lookup in flight for
        ``service_name``, or of a new one. A caller cancelled leaves the lookup to the others.

        Raises:
            SentinelAuthFailure: the sentinels refused the credentials or the command.
            MasterNotFoundError: no sentinel named a healthy master, or the manager is closed.
        """
        if self._closed:
            raise MasterNotFoundError(f"No master found for {service_name!r}: {_CLOSED}")
        lookup = self._lookups.get(service_name)
        if lookup is None:
            lookup = self._lookups[service_name] = asyncio.ensure_future(self._lookup(service_name))
            lookup.add_done_callback(functools.partial(self._lookup_done, service_name))
        try:
            return await asyncio.shield(lookup)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if lookup.cancelled() and task is not None and not task.cancelling():
                # Stopped by aclose, not by a cancel of this caller.
                raise MasterNotFoundError(
                    f"No master found for {service_name!r}: {_CLOSED}"
                ) from None
            raise

    def _lookup_done(self, service_name: str, lookup: asyncio.Future[Any]) -> None:
        if self._lookups.get(service_name) is lookup:
            del self._lookups[service_name]
        if not lookup.cancelled():
            lookup.exception()  # retrieved even when every caller was cancelled

    async def _lookup(self, service_name: str) -> Any:
        # One at a time: redis-py's reordering of ``sentinels`` is not safe concurrently.
        async with self._asking:
            return await self._ask(service_name)

    async def _ask(self, service_name: str) -> Any:
        try:
            return await super().discover_master(service_name)
        except NoPermissionError as exc:
            raise SentinelAuthFailure(_first_line(exc), user=self.sentinel_user) from exc
        except MasterNotFoundError as exc:
            # redis-py lists each sentinel's error (by class name) in the message; an
            # AuthenticationError among them means the credentials, not the network, are at
            # fault, and (since redis-py 8.2, which collects it there instead of raising it)
            # a NoPermissionError an ACL denial. tests/test_security.py pins this wording.
            denied = _NOPERM.search(str(exc))
            if denied is not None:
                raise SentinelAuthFailure(denied.group(1), user=self.sentinel_user) from exc
            if "AuthenticationError" in str(exc):
                raise SentinelAuthFailure(
                    "the sentinels refused the credentials (invalid username-password pair, "
                    "user disabled, or a password is required)",
                    user=self.sentinel_user,
                ) from exc
            raise

    async def aclose(self) -> None:
        """Stop the lookups in flight, then close every sentinel client and its pool (each
        one even if another fails; the first error is raised afterwards). Final: a later
        :meth:`discover_master` fails rather than open connections nothing would close."""
        self._closed = True
        lookups = list(self._lookups.values())
        for lookup in lookups:
            lookup.cancel()
        await asyncio.gather(*lookups, return_exceptions=True)
        results = await asyncio.gather(
            *(client.aclose() for client in self._clients), return_exceptions=True
        )
        error = next((r for r in results if isinstance(r, BaseException)), None)
        if error is not None:
            raise error


_CLOSED: Final = "the sentinel manager is closed"

_NOPERM: Final = re.compile(r"NoPermissionError\b[^:]*: ([^,]+)")
"""An ACL denial among the per-sentinel errors redis-py folds into MasterNotFoundError."""


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


@dataclass(eq=False)
class Backend:
    """The redis-py clients for one deployment. Internal to the core."""

    topology: Topology
    layout: str
    clients: dict[str, Redis | RedisCluster]
    """One client per keyspace name (shared objects where the layout shares a pool)."""
    dbs: dict[str, int]
    """The DB index each keyspace writes to."""
    sentinel: AuthAwareSentinel | None = None
    master_name: str | None = None
    cluster: RedisCluster | None = None
    bound: asyncio.Semaphore | None = None
    """Concurrency bound in front of a cluster client (None elsewhere)."""
    max_connections: int = 0
    routes: dict[str, NodeMux | ClusterMux] = field(default_factory=dict)
    """The multiplexed path of each keyspace (REDIS_TRANSPORT=multiplexed; else empty)."""
    _closed: bool = field(default=False, repr=False)

    def distinct_clients(self) -> list[tuple[str, Redis | RedisCluster]]:
        """Each distinct client once, named by the first keyspace using it."""
        seen: dict[int, tuple[str, Redis | RedisCluster]] = {}
        for name, client in self.clients.items():
            seen.setdefault(id(client), (name, client))
        return list(seen.values())

    async def follow_master(self) -> tuple[str, int] | None:
        """On Sentinel, ask the sentinels for the master and point every pool at it (see
        :class:`BlockingSentinelConnectionPool`); returns its address (None elsewhere).

        Raises:
            MasterNotFoundError, SentinelAuthFailure: as ``Sentinel.discover_master``.
        """
        if self.sentinel is None or self.master_name is None:
            return None
        master: tuple[str, int] = await self.sentinel.discover_master(self.master_name)
        for _, client in self.distinct_clients():
            pool = client.connection_pool if isinstance(client, Redis) else None
            if isinstance(pool, BlockingSentinelConnectionPool):
                await pool.follow(master)
        for route in self.distinct_routes():
            if isinstance(route, NodeMux):
                route.follow(master)
        return master

    def distinct_routes(self) -> list[NodeMux | ClusterMux]:
        """Each multiplexed path once (keyspaces on one DB share one)."""
        return list({id(route): route for route in self.routes.values()}.values())

    def mux_usage(self) -> dict[str, dict[str, int]]:
        """Open multiplexed connections and commands in flight on them, per keyspace (the
        first one using each) or, on Cluster, per node."""
        usage: dict[str, dict[str, int]] = {}
        seen: set[int] = set()
        for name, route in self.routes.items():
            if id(route) in seen:
                continue
            seen.add(id(route))
            if isinstance(route, ClusterMux):
                usage.update(route.usage())
            else:
                usage[name] = route.usage()
        return usage

    def pool_usage(self) -> dict[str, dict[str, int]]:
        """Connections in use and idle per pool (per cluster node on Cluster)."""
        usage: dict[str, dict[str, int]] = {}
        if self.cluster is not None:
            for node in self.cluster.get_nodes():
                in_use = len(node._connections) - len(node._free)
                usage[node.name] = {
                    "in_use": in_use,
                    "idle": len(node._free),
                    "max": node.max_connections,
                }
            return usage
        for name, client in self.distinct_clients():
            assert isinstance(client, Redis)
            pool = client.connection_pool
            usage[name] = {
                "in_use": len(pool._in_use_connections),
                "idle": len(pool._available_connections),
                "max": pool.max_connections,
            }
        return usage

    def connections_in_use(self) -> int:
        """Total connections checked out of every pool."""
        return sum(p["in_use"] for p in self.pool_usage().values())

    async def aclose(self) -> None:
        """Close every pool and the sentinel manager."""
        if self._closed:
            return
        self._closed = True
        for route in self.distinct_routes():
            await route.aclose()
        for _, client in self.distinct_clients():
            if isinstance(client, Redis):
                # A client handed a pool does not own it: close the pool explicitly.
                await client.aclose(close_connection_pool=True)
            else:
                await client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()


class _TLSConnection(SSLConnection):
    """A TLS connection on the context built at start (see :func:`tls_context`)."""

    def __init__(self, *, zen_tls: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context.context = zen_tls  # redis-py then never builds (or stats) its own


class _SentinelTLSConnection(SentinelManagedSSLConnection):
    """The same, for connections to the master the sentinels name."""

    def __init__(self, *, zen_tls: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self.ssl_context.context = zen_tls


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The one TLS context every connection uses (None without TLS), as redis-py would build
    it from the REDIS_TLS_* files. Reads those files: call it off the event loop.

    Raises:
        ConfigError: a certificate, key or CA file that cannot be loaded.
    """
    if not settings.tls:
        return None
    context = ssl.create_default_context()
    context.check_hostname = settings.redis_tls_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    cert, key, ca = (
        settings.redis_tls_cert_file,
        settings.redis_tls_key_file,
        settings.redis_tls_ca_file,
    )
    if cert is not None or key is not None:
        try:
            context.load_cert_chain(certfile=str(cert or key), keyfile=str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise _tls_problem("REDIS_TLS_CERT_FILE", cert or key, exc) from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise _tls_problem("REDIS_TLS_CA_FILE", ca, exc) from None
    return context


def _tls_problem(variable: str, path: object, exc: Exception) -> ConfigError:
    return ConfigError([ConfigProblem(variable, str(path), f"a readable PEM file ({exc})")])


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def driver_info() -> DriverInfo:
    """What connections report with CLIENT SETINFO: redis-py with zen-async upstream.

    Resolved once: redis-py would otherwise read package metadata from disk for every new
    connection, on the event loop. Call it off the loop (it reads that metadata once).
    """
    from zen_async import __version__  # noqa: PLC0415 - the package imports this module

    info = DriverInfo(name="redis-py", lib_version=metadata.version("redis"))
    return info.add_upstream_driver("zen-async", __version__)


def _connection_kwargs(
    settings: Settings, driver: DriverInfo, tls: ssl.SSLContext | None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "driver_info": driver,
        "username": settings.username,
        "password": settings.password,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_keepalive": True,
        "client_name": CLIENT_NAME,
        "retry": _no_retry(),
    }
    if tls is not None:
        kwargs.update(_tls_kwargs(settings), zen_tls=tls)
    return kwargs


def _tls_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "ssl_ca_certs": str(settings.redis_tls_ca_file) if settings.redis_tls_ca_file else None,
        "ssl_certfile": (
            str(settings.redis_tls_cert_file) if settings.redis_tls_cert_file else None
        ),
        "ssl_keyfile": str(settings.redis_tls_key_file) if settings.redis_tls_key_file else None,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": settings.redis_tls_check_hostname,
    }


def _standalone_pool(
    settings: Settings, db: int, driver: DriverInfo, tls: ssl.SSLContext | None
) -> BlockingConnectionPool:
    kwargs = _connection_kwargs(settings, driver, tls)
    socket_path = settings.unix_socket
    connection_class: type[Connection] | type[UnixDomainSocketConnection]
    if socket_path is not None:
        for key in [k for k in kwargs if k.startswith("ssl_")] + ["socket_keepalive", "zen_tls"]:
            kwargs.pop(key, None)
        connection_class = UnixDomainSocketConnection
        kwargs["path"] = socket_path
    else:
        host, port = settings.server_address
        connection_class = _TLSConnection if tls is not None else Connection
        kwargs.update(host=host, port=port)
    return BlockingConnectionPool(
        connection_class=connection_class,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout,
        db=db,
        **kwargs,
    )


def _keyspace_dbs(settings: Settings) -> dict[str, int]:
    if settings.db_layout == "databases":
        return dict(KEYSPACES)
    return dict.fromkeys(KEYSPACES, settings.base_db)


def _client_per_db(
    dbs: dict[str, int], make_pool: Callable[[int], BlockingConnectionPool]
) -> dict[str, Redis | RedisCluster]:
    """One client per distinct DB index, shared by the keyspaces on that DB."""
    by_db: dict[int, Redis] = {}
    clients: dict[str, Redis | RedisCluster] = {}
    for name, db in dbs.items():
        if db not in by_db:
            by_db[db] = Redis(connection_pool=make_pool(db))
        clients[name] = by_db[db]
    return clients


def build_backend(
    settings: Settings, driver: DriverInfo, tls: ssl.SSLContext | None = None
) -> Backend:
    """Create (without connecting) the clients for the configured topology.

    ``tls`` is :func:`tls_context` of the same settings (required when REDIS_TLS is on).
    """
    if settings.tls and tls is None:
        raise ValueError("REDIS_TLS is on: pass tls=tls_context(settings), built off the loop")
    dbs = _keyspace_dbs(settings)
    topology = settings.topology
    if topology == "cluster":
        backend = _build_cluster(settings, dbs, driver, tls)
    elif topology == "sentinel":
        backend = _build_sentinel(settings, dbs, driver, tls)
    else:
        clients = _client_per_db(dbs, lambda db: _standalone_pool(settings, db, driver, tls))
        backend = Backend(
            topology=topology,
            layout=settings.db_layout,
            clients=clients,
            dbs=dbs,
            max_connections=settings.redis_max_connections,
        )
    if settings.redis_transport == "multiplexed":
        backend.routes = _routes(settings, backend)
    return backend


def _routes(settings: Settings, backend: Backend) -> dict[str, NodeMux | ClusterMux]:
    """The multiplexed path per keyspace: on one server, one :class:`NodeMux` per DB whose
    connections are made by that DB's pool (on Sentinel they ask the sentinels for the
    master); on Cluster one :class:`ClusterMux` over redis-py's slot map."""
    wait = (
        ("WAIT", settings.redis_durability_replicas, settings.redis_durability_timeout_ms)
        if settings.redis_durability == "replicated"
        else None
    )
    options: dict[str, Any] = {
        "connections": settings.redis_mux_connections,
        "max_in_flight": settings.redis_mux_max_in_flight,
        "timeout": settings.redis_socket_timeout,
        "wait_command": wait,
    }
    if backend.cluster is not None:
        shared = ClusterMux(backend.cluster, **options)
        return dict.fromkeys(backend.clients, shared)
    by_client: dict[int, NodeMux] = {}
    routes: dict[str, NodeMux | ClusterMux] = {}
    for name, client in backend.clients.items():
        assert isinstance(client, Redis)
        mux = by_client.get(id(client))
        if mux is None:
            pool = client.connection_pool
            mux = by_client[id(client)] = NodeMux(
                f"{settings.server_label} db {backend.dbs[name]}",
                pool.make_connection,
                client.response_callbacks,
                sentinel=backend.topology == "sentinel",
                **options,
            )
        routes[name] = mux
    return routes


def _build_sentinel(
    settings: Settings, dbs: dict[str, int], driver: DriverInfo, tls: ssl.SSLContext | None
) -> Backend:
    master_name = settings.redis_master_name
    assert master_name is not None  # Settings guarantees it with REDIS_USE_SENTINEL
    sentinel = AuthAwareSentinel(
        list(settings.sentinel_nodes),
        sentinel_user=settings.redis_sentinel_user,
        tls=tls,
        sentinel_kwargs=_sentinel_kwargs(settings, driver),
        **_connection_kwargs(settings, driver, tls),
    )

    def pool(db: int) -> BlockingConnectionPool:
        return BlockingSentinelConnectionPool(  # type: ignore[no-untyped-call]
            master_name,
            sentinel,
            db=db,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_pool_timeout,
            **_connection_kwargs(settings, driver, tls),
            **({"connection_class": _SentinelTLSConnection} if tls is not None else {}),
        )

    clients = _client_per_db(dbs, pool)
    return Backend(
        topology="sentinel",
        layout=settings.db_layout,
        clients=clients,
        dbs=dbs,
        sentinel=sentinel,
        master_name=master_name,
        max_connections=settings.redis_max_connections,
    )


def _sentinel_kwargs(settings: Settings, driver: DriverInfo) -> dict[str, Any]:
    """How to reach the sentinels themselves: their own credentials, and TLS like the data
    nodes when REDIS_TLS is on."""
    kwargs: dict[str, Any] = {
        "driver_info": driver,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "retry": _no_retry(),
    }
    if settings.redis_sentinel_password is not None:
        kwargs["username"] = settings.redis_sentinel_user
        kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    if settings.tls:
        kwargs["ssl"] = True
        kwargs.update(_tls_kwargs(settings))
    return kwargs


class _RetiredClusterNode(ClusterNode):
    """A cluster node a topology refresh dropped: it closes every connection handed back."""

    __slots__ = ()

    def release(self, connection: Connection) -> None:
        """Return ``connection`` closed (``ClusterNode.release`` closes a marked one)."""
        connection.mark_for_reconnect()  # type: ignore[no-untyped-call]
        super().release(connection)


class _RetiringNodesManager(NodesManager):
    """redis-py's nodes manager, retiring the nodes a topology refresh drops.

    A workaround for redis-py 8.2 (``NodesManager.set_nodes`` with ``remove_old``): it marks
    a dropped node's in-use connections and closes its idle ones once, but the node still
    serves whoever holds it, and redis-py holds it itself: a cluster pipeline routes its
    commands, then starts one task per node (``PipelineStrategy._execute``), and a refresh
    that ends before such a task starts (8.2 no longer makes commands wait for a refresh)
    leaves the task on the dropped node. A connection it opens there (to a killed master
    that was restarted) goes back to the node's idle list, open, where nothing closes it:
    the socket leaks until the node is collected, with a ResourceWarning "Unclosed
    ClusterNode". A retired node closes each connection as it is released.
    """

    __slots__ = ()

    def set_nodes(
        self,
        old: dict[str, ClusterNode],
        new: dict[str, ClusterNode],
        remove_old: bool = False,
    ) -> None:
        dropped = [node for name, node in old.items() if name not in new] if remove_old else []
        super().set_nodes(old, new, remove_old)
        held = {
            id(node) for nodes in (self.nodes_cache, self.startup_nodes) for node in nodes.values()
        }
        for node in dropped:
            if id(node) not in held and type(node) is ClusterNode:
                node.__class__ = _RetiredClusterNode


def _build_cluster(
    settings: Settings, dbs: dict[str, int], driver: DriverInfo, tls: ssl.SSLContext | None
) -> Backend:
    kwargs = _connection_kwargs(settings, driver, tls)
    kwargs.pop("socket_keepalive", None)
    kwargs.pop("zen_tls", None)  # RedisCluster takes no connection class: set below
    startup: list[Address] = list(settings.cluster_nodes)
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in startup],
        max_connections=settings.redis_max_connections,
        require_full_coverage=True,
        ssl=tls is not None,
        **kwargs,
    )
    if tls is not None:
        # Nodes found later are built from the shared kwargs; the startup nodes already were.
        cluster.nodes_manager.connection_kwargs.update(connection_class=_TLSConnection, zen_tls=tls)
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = _TLSConnection
            node.connection_kwargs["zen_tls"] = tls
    # Same object, one method overridden: redis-py builds its nodes manager itself.
    cluster.nodes_manager.__class__ = _RetiringNodesManager
    clients: dict[str, Redis | RedisCluster] = dict.fromkeys(dbs, cluster)
    return Backend(
        topology="cluster",
        layout=settings.db_layout,
        clients=clients,
        dbs=dbs,
        cluster=cluster,
        bound=asyncio.Semaphore(settings.redis_max_connections),
        max_connections=settings.redis_max_connections,
    )
