"""Security on real servers: passwords and ACL users on standalone, Sentinel (with sentinels
that require their own password and ACL user) and Cluster; the documented least-privilege
ACL (deploy/redis/zen.acl) running the whole service; per-tenant ACL users that cannot
touch each other's keys; TLS-only servers with certificates generated here; and secrets
kept out of errors, reprs, logs and health output."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from structlog.testing import capture_logs

from zen_async import (
    AuthError,
    ConfigError,
    Event,
    NewEvent,
    Settings,
    Zen,
    open_zen,
)
from zen_async.testing.deployments import (
    TOPOLOGIES,
    Group,
    Kind,
    Target,
    masters,
    settings_for,
    start_group,
)
from zen_async.testing.servers import Flavor, SentinelGroup, ServerProcess, Standalone, TlsFiles

ROOT = Path(__file__).resolve().parents[1]
ACL_FILE = ROOT / "deploy" / "redis" / "zen.acl"
SECURITY_DOC = ROOT / "docs" / "security.md"

# Distinct, greppable secrets: a test fails if any of them shows up where it must not.
ADMIN_PASSWORD = "admin-Pw-3e9a41"
ZEN_PASSWORD = "zen-Pw-7c1f0b"
WRONG_PASSWORD = "wrong-Pw-55d2e8"
SENTINEL_ADMIN_PASSWORD = "sentinel-admin-Pw-90ab77"
SENTINEL_ZEN_PASSWORD = "sentinel-zen-Pw-1d4c2e"
SECRETS = (ADMIN_PASSWORD, ZEN_PASSWORD, WRONG_PASSWORD, SENTINEL_ADMIN_PASSWORD)


# --- the documented ACL ----------------------------------------------------------------------
def acl_line(user: str) -> str:
    """The ``user <name> ...`` line of deploy/redis/zen.acl."""
    for line in ACL_FILE.read_text().splitlines():
        if line.startswith(f"user {user} "):
            return line
    raise AssertionError(f"{ACL_FILE} has no line for user {user!r}")


def acl_rules(user: str, password: str, *, tenant: str | None = None) -> list[str]:
    """The documented rules of ``user`` for ACL SETUSER, with ``password`` in place of
    CHANGE_ME and, for ``tenant``, keys and channels narrowed to that tenant."""
    rules = acl_line(user).split()[2:]
    assert ">CHANGE_ME" in rules
    rules = [f">{password}" if r == ">CHANGE_ME" else r for r in rules]
    if tenant is not None:
        narrowed = {"~zen:t:*": f"~zen:t:{tenant}:*", "&zen:t:*": f"&zen:t:{tenant}:*"}
        assert set(narrowed) <= set(rules)
        rules = [narrowed.get(r, r) for r in rules]
    return rules


def test_security_doc_shows_the_tested_acl() -> None:
    doc = SECURITY_DOC.read_text()
    for user in ("zen", "zen-sentinel"):
        assert acl_line(user) in doc, f"docs/security.md must show {ACL_FILE.name}'s {user}"


# --- deployments with passwords ----------------------------------------------------------------
class Secured:
    """Password-protected deployments for this module, started on first use. The default
    user has ADMIN_PASSWORD (the harness uses it); sentinels require their own password."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._groups: dict[tuple[Flavor, Kind], Group] = {}

    def get(self, flavor: Flavor, kind: Kind) -> Target:
        key = (flavor, kind)
        if key not in self._groups:
            options: dict[str, Any] = {"password": ADMIN_PASSWORD}
            if kind == "sentinel":
                options["sentinel_password"] = SENTINEL_ADMIN_PASSWORD
            self._groups[key] = start_group(
                flavor, kind, self._root / f"{flavor}-{kind}", **options
            )
        target = Target(flavor, kind, self._groups[key])
        target.flush()
        return target

    def stop_all(self) -> None:
        for group in self._groups.values():
            group.stop()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    groups = Secured(tmp_path_factory.mktemp("secured"))
    yield groups
    groups.stop_all()


