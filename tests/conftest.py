"""Shared fixtures: real servers on free loopback ports, one zen per test, and a guard that
fails any blocking call made on the event loop.

Deployments used by ordinary tests are started once per session, on first use, and flushed
before each test; fault tests start their own (``fresh_*`` fixtures) because they kill them.
The shared server on 127.0.0.1:6379 is never touched.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from zen_async import Zen, open_zen
from zen_async.logs import configure_logging
from zen_async.testing.deployments import TOPOLOGIES, Deployments, Target

# Library logs go to stderr as JSON lines, as in production (stdout may be a protocol wire).
configure_logging("debug", cache=False)  # uncached: capture_logs() must see events

# Tests build their Settings explicitly; nothing from the developer's shell may leak in
# (except ZEN_SOAK_SEEDS and ZEN_FUZZ_EXAMPLES: how many seeds or examples the outage
# checker and the MCP fuzzer run).
for _name in list(os.environ):
    if _name.startswith(("REDIS_", "ZEN_")) and _name not in (
        "ZEN_SOAK_SEEDS",
        "ZEN_FUZZ_EXAMPLES",
    ):
        del os.environ[_name]


@pytest.fixture(scope="session")
def deployments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployments]:
    shared = Deployments(tmp_path_factory.mktemp("servers"))
    yield shared
    shared.stop_all()


@pytest.fixture(params=TOPOLOGIES, ids=[f"{f}-{k}" for f, k in TOPOLOGIES])
def target(request: pytest.FixtureRequest, deployments: Deployments) -> Target:
    """Each test using it runs once per topology and flavor, on a flushed deployment."""
    flavor, kind = request.param
    found = Target(flavor, kind, deployments.get(flavor, kind))
    found.flush()
    return found


@pytest.fixture
def standalone(deployments: Deployments) -> Target:
    """The shared Redis 7.0 standalone server, flushed."""
    found = Target("redis", "standalone", deployments.get("redis", "standalone"))
    found.flush()
    return found


@pytest.fixture
async def zen(target: Target) -> AsyncIterator[Zen]:
    async with open_zen(target.settings()) as opened:
        yield opened


@pytest.fixture(autouse=True)
def no_blocking_on_the_loop() -> Iterator[BlockBuster]:
    """Fail the test when code running on the event loop makes a blocking call."""
    # Scans the library's own frames: test code driving the server harness (sync, by design)
    # from an async test is not the library blocking the loop.
    with blockbuster_ctx("zen_async", excluded_modules=["zen_async.testing"]) as bb:
        yield bb
