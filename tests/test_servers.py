"""The test-server harness really starts, stops, pauses and fails over Redis and Valkey."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from zen_async import testing
from zen_async.testing import (
    ClusterGroup,
    Flavor,
    SentinelGroup,
    ServerProcess,
    Standalone,
    free_port,
    server_binary,
)

FLAVORS: list[Flavor] = ["redis", "valkey"]

# redis-py 8 retries connection and auth errors 10 times with backoff by default.
NO_RETRY = Retry(NoBackoff(), 0)

# The failover tests run each flavor once, one of them with a password, to keep the file fast.
FAILOVER_CASES = [
    pytest.param("redis", None, id="redis"),
    pytest.param("valkey", "s3cret", id="valkey-password"),
]


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _port_bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _write_and_wait(server: ServerProcess, key: str, value: str, *, replicas: int) -> None:
    """SET then WAIT on one connection (cli() opens one per call, and WAIT is per client)."""
    with redis.Redis(port=server.port, password=server.password, retry=NO_RETRY) as client:
        client.set(key, value)
        assert client.wait(replicas, 5000) == replicas


def test_public_names_are_exported_sorted() -> None:
    """`zen_async.testing.__all__` is sorted and every name in it exists."""
    assert testing.__all__ == sorted(testing.__all__)
    assert all(hasattr(testing, name) for name in testing.__all__)


def test_free_port_hands_out_distinct_bindable_ports() -> None:
    """Two servers started back to back never get the same port."""
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert all(_port_bindable(port) for port in ports)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_server_binary_is_executable(flavor: Flavor) -> None:
    """Both flavors resolve to an executable binary."""
    assert os.access(server_binary(flavor), os.X_OK)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_standalone_stop_leaves_no_process(flavor: Flavor, tmp_path: Path) -> None:
    """After stop() the process is reaped and its port is free again."""
    with Standalone(flavor, base_dir=tmp_path) as standalone:
        server = standalone.server
        assert standalone.url == f"redis://127.0.0.1:{server.port}"
        assert server.cli("PING") == "PONG"
        assert server.cli("CONFIG", "GET", "bind") == "bind\n127.0.0.1"
        assert server.cli("CONFIG", "GET", "appendonly") == "appendonly\nno"
        pid = server.pid
        assert pid is not None
    assert not server.is_running
    assert server.pid is None
    assert _process_gone(pid)
    assert _port_bindable(server.port)
    standalone.stop()  # idempotent


@pytest.mark.parametrize("flavor", FLAVORS)
def test_password_is_required(flavor: Flavor, tmp_path: Path) -> None:
    """With a password the server refuses unauthenticated clients."""
    with Standalone(flavor, base_dir=tmp_path, password="s3cret") as standalone:
        assert standalone.server.cli("PING") == "PONG"
        with (
            redis.Redis(port=standalone.server.port, retry=NO_RETRY) as client,
            pytest.raises(redis.AuthenticationError),
        ):
            client.ping()


@pytest.mark.parametrize("flavor", FLAVORS)
def test_restart_keeps_appendonly_data(flavor: Flavor, tmp_path: Path) -> None:
    """With --appendonly yes, data survives a graceful restart and a kill -9 + restart."""
    with Standalone(flavor, base_dir=tmp_path, extra_args=["--appendonly", "yes"]) as standalone:
        server = standalone.server
        port = server.port
        server.cli("SET", "graceful", "1")
        server.restart()
        assert server.port == port
        assert server.cli("GET", "graceful") == "1"

        server.cli("SET", "killed", "2")
        server.kill()
        assert not server.is_running
        server.restart()
        assert server.cli("MGET", "graceful", "killed") == "1\n2"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_pause_blocks_replies_until_resume(flavor: Flavor, tmp_path: Path) -> None:
    """A paused (SIGSTOPped) server times out; after resume it answers again."""
    with Standalone(flavor, base_dir=tmp_path) as standalone:
        server = standalone.server
        server.pause()
        assert server.is_running
        with pytest.raises(redis.TimeoutError):
            server.cli("PING", timeout=0.3)
        server.resume()
        assert server.cli("PING") == "PONG"


def test_stop_works_on_a_paused_server(tmp_path: Path) -> None:
    """stop() of a paused server still ends it promptly (SIGTERM, then SIGCONT)."""
    server = ServerProcess("redis", dir=tmp_path)
    server.start()
    pid = server.pid
    assert pid is not None
    server.pause()
    server.stop()
    assert _process_gone(pid)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_startup_failure_raises_with_log_tail(flavor: Flavor, tmp_path: Path) -> None:
    """A server that cannot start raises RuntimeError quoting its log, leaving no process."""
    server = ServerProcess(flavor, dir=tmp_path, extra_args=["--no-such-directive", "1"])
    with pytest.raises(RuntimeError, match="no-such-directive"):
        server.start()
    assert not server.is_running


def test_taken_port_is_not_retried_when_given(tmp_path: Path) -> None:
    """An explicit port that is busy is an error, not silently replaced."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = ServerProcess("redis", dir=tmp_path, port=port)
        with pytest.raises(RuntimeError, match="in use"):
            server.start()
    assert server.port == port


@pytest.mark.slow
@pytest.mark.parametrize(("flavor", "password"), FAILOVER_CASES)
def test_sentinel_failover_after_kill(flavor: Flavor, password: str | None, tmp_path: Path) -> None:
    """Killing the master makes the sentinels promote a replica that accepts writes."""
    with SentinelGroup(flavor, base_dir=tmp_path, password=password) as group:
        ports = [s.port for s in group.sentinels]
        assert group.sentinel_nodes == ",".join(f"127.0.0.1:{p}" for p in ports)
        old = group.current_master()
        assert old is group.servers[0]
        _write_and_wait(old, "before", "1", replicas=2)

        old.kill()
        new = group.wait_for_new_master(old, timeout=30)

        assert new is not old
        assert new in group.servers[1:]
        assert group.current_master() is new
        assert new.cli("ROLE").splitlines()[0] == "master"
        assert new.cli("SET", "after", "2") == "OK"
        assert new.cli("MGET", "before", "after") == "1\n2"
    assert not any(p.is_running for p in [*group.servers, *group.sentinels])


@pytest.mark.slow
@pytest.mark.parametrize(("flavor", "password"), FAILOVER_CASES)
def test_cluster_promotes_replica_of_killed_master(
    flavor: Flavor, password: str | None, tmp_path: Path
) -> None:
    """Killing a master makes its replica take its slots; the key is writable again."""
    with ClusterGroup(flavor, base_dir=tmp_path, password=password) as cluster:
        assert cluster.cluster_nodes.count("127.0.0.1:") == 6
        masters = cluster.masters()
        assert len(masters) == 3
        for node in cluster.nodes:
            assert "cluster_state:ok" in node.cli("CLUSTER", "INFO")

        key = "agent:42"
        dead = cluster.master_for_key(key)
        assert dead in masters
        _write_and_wait(dead, key, "before", replicas=1)

        dead.kill()
        promoted = cluster.wait_for_promotion(dead, timeout=30)

        assert promoted is not dead
        assert promoted not in masters
        assert cluster.master_for_key(key) is promoted
        assert set(cluster.masters()) == (set(masters) - {dead}) | {promoted}
        assert promoted.cli("GET", key) == "before"
        assert promoted.cli("SET", key, "after") == "OK"
        assert promoted.cli("GET", key) == "after"
        cluster.wait_ok(timeout=5)
    assert not any(node.is_running for node in cluster.nodes)