def as_user(target: Target, user: str, password: str, **overrides: Any) -> Settings:
    """Settings for ``target`` as ACL user ``user`` (sentinels asked as zen-sentinel)."""
    if target.kind == "sentinel":
        overrides.setdefault("redis_sentinel_user", "zen-sentinel")
        overrides.setdefault("redis_sentinel_password", SENTINEL_ZEN_PASSWORD)
    return settings_for(
        target.group,
        redis_user=user,
        redis_password=password,
        redis_acl_enabled=True,
        **overrides,
    )


def add_zen_users(target: Target) -> None:
    """The documented zen user on every data node and zen-sentinel on every sentinel."""
    target.group.acl_setuser("zen", ["reset", *acl_rules("zen", ZEN_PASSWORD)])
    if isinstance(target.group, SentinelGroup):
        rules = ["reset", *acl_rules("zen-sentinel", SENTINEL_ZEN_PASSWORD)]
        for sentinel in target.group.sentinels:
            sentinel.cli("ACL", "SETUSER", "zen-sentinel", *rules)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a password leaked into: {text[:300]!r}"


def assert_empty(target: Target) -> None:
    """No key in any database of any master: a refused call wrote nothing."""
    for server in masters(target.group):
        keyspace = server.cli("INFO", "keyspace")
        assert not [line for line in keyspace.splitlines() if line.startswith("db")], keyspace


def error_texts(exc: BaseException) -> list[str]:
    """Everything a caller or a log could show of ``exc``: message, repr, traceback."""
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


# --- the whole service, as one user ------------------------------------------------------------
async def exercise_service(zen: Zen) -> None:
    """Every domain of the service once: agents and their lifecycle, ports, tasks, memory,
    events with a consumer group, conversations, cache, metrics and health."""
    agents = zen.agents
    agent = await agents.create_agent("coder", agent_id="acl-agent-1", metadata={"team": "x"})
    await agents.transition(agent.agent_id, "ready")
    await agents.heartbeat(agent.agent_id, memory_mb=10.0)
    assert await agents.get_agent(agent.agent_id) is not None
    assert [a.agent_id for a in await agents.get_available_agents("coder")] == [agent.agent_id]
    waiter = asyncio.create_task(agents.wait_for_state(agent.agent_id, ["running"], timeout=10))
    await asyncio.sleep(0.1)
    await agents.transition(agent.agent_id, "running")
    await waiter
    lease = await zen.ports.allocate(agent.agent_id)
    assert await zen.ports.release(lease)
    await zen.redis.allocate_port(agent.agent_id)

    await zen.tasks.create_task("coder", {"do": "it"}, task_id="acl-task-1")
    claimed = await zen.tasks.claim_next("coder", agent.agent_id)
    assert claimed is not None
    await zen.tasks.update_status(claimed.task_id, "running")
    done = await zen.tasks.complete(claimed.task_id, {"ok": True})
    assert done.result == {"ok": True}

    entry = await zen.memory.store_memory(agent.agent_id, "the build failed on the linker")
    assert await zen.memory.get_memory(entry.memory_id) is not None
    hits = await zen.memory.search_memories(agent.agent_id, "build failed", limit=3)
    assert [h.memory_entry.memory_id for h in hits] == [entry.memory_id]
    await zen.memory.get_memory_analytics(agent.agent_id)

    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(event.id)

    ids = await zen.events.publish_many("jobs", [NewEvent("job", {"i": i}) for i in range(5)])
    async with zen.events.consumer("workers", ["jobs"], handler, start_id="0") as consumer:
        await consumer.wait_handled(5, timeout=30)
    assert sorted(handled) == sorted(ids)
    assert await zen.events.audit_trail(agent.agent_id)
    await zen.redis.publish_agent_event(agent.agent_id, "note", {"x": 1})

    thread = await zen.conversations.create_thread("chat", {"prompt": "hi"})
    await zen.conversations.add_turn(thread, "user", "hello")
    assert await zen.conversations.get_thread(thread) is not None

    await zen.cache.set("k", {"v": 1}, ttl=60)
    assert await zen.cache.get("k") == {"v": 1}

    async def fill() -> dict[str, int]:
        return {"n": 2}

    assert await zen.cache.get_or_set("k2", fill, ttl=60) == {"n": 2}
    await zen.redis.set_nats_connection_state("c1", {"s": 1})
    assert await zen.redis.get_nats_connection_state("c1") == {"s": 1}

    zen.metrics.record_metric("zen_acl_probe_seconds", 1.0, {"t": "x"})
    report = await zen.metrics.flush()
    assert report.ok, report.error
    assert await zen.metrics.query("zen_acl_probe_seconds", since=0)

    status = await zen.redis.check_health()
    assert status["redis_available"], status["errors"]
    assert status["errors"] == []
    await agents.transition(agent.agent_id, "terminating")
    await agents.transition(agent.agent_id, "terminated")


