"""Port leases when their owner process fails: a SIGKILLed owner's ports come back after the
lease TTL, and a SIGSTOPped owner that resumes after its ports were reissued can neither renew
nor release them. The owners are real child processes; the server is the shared standalone."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from zen_async import CapacityError, Zen, open_zen
from zen_async.agents.ports import PortAllocator, PortLease
from zen_async.testing.deployments import Target

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]

OWNER = """
import asyncio, sys
import orjson
from zen_async import ConflictError, Settings, open_zen
from zen_async.agents.ports import PortAllocator
from zen_async.logs import configure_logging

def say(obj):
    print(orjson.dumps(obj).decode(), flush=True)

async def main(url, mode, count, first, last, ttl):
    configure_logging("warning")  # stderr: stdout carries the replies
    settings = Settings(_env_file=None, redis_url=url, redis_embedded="false")
    async with open_zen(settings) as zen:
        alloc = PortAllocator(zen.redis, host="faulty", lease_ttl=ttl)
        leases = [await alloc.allocate("owner", port_range=(first, last)) for _ in range(count)]
        say([[lease.port, lease.token] for lease in leases])
        if mode == "hold":
            await asyncio.Event().wait()
        while True:  # the agent's heartbeat
            try:
                for lease in leases:
                    await alloc.renew(lease)
            except ConflictError as exc:
                result = {"renew": str(exc)}
                try:
                    await alloc.release(leases[0])
                    result["release"] = "released"
                except ConflictError as exc:
                    result["release"] = str(exc)
                result["renew_agent"] = await alloc.renew_agent("owner")
                say(result)
                return
            await asyncio.sleep(ttl / 5)

url, mode, count, first, last, ttl = sys.argv[1:]
asyncio.run(main(url, mode, int(count), int(first), int(last), float(ttl)))
"""


async def start_owner(
    url: str, mode: str, count: int, port_range: tuple[int, int], ttl: float
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OWNER,
        url,
        mode,
        str(count),
        str(port_range[0]),
        str(port_range[1]),
        str(ttl),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


async def read_reply(owner: asyncio.subprocess.Process, *, deadline: float = 20.0) -> Any:
    assert owner.stdout is not None
    async with asyncio.timeout(deadline):
        line = await owner.stdout.readline()
    assert line, f"the owner process exited (code {await owner.wait()}) without replying"
    return orjson.loads(line)


async def stop_owner(owner: asyncio.subprocess.Process) -> None:
    if owner.returncode is None:
        owner.kill()
        await owner.communicate()  # reads stdout to its end, or wait() never returns


async def take_all(
    alloc: PortAllocator, port_range: tuple[int, int], *, deadline: float = 10.0
) -> list[PortLease]:
    """Allocate every port of ``port_range`` to "newcomer", waiting while leases are live."""
    taken: list[PortLease] = []
    until = time.monotonic() + deadline
    while len(taken) < port_range[1] - port_range[0]:
        try:
            taken.append(await alloc.allocate("newcomer", port_range=port_range))
        except CapacityError:
            if time.monotonic() > until:
                pytest.fail(f"only {len(taken)} ports of {port_range} came back in {deadline}s")
            await asyncio.sleep(0.05)
    return taken


@pytest.fixture
async def szen(standalone: Target) -> AsyncIterator[Zen]:
    async with open_zen(standalone.settings()) as opened:
        yield opened


async def test_a_killed_owners_ports_come_back_after_the_lease_ttl(szen: Zen) -> None:
    url = szen.settings.redis_url
    assert url is not None
    port_range, count = (4000, 4020), 20  # within REDIS_PORT_RANGE
    owner = await start_owner(url, "hold", count, port_range, ttl=1.0)
    try:
        held = await read_reply(owner)
        alloc = PortAllocator(szen.redis, host="faulty")
        with pytest.raises(CapacityError, match=r"20 of 20 ports in use"):
            await alloc.allocate("newcomer", port_range=port_range)
        owner.send_signal(signal.SIGKILL)
        assert await owner.wait() == -signal.SIGKILL
    finally:
        await stop_owner(owner)

    taken = await take_all(alloc, port_range)
    assert {lease.port for lease in taken} == {port for port, _ in held}
    assert min(lease.token for lease in taken) > max(token for _, token in held)
    assert await alloc.leases("owner") == []


async def test_a_stopped_owner_can_neither_renew_nor_release_after_it_resumes(
    szen: Zen,
) -> None:
    url = szen.settings.redis_url
    assert url is not None
    port_range, count = (4100, 4105), 5
    owner = await start_owner(url, "heartbeat", count, port_range, ttl=0.5)
    try:
        held = await read_reply(owner)
        alloc = PortAllocator(szen.redis, host="faulty")
        with pytest.raises(CapacityError):  # the heartbeat keeps the leases alive
            await alloc.allocate("newcomer", port_range=port_range)
        os.kill(owner.pid, signal.SIGSTOP)
        try:
            taken = await take_all(alloc, port_range)
        finally:
            os.kill(owner.pid, signal.SIGCONT)
        result = await read_reply(owner)
        assert await owner.wait() == 0
    finally:
        await stop_owner(owner)

    # renew refused for whichever lease the resumed heartbeat tried first; release of the first
    renewed = re.match(
        r"port (\d+) on host faulty was reissued: .* held by agent newcomer", result["renew"]
    )
    assert renewed is not None, result
    assert int(renewed[1]) in {port for port, _ in held}
    assert f"port {held[0][0]} on host faulty was reissued" in result["release"], result
    assert result["renew_agent"] == 0, "a fenced owner renews nothing"
    assert {lease.port for lease in taken} == {port for port, _ in held}
    assert min(lease.token for lease in taken) > max(token for _, token in held)
    assert await alloc.leases("newcomer") == sorted(taken, key=lambda lease: lease.port)
    for lease in taken:
        assert (await alloc.renew(lease)).token == lease.token, "the new owner's lease is intact"