@pytest.mark.parametrize(("flavor", "kind"), TOPOLOGIES, ids=[f"{f}-{k}" for f, k in TOPOLOGIES])
async def test_the_documented_acl_runs_the_whole_service(
    flavor: Flavor, kind: Kind, secured: Secured
) -> None:
    target = secured.get(flavor, kind)
    add_zen_users(target)
    # Where there are replicas, WAIT (durability=replicated) must be allowed as well.
    durability = "async" if kind == "standalone" else "replicated"
    with capture_logs() as logs:
        async with open_zen(
            as_user(target, "zen", ZEN_PASSWORD, redis_durability=durability)
        ) as zen:
            await exercise_service(zen)
            status = await zen.redis.get_health_status()
    assert_no_secret(orjson.dumps(status, default=str).decode(), repr(logs))


async def test_the_acl_refuses_what_the_service_does_not_need(secured: Secured) -> None:
    target = secured.get("redis", "standalone")
    add_zen_users(target)
    async with open_zen(as_user(target, "zen", ZEN_PASSWORD)) as zen:
        ks = zen.redis.keyspace("cache")
        for command in (("FLUSHALL",), ("CONFIG", "GET", "requirepass"), ("KEYS", "*")):
            with pytest.raises(
                AuthError, match=r"user 'zen' is not permitted to do this: .*no permissions"
            ) as info:
                await ks.execute(*command)
            assert_no_secret(*error_texts(info.value))
        with pytest.raises(AuthError, match="user 'zen' is not permitted"):
            await ks.execute("SET", "outside:the:namespace", "x")  # not under zen:t:*
    assert_empty(target)


# --- wrong credentials -------------------------------------------------------------------------
@pytest.mark.parametrize("flavor", ["redis", "valkey"])
async def test_requirepass_accepts_the_password_and_refuses_a_wrong_one(
    flavor: Flavor, secured: Secured
) -> None:
    target = secured.get(flavor, "standalone")
    async with open_zen(target.settings()) as zen:  # the default user with ADMIN_PASSWORD
        ks = zen.redis.keyspace("cache")
        await ks.set(ks.key("probe"), b"1")
        assert await ks.get(ks.key("probe")) == b"1"
    with capture_logs() as logs:
        async with open_zen(target.settings(redis_password=WRONG_PASSWORD)) as zen:
            ks = zen.redis.keyspace("cache")
            with pytest.raises(AuthError, match="authentication failed for the default user"):
                await ks.set(ks.key("probe"), b"2")
            status = await zen.redis.check_health()
            assert not status["redis_available"]
            assert zen.redis.breaker.statistics().times_opened == 0, "refused is not down"
        async with open_zen(target.settings(redis_password=None)) as zen:
            ks = zen.redis.keyspace("cache")
            with pytest.raises(AuthError, match="authentication failed for the default user"):
                await ks.get(ks.key("probe"))
    assert_no_secret(repr(logs), orjson.dumps(status, default=str).decode())
    async with open_zen(target.settings()) as zen:
        ks = zen.redis.keyspace("cache")
        assert await ks.get(ks.key("probe")) == b"1", "the refused write wrote nothing"


@pytest.mark.parametrize(("flavor", "kind"), TOPOLOGIES, ids=[f"{f}-{k}" for f, k in TOPOLOGIES])
async def test_a_wrong_acl_password_names_the_user_never_the_password(
    flavor: Flavor, kind: Kind, secured: Secured
) -> None:
    target = secured.get(flavor, kind)
    add_zen_users(target)
    settings = as_user(target, "zen", WRONG_PASSWORD)
    assert_no_secret(repr(settings), str(settings))
    with capture_logs() as logs:
        async with open_zen(settings) as zen:
            ks = zen.redis.keyspace("state")
            with pytest.raises(AuthError, match="authentication failed for user 'zen'") as info:
                await ks.set(ks.key("probe"), b"1")
            with pytest.raises(AuthError, match="user 'zen'"):
                await zen.agents.create_agent("coder", agent_id="never")
            status = await zen.redis.check_health()
    assert any("user 'zen'" in e for e in status["errors"]), status["errors"]
    assert_no_secret(
        *error_texts(info.value), repr(logs), orjson.dumps(status, default=str).decode()
    )
    assert_empty(target)


async def test_sentinels_refuse_wrong_sentinel_credentials_by_name(secured: Secured) -> None:
    target = secured.get("redis", "sentinel")
    add_zen_users(target)
    async with open_zen(as_user(target, "zen", ZEN_PASSWORD)) as zen:  # right credentials
        ks = zen.redis.keyspace("state")
        await ks.set(ks.key("probe"), b"1")
        assert (await zen.redis.check_health())["sentinel"]["sentinels"] == 3
    cases: dict[str, dict[str, Any]] = {
        "sentinel user 'zen-sentinel'": {"redis_sentinel_password": WRONG_PASSWORD},
        "the sentinels' default user": {
            "redis_sentinel_user": None,
            "redis_sentinel_password": None,
        },
    }
    with capture_logs() as logs:
        for who, overrides in cases.items():
            async with open_zen(as_user(target, "zen", ZEN_PASSWORD, **overrides)) as zen:
                ks = zen.redis.keyspace("state")
                with pytest.raises(
                    AuthError, match=f"sentinel authentication failed for {who}"
                ) as info:
                    await ks.set(ks.key("probe"), b"2")
                assert zen.redis.breaker.statistics().times_opened == 0
                status = await zen.redis.check_health()
            assert_no_secret(*error_texts(info.value), orjson.dumps(status, default=str).decode())
            assert SENTINEL_ZEN_PASSWORD not in str(info.value)
    assert_no_secret(repr(logs))
    async with open_zen(as_user(target, "zen", ZEN_PASSWORD)) as zen:
        ks = zen.redis.keyspace("state")
        assert await ks.get(ks.key("probe")) == b"1", "the refused writes wrote nothing"


async def test_a_sentinel_user_without_permission_is_named(secured: Secured) -> None:
    target = secured.get("redis", "sentinel")
    add_zen_users(target)
    assert isinstance(target.group, SentinelGroup)
    for sentinel in target.group.sentinels:
        sentinel.cli("ACL", "SETUSER", "zen-sentinel", "-sentinel|masters")
    try:
        async with open_zen(as_user(target, "zen", ZEN_PASSWORD)) as zen:
            ks = zen.redis.keyspace("state")
            with pytest.raises(AuthError, match=r"sentinel user 'zen-sentinel'.*sentinel\|masters"):
                await ks.set(ks.key("probe"), b"1")
    finally:
        add_zen_users(target)


# --- tenant isolation --------------------------------------------------------------------------
@pytest.mark.parametrize(("flavor", "kind"), [("redis", "standalone"), ("valkey", "cluster")])
async def test_a_tenant_user_can_neither_read_nor_write_another_tenants_keys(
    flavor: Flavor, kind: Kind, secured: Secured
) -> None:
    target = secured.get(flavor, kind)
    for tenant in ("acme", "beta"):
        target.group.acl_setuser(
            f"zen-{tenant}", ["reset", *acl_rules("zen", ZEN_PASSWORD, tenant=tenant)]
        )

    def tenant_settings(tenant: str) -> Settings:
        return as_user(target, f"zen-{tenant}", ZEN_PASSWORD, redis_namespace=tenant)

    async with open_zen(tenant_settings("acme")) as acme:
        await exercise_service(acme)  # the narrowed ACL is enough for a whole tenant
        acme_agent = await acme.agents.create_agent("coder", agent_id="acme-1")
        acme_state = acme.redis.keyspace("state")
        agent_keys = [k for k in await _keys(target, "zen:t:acme:*") if k.endswith(":agent:acme-1")]
        assert len(agent_keys) == 1
    before = await _snapshot(target, "zen:t:acme:*")
    assert before

    async with open_zen(tenant_settings("beta")) as beta:
        await exercise_service(beta)
        # beta's facade pointed at acme: every read and write is refused by the server
        stolen = beta.for_tenant("acme")
        with pytest.raises(AuthError, match="user 'zen-beta' is not permitted"):
            await stolen.agents.get_agent(acme_agent.agent_id)
        with pytest.raises(AuthError, match="user 'zen-beta' is not permitted"):
            await stolen.agents.transition(acme_agent.agent_id, "ready")
        with pytest.raises(AuthError, match="user 'zen-beta' is not permitted"):
            await stolen.cache.set("k", {"stolen": True}, ttl=60)
        # and so are raw commands and scripts on acme's key names
        ks = beta.redis.keyspace("state", tenant="acme")
        assert ks.prefix == acme_state.prefix
        key = agent_keys[0]
        for command in (
            ("HGETALL", key),
            ("HSET", key, "state", "error"),
            ("DEL", key),
            ("EXISTS", key),
        ):
            with pytest.raises(AuthError, match="user 'zen-beta' is not permitted"):
                await ks.execute(*command)
        with pytest.raises(AuthError, match="user 'zen-beta' is not permitted"):
            await ks.run_script("versioned_hset", [key], ["", "", "state", "error"])
        with pytest.raises(AuthError, match="user 'zen-beta' is not permitted"):
            await beta.redis.publish(acme_state.key("ch", "agent-events"), b"forged")
    assert await _snapshot(target, "zen:t:acme:*") == before, "acme's keys are untouched"


async def _keys(target: Target, pattern: str) -> list[str]:
    """Every key matching ``pattern`` on the masters, read as the admin."""
    return sorted(k.split("/", 1)[1] for k in await _snapshot(target, pattern))


async def _snapshot(target: Target, pattern: str) -> dict[str, bytes]:
    """``db/key`` -> DUMP of every key matching ``pattern`` that will outlive the test (no
    TTL or more than two minutes left), read as the admin."""
    snapshot: dict[str, bytes] = {}
    for server in masters(target.group):
        snapshot |= await asyncio.to_thread(_dump_keys, server.host, server.port, pattern)
    return snapshot


def _dump_keys(host: str, port: int, pattern: str) -> dict[str, bytes]:
    import redis  # noqa: PLC0415 - the sync client, for the admin's view only

    dumped: dict[str, bytes] = {}
    for db in range(16):
        client = redis.Redis(host=host, port=port, db=db, password=ADMIN_PASSWORD)
        try:
            for key in client.scan_iter(match=pattern, count=1000):
                ttl = client.pttl(key)
                value = client.dump(key)
                if isinstance(value, bytes) and (ttl == -1 or ttl > 120_000):
                    dumped[f"{db}/{key.decode()}"] = value
        except redis.ResponseError:  # Cluster: only DB 0
            break
        finally:
            client.close()
    return dumped


# --- TLS -------------------------------------------------------------------------------------
class TlsSetup:
    """A TLS-only server requiring client certificates, and the PEM files around it."""

    def __init__(self, root: Path) -> None:
        ca, other_ca = trustme.CA(), trustme.CA()
        self.ca_file = root / "ca.pem"
        self.wrong_ca_file = root / "wrong-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        other_ca.cert_pem.write_to_path(str(self.wrong_ca_file))
        paths: dict[str, Path] = {}
        for name, identity in (("server", "127.0.0.1"), ("client", "zen-client.example")):
            leaf = ca.issue_cert(identity, "localhost")
            paths[f"{name}.pem"] = root / f"{name}.pem"
            paths[f"{name}.key"] = root / f"{name}.key"
            leaf.cert_chain_pems[0].write_to_path(str(paths[f"{name}.pem"]))
            leaf.private_key_pem.write_to_path(str(paths[f"{name}.key"]))
        self.client_cert, self.client_key = paths["client.pem"], paths["client.key"]
        files = TlsFiles(
            cert_file=paths["server.pem"], key_file=paths["server.key"], ca_file=self.ca_file
        )
        self.group = Standalone(
            "redis", base_dir=root / "server", tls=files, password=ADMIN_PASSWORD
        )

    async def settings(self, **overrides: Any) -> Settings:
        """Settings for the TLS server; built off the loop (they check the PEM files)."""
        values: dict[str, Any] = {
            "redis_embedded": "false",
            "redis_url": self.group.url,
            "redis_password": ADMIN_PASSWORD,
            "redis_tls_ca_file": self.ca_file,
            "redis_tls_cert_file": self.client_cert,
            "redis_tls_key_file": self.client_key,
            "redis_socket_timeout": 2.0,
            "redis_connect_timeout": 1.0,
        }
        values.update(overrides)
        return await asyncio.to_thread(lambda: Settings(_env_file=None, **values))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSetup]:
    setup = TlsSetup(tmp_path_factory.mktemp("tls"))
    setup.group.start()  # Debian's redis-server 7.0 is built with TLS
    yield setup
    setup.group.stop()


async def test_tls_only_server_serves_the_whole_service(tls: TlsSetup) -> None:
    tls.group.server.cli("FLUSHALL")
    assert tls.group.url.startswith("rediss://")
    settings = await tls.settings()
    assert settings.tls
    async with open_zen(settings) as zen:
        await exercise_service(zen)
    assert tls.group.server.cli("EXISTS", "zen:t:default:{z0}:agent:acl-agent-1") in ("0", "1")


async def test_tls_with_a_wrong_ca_fails_clearly(tls: TlsSetup) -> None:
    with capture_logs() as logs:
        settings = await tls.settings(redis_tls_ca_file=tls.wrong_ca_file)
        async with open_zen(settings) as zen:
            ks = zen.redis.keyspace("cache")
            with pytest.raises(AuthError, match="REDIS_TLS_CA_FILE") as info:
                await ks.set(ks.key("probe"), b"1")
            assert "certificate verify failed" in str(info.value)
            assert zen.redis.breaker.statistics().times_opened == 0, "untrusted is not down"
            status = await zen.redis.check_health()
    assert not status["redis_available"]
    assert_no_secret(*error_texts(info.value), repr(logs))


async def test_tls_without_a_client_certificate_is_refused(tmp_path: Path) -> None:
    """A server that requires client certificates, speaking TLS 1.2: it refuses a client
    without one during the handshake. (Under TLS 1.3 the refusal comes after the handshake
    and may arrive as a bare connection reset; see docs/security.md.)"""
    setup = await asyncio.to_thread(TlsSetup, tmp_path)
    setup.group.server.extra_args = ["--tls-protocols", "TLSv1.2"]
    setup.group.start()
    try:
        settings = await setup.settings(redis_tls_cert_file=None, redis_tls_key_file=None)
        async with open_zen(settings) as zen:
            ks = zen.redis.keyspace("cache")
            with pytest.raises(AuthError, match="REDIS_TLS_CERT_FILE") as info:
                await ks.set(ks.key("probe"), b"1")
            assert zen.redis.breaker.statistics().times_opened == 0
        assert "handshake failure" in str(info.value)
        async with open_zen(await setup.settings()) as zen:  # with the certificate: fine
            ks = zen.redis.keyspace("cache")
            await ks.set(ks.key("probe"), b"1")
    finally:
        setup.group.stop()


async def test_tls_reaches_the_sentinels_too(tmp_path: Path) -> None:
    """A TLS-only master and a TLS-only sentinel: with REDIS_TLS zen asks the sentinel over
    TLS, then talks to the master it names over TLS."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "leaf.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "leaf.key"))
    files = TlsFiles(
        cert_file=tmp_path / "leaf.pem", key_file=tmp_path / "leaf.key", ca_file=tmp_path / "ca.pem"
    )
    tls_links = ["--tls-replication", "yes"]  # the sentinel reaches the master over TLS too
    master = ServerProcess("redis", dir=tmp_path / "master", tls=files, extra_args=tls_links)
    sentinel = ServerProcess(
        "redis", dir=tmp_path / "sentinel", tls=files, sentinel=True, extra_args=tls_links
    )
    sentinel.dir.mkdir(parents=True)
    (sentinel.dir / "sentinel.conf").write_text(
        f"sentinel monitor tlsmaster 127.0.0.1 {master.port} 1\n"
    )
    try:
        master.start()
        sentinel.start()
        settings = await asyncio.to_thread(
            lambda: Settings(
                _env_file=None,
                redis_embedded="false",
                redis_use_sentinel=True,
                redis_sentinel_nodes=f"127.0.0.1:{sentinel.port}",
                redis_master_name="tlsmaster",
                redis_tls=True,
                redis_tls_ca_file=files.ca_file,
                redis_tls_cert_file=files.cert_file,
                redis_tls_key_file=files.key_file,
                redis_socket_timeout=2.0,
            )
        )
        async with open_zen(settings) as zen:
            ks = zen.redis.keyspace("cache")
            await ks.set(ks.key("probe"), b"over tls")
            assert await ks.get(ks.key("probe")) == b"over tls"
            status = await zen.redis.check_health()
        assert status["sentinel"]["master"] == f"127.0.0.1:{master.port}"
    finally:
        sentinel.stop()
        master.stop()


# --- secrets ---------------------------------------------------------------------------------
def test_settings_never_show_a_password() -> None:
    settings = Settings(
        _env_file=None,
        redis_url=f"redis://zen:{ZEN_PASSWORD}@127.0.0.1:6390/0",
        redis_sentinel_password=SENTINEL_ADMIN_PASSWORD,
        redis_password=ADMIN_PASSWORD,
    )
    assert settings.password == ADMIN_PASSWORD  # REDIS_PASSWORD wins over the URL's
    assert_no_secret(repr(settings), str(settings))
    assert ZEN_PASSWORD not in repr(settings)
    assert "redis://zen:***@127.0.0.1:6390/0" in repr(settings)


def test_acl_enabled_requires_a_named_user() -> None:
    with pytest.raises(ConfigError, match="REDIS_ACL_ENABLED=True: false, or a named user"):
        Settings(_env_file=None, redis_acl_enabled=True, redis_password=ADMIN_PASSWORD)
    named = Settings(
        _env_file=None, redis_acl_enabled=True, redis_url=f"redis://zen:{ZEN_PASSWORD}@h:1"
    )
    assert (named.username, named.password) == ("zen", ZEN_PASSWORD)


def test_a_sentinel_user_needs_a_sentinel_password() -> None:
    with pytest.raises(ConfigError, match="REDIS_SENTINEL_USER='zen-sentinel': set together"):
        Settings(_env_file=None, redis_sentinel_user="zen-sentinel")
